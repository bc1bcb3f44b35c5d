"""InfoGAN's mutual-information term (Chen et al. 2016, §5) on the critic's Q head."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.games.base import player_parameters
from gan_runner.losses.base import Play, Term

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_nll(x: Tensor, mean: Tensor, log_std: Tensor | None) -> Tensor:
    """-log N(x; mean, exp(log_std)²) per entry; log_std None: std fixed to 1."""
    if log_std is None:
        return HALF_LOG_2PI + 0.5 * (x - mean).pow(2)  # ½ log 2π + ½ (x - μ)²
    return HALF_LOG_2PI + log_std + 0.5 * ((x - mean) * torch.exp(-log_std)).pow(2)  # + log σ


class MutualInformation(Term):
    """λ L_I(G, Q) of InfoGAN (Chen et al. 2016, §5): the negative log-likelihood of G's codes
    under the critic's Q head (arch.discriminator.heads.codes), on generated samples.

    L_I = Σ_k CE(logits_k, c_k) + Σ_j -log N(c_j; μ_j, σ_j²) bounds H(c) - I(c; G(z, c)) from
    above, so G and Q minimizing it maximize a lower bound on the mutual information. The
    generator's phase always adds it; the critic's phase adds it when Q trains with the critic's
    player (openai/InfoGAN, which also trains the shared trunk by it), never when Q trains with
    the generator's (StudioGAN). openai/InfoGAN's MNIST code uses λ=1 for both code types and a
    std fixed to 1 (`fix_std`); the paper's text, a smaller λ for continuous codes and a learned
    std, σ = exp(Q's output). Q's outputs: each categorical code's logits, the continuous codes'
    means, then their log-stds when learned.
    """

    heads = ("codes",)

    def __init__(
        self,
        lambda_categorical: float = 1.0,
        lambda_continuous: float = 1.0,
        fix_std: bool = True,
    ) -> None:
        for key, value in (
            ("lambda_categorical", lambda_categorical),
            ("lambda_continuous", lambda_continuous),
        ):
            if not value >= 0:
                raise ValueError(f"{key}={value}; set a weight >= 0 (0 turns that part off)")
        self.lambda_categorical, self.lambda_continuous = lambda_categorical, lambda_continuous
        self.fix_std = fix_std
        self.estimates: dict[str, Tensor] = {}  # the last call's, logged through logs()
        self._q_with_critic: bool | None = None  # does Q train with the critic? (game.players)

    def check(self, module: Any) -> None:
        super().check(module)
        layout = getattr(module.game, "layout", None)
        if layout is None:
            raise ValueError(
                "MutualInformation reads the codes InfoGAN writes into z; use game=infogan"
            )
        linears = [
            m for m in module.discriminator.heads["codes"].modules() if isinstance(m, nn.Linear)
        ]
        size, need = linears[-1].out_features, layout.q_size(self.fix_std)
        if size != need:
            kinds = f"{len(layout.categorical)} categorical ({sum(layout.categorical)} logits)"
            std = "fixed std" if self.fix_std else "learned std: means and log-stds"
            raise ValueError(
                f"arch.discriminator.heads.codes.size is {size}, but the codes ({kinds}, "
                f"{layout.continuous} continuous with {std}) need {need} outputs; set "
                f"arch.discriminator.heads.codes.size={need}"
            )

    def information(self, q: Tensor, codes: dict[str, Tensor], layout: Any) -> Tensor | None:
        """λ-weighted L_I of Q's outputs for the codes G was given; None when both λ are 0."""
        logits, means, log_std = layout.split(q.float(), self.fix_std)
        parts, self.estimates = [], {}
        if logits and self.lambda_categorical:
            target = codes["categorical"]
            ce = sum(F.cross_entropy(y, target[:, k]) for k, y in enumerate(logits))  # Σ_k CE
            self.estimates["mi_categorical"] = (layout.entropy - ce).detach()  # H(c) - CE ≤ I
            parts.append(self.lambda_categorical * ce)
        if layout.continuous and self.lambda_continuous:
            nll = gaussian_nll(codes["continuous"].float(), means, log_std)
            nll = nll.sum(1).mean()  # Σ_j E[-log Q(c_j|x)]
            self.estimates["nll_continuous"] = nll.detach()
            parts.append(self.lambda_continuous * nll)
        return sum(parts[1:], parts[0]) if parts else None

    def logs(self) -> dict[str, Tensor]:
        return dict(self.estimates)

    def discriminator_term(self, play: Play) -> Tensor | None:
        if not self.q_with_critic(play.module):
            return None  # Q trains in the generator's phase; the trunk never learns from L_I
        return self.information(play.fake_out.heads["codes"], play.codes, play.module.game.layout)

    def generator_term(self, play: Play) -> Tensor | None:
        return self.information(play.fake_out.heads["codes"], play.codes, play.module.game.layout)

    def q_with_critic(self, module: Any) -> bool:
        """Whether the critic's phase's player owns Q (game.players), looked up once."""
        if self._q_with_critic is None:
            critic = next(p.player for p in module.game.phases if p.name == "discriminator")
            owned = player_parameters(module, module.players, module.network_names)[critic]
            head = next(module.discriminator.heads["codes"].parameters())
            self._q_with_critic = any(p is head for p in owned)
        return self._q_with_critic
