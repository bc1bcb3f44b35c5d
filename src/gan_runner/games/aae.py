"""The adversarial autoencoder (Makhzani et al. 2016, arXiv:1511.05644): an autoencoder whose
code distribution q(z) is matched to the prior p(z) by a critic on z, so that the decoder turns
prior samples into data.

Each batch runs the paper's two phases: reconstruction (encoder and decoder minimize the
reconstruction error), then regularization (the critic on z learns to tell prior samples from
codes E(x); then the encoder, as the generator, learns to fool it). The decoder is the run's
`generator` (z -> x), so sampling, EMA and sample grids draw Dec(z), z ~ p(z).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gan_runner.callbacks.samples import to_uint8_grid
from gan_runner.games.base import Game, Phase, Terms
from gan_runner.objectives import Objective

SHOWN = 8  # real images in the reconstructions view


class AdversarialAutoencoderGame(Game):
    """The adversarial autoencoder of Makhzani et al. 2016 with a deterministic q(z|x): the
    reconstruction phase, then the regularization phase's critic and encoder steps.

    Players (conf/game/aae.yaml): `generator: [generator, encoder]` and `discriminator:
    [discriminator]`. The encoder trains in two phases but players partition the parameters,
    so the autoencoder is one player (one optimizer) stepped twice per batch: by the
    reconstruction phase (encoder and decoder), then by the encoder phase, whose loss never
    reaches the decoder (no gradient: the optimizer leaves it alone). The paper's schedule, with
    one optimizer where its code has two; `adversarial_weight` sets the encoder phase's scale.
    """

    phase_names = ("reconstruction", "discriminator", "encoder")
    augmented_critics = ()
    critic_input = "latent codes, not images"
    critic_reads_samples = False

    def __init__(
        self,
        players: Mapping[str, Sequence[str]],
        phases: Sequence[Mapping[str, Any]],
        objective: Objective,
        regularizers: Mapping[str, Any] | None = None,
        terms: Mapping[str, Any] | None = None,
        reconstruction_weight: float = 1.0,
        adversarial_weight: float = 1.0,
    ) -> None:
        super().__init__(players, phases)
        for name, value in (
            ("reconstruction_weight", reconstruction_weight),
            ("adversarial_weight", adversarial_weight),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}; set game.{name}")
        # Not `objective`: rejection sampling reads game.objective as a critic on x that
        # estimates p_data / p_g, and this critic judges codes z, so gan-sample refuses DRS.
        self.code_objective = objective
        self.extras = [*(regularizers or {}), *(terms or {})]
        self.reconstruction_weight = float(reconstruction_weight)
        self.adversarial_weight = float(adversarial_weight)
        self.shown: Tensor | None = None  # real images the reconstructions view shows

    def check(self, module: Any) -> None:
        if not hasattr(module, "encoder"):
            raise ValueError(
                "game=aae needs an encoder network (arch.encoder with a _target_); use "
                "arch=aae_mlp"
            )
        if module.num_classes:
            raise ValueError(
                f"game=aae is unconditional, got num_classes={module.num_classes}; set "
                "num_classes=0"
            )
        if not _scores_codes(module.discriminator, module.z_dim):
            raise ValueError(
                f"game=aae needs a critic on z, but arch.discriminator "
                f"({type(module.discriminator).__name__}) does not take z_dim={module.z_dim} "
                f"inputs; set arch.discriminator.data_shape=[{module.z_dim}] or use arch=aae_mlp"
            )
        if self.extras:
            raise ValueError(
                f"game=aae takes no regularizers or terms (got {', '.join(self.extras)}); set "
                "regularizer=[] terms=[]"
            )

    def rollout(self, batch: dict[str, Tensor], module: Any) -> None:
        # Nothing is shared between phases: the reconstruction step moves E, so the critic's
        # and the encoder's phases need codes from the updated encoder, as in the paper.
        if self.shown is None:
            self.shown = batch["samples"][:SHOWN].detach().clone()

    def terms(self, phase: Phase, batch: dict[str, Tensor], module: Any, gain: int) -> Terms:
        x = batch["samples"]
        if phase.name == "reconstruction":
            loss, logs = self.reconstruction(module, x), {}
        elif phase.name == "discriminator":
            loss, logs = self._critic_loss(module, x)
        else:
            loss, logs = self._encoder_loss(module, x), {}
        if loss is not None and gain != 1:
            loss = gain * loss
        name = "reconstruction" if phase.name == "reconstruction" else "adversarial"
        return Terms({name: loss}, logs)

    def reconstruction(self, module: Any, x: Tensor) -> Tensor:
        """The weighted mean squared error of Dec(E(x)) per pixel, on the model's [-1, 1]."""
        reconstructed = module.generator(module.encoder(x), None).float()
        return self.reconstruction_weight * (reconstructed - x.float()).pow(2).mean()

    def _critic_loss(self, module: Any, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        prior, _ = module.draw_latent(x.shape[0])
        with torch.no_grad():  # the critic's step: no graph through the encoder
            codes = module.encoder(x)
        real = module.discriminator(prior).float()  # prior samples are the critic's real
        fake = module.discriminator(codes).float()
        loss = self.code_objective.discriminator_loss(real, fake)  # sp(-D(z)) + sp(D(E(x)))
        logs = {"d_real": real.detach().mean(), "d_fake": fake.detach().mean()}
        logs.update(self.code_objective.critic_logs(real, fake, loss))
        return loss, logs

    def _encoder_loss(self, module: Any, x: Tensor) -> Tensor | None:
        if not self.adversarial_weight:
            return None  # an autoencoder without the regularization phase: the step is skipped
        fake = module.discriminator(module.encoder(x)).float()
        real = None
        if getattr(self.code_objective, "generator_needs_real", False):
            real = module.discriminator(module.draw_latent(x.shape[0])[0]).float()
        # The encoder as generator: sp(-D(E(x))) under the non-saturating objective.
        return self.adversarial_weight * self.code_objective.generator_loss(fake, real)

    @torch.no_grad()
    def sample_views(self, module: Any, samples: Tensor) -> dict[str, Tensor]:
        """Real images of the first batch (top row) over their reconstructions Dec(E(x))."""
        if self.shown is None or samples.dim() != 4:
            return {}
        networks = (module.encoder, module.generator)
        modes = [net.training for net in networks]
        for net in networks:
            net.eval()
        try:
            x = self.shown.to(module.device)
            reconstructed = module.generator(module.encoder(x), None).float()
        finally:
            for net, mode in zip(networks, modes):
                net.train(mode)
        return {
            "reconstructions": to_uint8_grid(
                torch.cat([x.float(), reconstructed]).cpu(), nrow=len(x)
            )
        }

    def state_dict(self) -> dict[str, Any]:
        return {} if self.shown is None else {"shown": self.shown.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "shown" in state:
            self.shown = state["shown"]


@torch.no_grad()
def _scores_codes(critic: torch.nn.Module, z_dim: int) -> bool:
    """Whether `critic` gives one score per row of a (2, z_dim) batch (eval mode: no noise,
    no running statistics touched)."""
    was_training = critic.training
    critic.eval()
    try:
        device = next(critic.parameters()).device
        scores = critic(torch.zeros(2, z_dim, device=device))
    except (RuntimeError, ValueError, TypeError):
        return False
    finally:
        critic.train(was_training)
    return tuple(scores.shape) == (2,)
