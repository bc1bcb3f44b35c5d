"""Discriminator rejection sampling (Azadi et al. 2019, "Discriminator Rejection Sampling", ICLR,
arXiv:1810.06758): keep a generated sample with a probability that grows with the trained
discriminator's estimate of p_data / p_g there, which removes samples the generator puts where the
data has none (e.g. between the modes of a mixture).

With the optimal discriminator and the exact bound M = max p_data / p_g, accepting x with
probability p_data(x) / (M p_g(x)) recovers p_data exactly. The practical algorithm (their §3.2 and
Algorithm 1) estimates log M as the largest log-ratio seen (a burn-in, then a running max), works
in logits for stability,

    F(x) = r(x) - r_M - log(1 - exp(r(x) - r_M - ε)),   accept with probability sigmoid(F(x) - γ),

and shifts F by γ to trade acceptance for fidelity. Here γ is the `percentile` quantile of F over
the burn-in samples, fixed thereafter (0.5: about half the samples kept; lower keeps more and only
thins the worst, which changes mode masses least), or 0 with percentile=None: then
sigmoid(F) ≈ exp(r - r_M), plain rejection sampling, exact when the critic is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gan_runner.errors import UserError

# propose(k) -> k generated samples (CPU) and their class labels (None when unconditional)
Propose = Callable[[int], tuple[Tensor, Tensor | None]]
# log_ratio(samples, labels) -> the discriminator's estimate of log p_data / p_g, shape (k,), CPU
LogRatio = Callable[[Tensor, Tensor | None], Tensor]


class DiscriminatorRejection:
    """DRS (Azadi et al. 2019, Algorithm 1): `fit` runs the burn-in, `draw` accepts samples."""

    def __init__(
        self,
        percentile: float | None = 0.05,
        burn_in: int = 10_000,
        epsilon: float = 1e-6,
        batch_size: int = 2_500,
        max_proposals_per_sample: int = 100,
    ) -> None:
        numeric = isinstance(percentile, (int, float)) and not isinstance(percentile, bool)
        if percentile is not None and not (numeric and 0 <= percentile <= 1):
            raise UserError(
                f"rejection.percentile={percentile!r} is invalid: it must be a number in [0, 1] "
                "(or null for no shift)"
            )
        if min(burn_in, batch_size, max_proposals_per_sample) < 1:
            raise UserError(
                "rejection.burn_in, batch_size and max_proposals_per_sample must be >= 1"
            )
        self.percentile, self.burn_in, self.epsilon = percentile, burn_in, epsilon
        # Gives up (with an error) after this many proposals per requested sample: a critic that
        # rejects nearly everything must not loop for ever.
        self.batch_size, self.max_proposals_per_sample = batch_size, max_proposals_per_sample
        self.log_bound: float | None = None  # r_M: the largest log-ratio seen so far
        self.gamma: float | None = None
        self.proposed = self.accepted = 0

    @property
    def acceptance(self) -> float:
        """Accepted / proposed over every `draw` so far (the burn-in is not counted)."""
        return self.accepted / max(self.proposed, 1)

    def shifted_logit(self, log_ratio: Tensor) -> Tensor:
        """F(x) of the paper, before the γ shift, against the current bound r_M."""
        gap = log_ratio.double() - self.log_bound
        # log(1 - exp(gap - ε)) with gap <= 0: log(-expm1(·)) is exact where 1 - exp(·) cancels.
        return gap - torch.log(-torch.expm1(gap - self.epsilon))

    @torch.no_grad()
    def fit(self, propose: Propose, log_ratio: LogRatio) -> DiscriminatorRejection:
        """Burn-in: estimate r_M and fix γ from `burn_in` proposals."""
        sizes = _chunks(self.burn_in, self.batch_size)
        ratios = torch.cat([log_ratio(*propose(size)) for size in sizes])
        self.log_bound = float(ratios.max())
        shifted = self.shifted_logit(ratios)
        self.gamma = (
            0.0 if self.percentile is None else float(torch.quantile(shifted, self.percentile))
        )
        return self

    @torch.no_grad()
    def draw(
        self, n: int, propose: Propose, log_ratio: LogRatio, noise: torch.Generator
    ) -> tuple[Tensor, Tensor | None]:
        """n accepted samples (and labels), proposing in batches; the uniforms come from noise."""
        if self.log_bound is None:
            raise RuntimeError("call fit() before draw()")
        kept: list[Tensor] = []
        kept_labels: list[Tensor] = []
        have, proposed_before = 0, self.proposed
        budget = self.max_proposals_per_sample * n
        while have < n and self.proposed - proposed_before < budget:
            samples, labels = propose(self.batch_size)
            ratio = log_ratio(samples, labels)
            # The running max of Algorithm 1: a sample above the bound raises it.
            self.log_bound = max(self.log_bound, float(ratio.max()))
            accept_p = torch.sigmoid(self.shifted_logit(ratio) - self.gamma)
            keep = torch.rand(len(ratio), generator=noise, dtype=torch.double) < accept_p
            self.proposed += len(ratio)
            self.accepted += int(keep.sum())
            kept.append(samples[keep])
            if labels is not None:
                kept_labels.append(labels[keep])
            have += int(keep.sum())
        if have < n:
            raise UserError(
                f"rejection sampling accepted only {have} of {self.proposed - proposed_before} "
                f"proposals, fewer than the {n} asked for; lower rejection.percentile (it keeps "
                "more) or raise rejection.max_proposals_per_sample"
            )
        labels_out = torch.cat(kept_labels)[:n] if kept_labels else None
        return torch.cat(kept)[:n], labels_out


def log_ratio_of(module: Any) -> LogRatio:
    """The module's discriminator as an estimate of log p_data / p_g (eval mode, no grad).

    Only objectives whose optimal critic is a known function of the density ratio can say it
    (`Objective.log_density_ratio`); Wasserstein and hinge critics cannot.
    """
    game = module.game
    objective = getattr(game, "objective", None)
    probe = objective.log_density_ratio(torch.zeros(1)) if objective is not None else None
    if probe is None:
        name = type(objective or game).__name__
        raise UserError(
            f"rejection sampling needs a discriminator that estimates p_data / p_g, but this "
            f"model's objective ({name}) does not; use a model trained with objective="
            "non_saturating, minimax or least_squares, or drop rejection"
        )
    discriminator = module.discriminator

    @torch.no_grad()
    def log_ratio(samples: Tensor, labels: Tensor | None) -> Tensor:
        was_training = discriminator.training
        discriminator.eval()
        try:
            device_labels = labels.to(module.device) if labels is not None else None
            scores = game.critic(module, samples.to(module.device), device_labels)
            scores = scores.float().flatten()
        finally:
            discriminator.train(was_training)
        return objective.log_density_ratio(scores).cpu()

    return log_ratio


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]
