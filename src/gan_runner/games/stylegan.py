"""StyleGAN2's game (Karras et al. 2020, arXiv:1912.04958): stylegan2-ada's four phases.

generator {non-saturating loss} → generator_reg every 4 {path length} → discriminator {logistic
loss} → discriminator_reg every 16 {R1}, each lazy phase weighted by its interval, and style mixing
wherever the generator runs. The phase order and intervals are config (conf/game/stylegan.yaml).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gan_runner.games.adversarial import AdversarialGame
from gan_runner.games.base import Phase, Terms
from gan_runner.objectives import Objective
from gan_runner.regularizers import LazyPenalty, PenaltyInputs, Regularizer


class StyleGANGame(AdversarialGame):
    """The adversarial game with a style-based generator (Karras et al. 2019, 2020): style mixing,
    path-length regularization of G and the critic's penalties in lazy phases of their own."""

    phase_names = ("generator", "generator_reg", "discriminator", "discriminator_reg")

    def __init__(
        self,
        players: Mapping[str, Sequence[str]],
        phases: Sequence[Mapping[str, Any]],
        objective: Objective,
        regularizers: Mapping[str, Regularizer] | None = None,
        terms: Mapping[str, Any] | None = None,
        style_mixing: float = 0.9,
        pl_weight: float = 2.0,
        pl_decay: float = 0.01,
        pl_batch_shrink: int = 2,
    ) -> None:
        super().__init__(players, phases, objective, regularizers, terms)
        if not 0 <= style_mixing <= 1:
            raise ValueError(f"game.style_mixing={style_mixing} is a probability: use 0 to 1")
        if pl_weight < 0 or not 0 < pl_decay <= 1 or pl_batch_shrink < 1:
            raise ValueError(
                f"game.pl_weight={pl_weight}, pl_decay={pl_decay}, pl_batch_shrink="
                f"{pl_batch_shrink}: use a weight >= 0, a decay in (0, 1] and a shrink >= 1"
            )
        self.style_mixing, self.pl_weight = style_mixing, pl_weight
        self.pl_decay, self.pl_batch_shrink = pl_decay, pl_batch_shrink
        self.pl_mean = torch.zeros([])  # running mean path length a (the reference's pl_mean)
        self.separate_penalty = any(p.name == "discriminator_reg" for p in self.phases)

    def check(self, module: Any) -> None:
        super().check(module)
        for network in ("generator", "generator_ema"):
            net = getattr(module, network, None)
            if net is not None and not hasattr(net, "mapping"):
                raise ValueError(
                    f"game=stylegan mixes styles in W, but the {network} "
                    f"({type(net).__name__}) has no mapping network; use arch=stylegan2 or "
                    "arch=stylegan"
                )
        for name, regularizer in self.regularizers.items():
            if isinstance(regularizer, LazyPenalty) and regularizer.every != 1:
                raise ValueError(
                    f"regularizer.{name}.every={regularizer.every}: game=stylegan runs penalties "
                    "in its lazy discriminator_reg phase; set its `every` in game.phases instead"
                )

    def phase_has_terms(self, phase: Phase) -> bool:
        if phase.name == "generator_reg":
            return self.pl_weight > 0
        if phase.name == "discriminator_reg":
            return bool(self.regularizers)
        return True

    # ----------------------------------------------------------------- the generator
    def mapped(self, module: Any, z: Tensor, labels: Tensor | None) -> Tensor:
        """ws for z, with the second half of the layers from another z with probability
        `style_mixing` (one cutoff per batch, as in stylegan2-ada's run_G)."""
        generator = module.generator
        ws = generator.mapping(z, labels)
        if self.style_mixing <= 0:
            return ws
        noise = module.noise
        # One cutoff per batch, chosen without a host sync (torch.where, as the reference).
        cutoff = torch.randint(1, ws.shape[1], [], generator=noise, device=z.device)
        mixes = torch.rand([], generator=noise, device=z.device) < self.style_mixing
        cutoff = torch.where(mixes, cutoff, torch.full_like(cutoff, ws.shape[1]))
        other = module.latent.sample(z.shape[0], z.shape[1], noise).to(z)
        mixed = generator.mapping(other, labels, update_w_avg=False)
        later = torch.arange(ws.shape[1], device=z.device)[None, :, None] >= cutoff
        return torch.where(later, mixed, ws)

    def generate(self, module: Any, z: Tensor, labels: Tensor | None) -> Tensor:
        labels = labels if module.num_classes else None
        return module.generator.synthesis(self.mapped(module, z, labels))

    # ----------------------------------------------------------------- the phases
    def terms(self, phase: Phase, batch: dict[str, Tensor], module: Any, gain: int) -> Terms:
        if phase.name == "generator_reg":
            terms = self._path_length_terms(batch, module)
        elif phase.name == "discriminator_reg":
            terms = self._penalty_terms(batch, module)
        elif phase.name == "discriminator":
            # Without a discriminator_reg phase (StyleGAN 1), the penalties join the main step.
            terms = self._discriminator_terms(batch, module, penalties=not self.separate_penalty)
        else:
            terms = self._generator_terms(batch, module)
        if gain != 1:
            terms.losses = {k: None if v is None else gain * v for k, v in terms.losses.items()}
        return terms

    def _penalty_terms(self, batch: dict[str, Tensor], module: Any) -> Terms:
        """The critic's penalties (R1) alone, in their own lazy step."""
        real, real_labels = batch["samples"], batch.get("labels")
        fake, fake_labels = real, real_labels  # unread by R1: no generator pass, as the reference
        if any(r.reads_fake for r in self.regularizers.values()):
            z, fake_labels, _ = self.draw(module, real.shape[0])
            with torch.no_grad():
                fake = self.generate(module, z, fake_labels)
        inputs = PenaltyInputs(
            lambda x, y: self.critic(module, x, y),
            real,
            fake,
            real_labels,
            fake_labels,
            module.counters.d_steps,
            module.noise,
        )
        losses: dict[str, Tensor | None] = {}
        for name, regularizer in self.regularizers.items():
            if isinstance(regularizer, LazyPenalty):
                losses[name] = regularizer.penalty(inputs)
            else:
                losses[name] = regularizer.discriminator_penalty(inputs)
        return Terms(losses)

    def _path_length_terms(self, batch: dict[str, Tensor], module: Any) -> Terms:
        """Path length regularization (StyleGAN2 §3.2, as its code): E(‖J_wᵀ y‖ − a)² with
        y ~ N(0, I)/√(HW) and a the running mean of ‖J_wᵀ y‖."""
        if self.pl_weight <= 0:
            return Terms({"path_length": None})
        n = max(batch["samples"].shape[0] // self.pl_batch_shrink, 1)
        z, labels, _ = self.draw(module, n)
        ws = self.mapped(module, z, labels if module.num_classes else None)
        images = module.generator.synthesis(ws)
        noise = torch.randn(images.shape, generator=module.noise, device=images.device)
        noise = noise / math.sqrt(images.shape[2] * images.shape[3])
        (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()  # ‖J_wᵀ y‖ per sample, averaged over ws
        pl_mean = self.pl_mean.to(lengths.device).lerp(lengths.mean().detach(), self.pl_decay)
        self.pl_mean = pl_mean.detach()
        penalty = (lengths - pl_mean).square()
        # images·0 keeps every synthesis parameter in the graph (DDP expects them all).
        loss = (images[:, 0, 0, 0] * 0 + penalty * self.pl_weight).mean()  # w_pl E(‖J_wᵀy‖ − a)²
        return Terms({"path_length": loss}, {"generator_reg/pl_mean": self.pl_mean})

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pl_mean": self.pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "pl_mean" in state:
            self.pl_mean = state["pl_mean"].clone()
