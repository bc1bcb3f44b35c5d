"""The interface of a loss term in the adversarial game, and what it may look at."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from gan_runner.nets.layers import CriticOutput


@dataclass
class Play:
    """One phase of the adversarial game as its terms see it (critic outputs computed once)."""

    module: Any  # the GANModule: networks by name, counters, the run's noise stream
    real: Tensor
    real_labels: Tensor | None
    fake: Tensor  # detached in the critic's phase, with a graph into G in the generator's
    fake_labels: Tensor | None
    z: Tensor  # the latent the fakes came from
    fake_out: CriticOutput
    real_out: CriticOutput | None  # None in the generator's phase unless a term asks for it
    codes: dict[str, Tensor] = field(default_factory=dict)  # structured latent codes, if any
    batch: dict[str, Tensor] = field(default_factory=dict)  # the whole batch (labelled streams)


class Term:
    """A named loss of either player, added to its phase's sum; hooks default to no term."""

    # Critic heads the term reads (arch.discriminator.heads); checked before training.
    heads: tuple[str, ...] = ()
    # The generator's phase computes the critic on real data only when a term asks.
    needs_real_in_generator_phase: bool = False
    # True: a phase drops the objective's loss (the semi-supervised GAN's K+1 critic loss, its
    # feature-matching generator loss).
    replaces_discriminator_objective: bool = False
    replaces_generator_objective: bool = False

    def check(self, module: Any) -> None:
        """Refuse a run this term cannot work in (a missing head, no labels), in one line."""
        critic_heads = getattr(module.discriminator, "heads", None) or {}
        for head in self.heads:
            if head not in critic_heads:
                raise ValueError(
                    f"{type(self).__name__} reads the critic's {head} head, which "
                    f"arch.discriminator has not got; add arch.discriminator.heads.{head}"
                )

    def discriminator_term(self, play: Play) -> Tensor | None:
        return None

    def generator_term(self, play: Play) -> Tensor | None:
        return None

    def logs(self) -> dict[str, Tensor]:
        """Diagnostics of the term's last call (detached), logged as train/<phase>/<key>."""
        return {}

    def after_step(self, phase: str, module: Any) -> None:
        """After `phase`'s optimizer step (historical averaging updates its running means)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
