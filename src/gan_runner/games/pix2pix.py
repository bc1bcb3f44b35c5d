"""pix2pix (Isola et al. 2017, arXiv:1611.07004): paired image-to-image translation as a
conditional GAN plus an L1 pull to the target.

G maps a source image a to b; a conditional critic D scores the pair (a, b) patch by patch. D
minimizes 0.5 * [BCE(D(a, b), 1) + BCE(D(a, G(a)), 0)]; G minimizes the objective's generator
loss on D(a, G(a)) plus l1_weight * |G(a) - b| (official code: gan_mode vanilla, i.e.
objective=non_saturating on logits, lambda_L1 = 100, the D loss halved). As the official
code, one G(a) per batch serves both phases (one dropout draw): detached for D, with its graph
for G.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gan_runner.callbacks.samples import to_uint8_grid
from gan_runner.games.base import Phase, Terms
from gan_runner.games.translation import TranslationGame
from gan_runner.losses.base import Term
from gan_runner.objectives import Objective
from gan_runner.regularizers import Regularizer


class Pix2PixGame(TranslationGame):
    """pix2pix's game (Isola et al. 2017, eq. 4): min_G max_D L_cGAN(G, D) + lambda L_L1(G),
    the critic seeing the source image beside the real or generated target.

    Networks: `generator` (a -> b, called generator(a, None)) and `discriminator` (called
    discriminator(b, None, condition=a), with `takes_condition`). Batches are {"a", "b"}
    with b[i] the target of a[i]. Sample grids translate the first batch's a images, captured
    once into the module's fixed_latent; the "translation" view shows rows a, G(a), b.
    """

    phase_names = ("discriminator", "generator")
    augmented_critics = ()
    critic_input = "(input, output) image pairs, which augmenting apart would misalign"
    name = "pix2pix"
    needs_pairs = True

    def __init__(
        self,
        players: Mapping[str, Sequence[str]],
        phases: Sequence[Mapping[str, Any]],
        objective: Objective,
        shape: Sequence[int],
        condition_shape: Sequence[int] | None = None,
        l1_weight: float = 100.0,
        discriminator_weight: float = 0.5,
        regularizers: Mapping[str, Regularizer] | None = None,
        terms: Mapping[str, Term] | None = None,
    ) -> None:
        super().__init__(players, phases)
        if l1_weight < 0 or discriminator_weight <= 0:
            raise ValueError(
                f"l1_weight must be >= 0 and discriminator_weight > 0, got {l1_weight}, "
                f"{discriminator_weight}; set game.l1_weight (the paper's 100)"
            )
        self.objective = objective
        self.shape = tuple(int(s) for s in shape)
        self.condition_shape = self.shape if condition_shape is None else tuple(condition_shape)
        self.input_shape = self.condition_shape
        self.l1_weight, self.discriminator_weight = float(l1_weight), float(discriminator_weight)
        self.regularizers, self.extra_terms = dict(regularizers or {}), dict(terms or {})
        self.fixed_targets: Tensor | None = None  # their b, for the translation view
        self._rolled: tuple[Tensor, Tensor] | None = None  # (this batch's a, G(a))

    # ----------------------------------------------------------------- refusals
    def check(self, module: Any) -> None:
        self.refuse_labels_and_extras(module)
        generator, critic = module.generator, module.discriminator
        if not hasattr(generator, "in_channels") or not hasattr(generator, "out_channels"):
            raise ValueError(
                f"game=pix2pix needs an image-to-image generator, but arch.generator is "
                f"{type(generator).__name__}; use arch=pix2pix_unet"
            )
        if not getattr(critic, "takes_condition", False):
            raise ValueError(
                f"game=pix2pix needs a critic that sees the source image beside the target, but "
                f"arch.discriminator is {type(critic).__name__}; use arch=pix2pix_unet "
                "(ConditionalPatchCritic)"
            )
        self._check_channels(generator, critic)

    def _check_channels(self, generator: Any, critic: Any) -> None:
        a, b = self.condition_shape[0], self.shape[0]
        a_fix = "to null (a's channels)"
        wrong = [  # (key, its channels, the data's, the fix)
            ("arch.generator.in_channels", generator.in_channels, a, a_fix),
            ("arch.generator.data_shape", generator.out_channels, b, "to ${data.shape}"),
            (
                "arch.discriminator.condition_channels",
                getattr(critic, "in_channels", a + b) - b,
                a,
                a_fix,
            ),
        ]
        for key, got, want, fix in wrong:
            if got != want:
                raise ValueError(
                    f"{key} gives {got} channel(s) where the data has {want} ({a} in a, {b} in "
                    f"b); set {key} {fix}"
                )

    # ----------------------------------------------------------------- sample grids
    def sample_views(self, module: Any, samples: Tensor) -> dict[str, Tensor]:
        """Rows a, G(a), b of the fixed images (b once captured): the translation at a glance."""
        n = min(8, len(samples))
        rows = [module.fixed_latent[:n].float().cpu(), samples[:n].float().cpu()]
        if self.fixed_targets is not None:
            rows.append(self.fixed_targets[:n].float().cpu())
        if any(row.shape[1:] != rows[0].shape[1:] for row in rows):
            return {}  # a and b differ in shape or channels: no common grid
        return {"translation": to_uint8_grid(torch.cat(rows), nrow=n)}

    def _capture(self, batch: dict[str, Tensor], module: Any) -> None:
        rows = self.capture_inputs(module, batch["a"])
        self.fixed_targets = batch["b"].detach()[rows].float().cpu()

    # ----------------------------------------------------------------- the step
    def rollout(self, batch: dict[str, Tensor], module: Any) -> None:
        if not self.captured:
            self._capture(batch, module)
        self._rolled = (batch["a"], module.generator(batch["a"], None))

    def translated(self, batch: dict[str, Tensor], module: Any) -> Tensor:
        """G(a) of this batch's rollout (computed here when terms run without one). A phase
        after G's step still reads the G(a) drawn before it, as the official code's D does."""
        if self._rolled is None or self._rolled[0] is not batch["a"]:
            self.rollout(batch, module)
        return self._rolled[1]

    def terms(self, phase: Phase, batch: dict[str, Tensor], module: Any, gain: int) -> Terms:
        a, b = batch["a"], batch["b"]
        fake = self.translated(batch, module)
        if phase.name == "discriminator":
            real_scores = module.discriminator(b, None, condition=a).float()
            fake_scores = module.discriminator(fake.detach(), None, condition=a).float()
            # 0.5 * [BCE(D(a, b), 1) + BCE(D(a, G(a)), 0)], averaged over every patch
            loss = self.discriminator_weight * self.objective.discriminator_loss(
                real_scores, fake_scores
            )
            logs = {"d_real": real_scores.detach().mean(), "d_fake": fake_scores.detach().mean()}
            logs.update(self.objective.critic_logs(real_scores, fake_scores, loss))
            losses = {"adversarial": loss}
        else:
            scores = module.discriminator(fake, None, condition=a).float()
            l1 = (fake.float() - b.float()).abs().mean()
            losses = {
                "adversarial": self.objective.generator_loss(scores),  # BCE(D(a, G(a)), 1)
                "l1": self.l1_weight * l1,  # lambda * E|b - G(a)|
            }
            logs = {"l1_error": l1.detach()}
        return Terms({k: gain * v if gain != 1 else v for k, v in losses.items()}, logs)

    # ----------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {"captured": self.captured, "fixed_targets": self.fixed_targets}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.captured = bool(state.get("captured", False))
        self.fixed_targets = state.get("fixed_targets")
