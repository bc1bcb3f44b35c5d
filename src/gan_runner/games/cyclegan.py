"""CycleGAN (Zhu et al. 2017, arXiv:1703.10593): unpaired translation between domains A and B by
two generators, G: A -> B (`generator`) and F: B -> A (`generator_ba`), each against a critic of
its target domain (`discriminator` judges B, `discriminator_a` judges A), tied by cycle
consistency F(G(a)) ~ a and G(F(b)) ~ b.

As the official code (junyanz/pytorch-CycleGAN-and-pix2pix models/cycle_gan_model.py): the
fakes are made once per batch, the generators' step comes first on them (critics frozen), and
the critics' step reads them, detached, through a 50-image history pool per direction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gan_runner.games.base import Phase, Terms
from gan_runner.games.image_pool import ImagePool
from gan_runner.games.translation import TranslationGame
from gan_runner.objectives import Objective

# The four networks, each built by arch.<name>, and what each one is.
ROLES = {
    "generator": "G: A -> B",
    "generator_ba": "F: B -> A",
    "discriminator": "the critic of domain B",
    "discriminator_a": "the critic of domain A",
}


class CycleGANGame(TranslationGame):
    """CycleGAN's game (Zhu et al. 2017): two adversarial translations tied by an L1 cycle loss.

    The generators' phase sums, for each direction, the objective's generator loss on the
    target critic's patch scores (times `adversarial_weight`), the cycle L1 times
    `lambda_cycle`, and the identity L1 (G(b) ~ b, F(a) ~ a) times
    `lambda_identity * lambda_cycle`; the critics' phase sums each critic's objective loss on
    real images against pooled fakes. Network outputs are patch maps; each patch is a score.
    """

    phase_names = ("generator", "discriminator")
    augmented_critics = ("discriminator", "discriminator_a")
    name = "cyclegan"

    def __init__(
        self,
        players: Mapping[str, Sequence[str]],
        phases: Sequence[Mapping[str, Any]],
        objective: Objective,
        shape: Sequence[int],
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.5,
        adversarial_weight: float = 1.0,
        pool_size: int = 50,
        seed: int = 0,
        regularizers: Mapping[str, Any] | None = None,
        terms: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(players, phases)
        if lambda_cycle < 0 or lambda_identity < 0 or adversarial_weight <= 0:
            raise ValueError(
                "lambda_cycle and lambda_identity must be >= 0 and adversarial_weight > 0, got "
                f"{lambda_cycle}, {lambda_identity}, {adversarial_weight}"
            )
        self.objective, self.shape = objective, tuple(int(s) for s in shape)
        self.input_shape = self.shape
        self.lambda_cycle, self.lambda_identity = lambda_cycle, lambda_identity
        self.adversarial_weight = adversarial_weight
        self.regularizers, self.extra_terms = dict(regularizers or {}), dict(terms or {})
        # One pool per direction, each with its own stream (seeded apart from the other).
        self.pool_b, self.pool_a = (
            ImagePool(pool_size, 2 * seed),
            ImagePool(pool_size, 2 * seed + 1),
        )
        self._fakes: dict[str, Tensor] = {}

    # ----------------------------------------------------------------- checks and sampling
    def check(self, module: Any) -> None:
        missing = [name for name in ROLES if not hasattr(module, name)]
        if missing:
            raise ValueError(
                f"game=cyclegan needs arch.{missing[0]} ({ROLES[missing[0]]}) with a _target_; "
                "use arch=cyclegan_resnet"
            )
        self.refuse_labels_and_extras(module)
        for name in ROLES:
            _check_network(module, name, self.shape)

    def sample_views(self, module: Any, samples: Tensor) -> dict[str, Tensor]:
        """Rows of 8: fixed A images, G(A), and F(G(A)) when F exists."""
        from gan_runner.callbacks.samples import to_uint8_grid

        a = module.fixed_latent[:8].float()
        rows = [a, samples[:8].to(a.device).float()]
        backward = getattr(module, "generator_ba", None)
        if backward is not None:
            rows.append(_eval_forward(backward, rows[1]))
        return {"translation": to_uint8_grid(torch.cat(rows).cpu(), nrow=len(a))}

    # ----------------------------------------------------------------- the training step
    def rollout(self, batch: dict[str, Tensor], module: Any) -> None:
        """Both translations and their reconstructions, once per batch, with graphs for the
        generators' phase (the critics' phase detaches them)."""
        a, b = batch["a"], batch["b"]
        if not self.captured:
            self.capture_inputs(module, a)
        fake_b = module.generator(a, None)
        fake_a = module.generator_ba(b, None)
        self._fakes = {
            "fake_b": fake_b,
            "fake_a": fake_a,
            "cycle_a": module.generator_ba(fake_b, None),  # F(G(a))
            "cycle_b": module.generator(fake_a, None),  # G(F(b))
        }

    def terms(self, phase: Phase, batch: dict[str, Tensor], module: Any, gain: int) -> Terms:
        if not self._fakes:
            self.rollout(batch, module)
        if phase.name == "generator":
            terms = self._generator_terms(batch, module)
        else:
            terms = self._discriminator_terms(batch, module)
        if gain != 1:
            terms.losses = {k: None if v is None else gain * v for k, v in terms.losses.items()}
        return terms

    def _generator_terms(self, batch: dict[str, Tensor], module: Any) -> Terms:
        a, b, fakes = batch["a"], batch["b"], self._fakes
        weight = self.adversarial_weight
        losses: dict[str, Tensor | None] = {
            "adversarial_b": weight * self._fooling(module.discriminator, fakes["fake_b"], b),
            "adversarial_a": weight * self._fooling(module.discriminator_a, fakes["fake_a"], a),
            "cycle_a": self.lambda_cycle * (fakes["cycle_a"] - a).abs().mean(),  # |F(G(a))-a|
            "cycle_b": self.lambda_cycle * (fakes["cycle_b"] - b).abs().mean(),  # |G(F(b))-b|
            "identity_b": None,
            "identity_a": None,
        }
        if self.lambda_identity > 0:  # the paper's colour-preserving term; wrong for 1 - x maps
            scale = self.lambda_identity * self.lambda_cycle
            losses["identity_b"] = scale * (module.generator(b, None) - b).abs().mean()  # |G(b)-b|
            losses["identity_a"] = scale * (module.generator_ba(a, None) - a).abs().mean()
        return Terms(losses)

    def _fooling(self, critic: Any, fake: Tensor, real: Tensor) -> Tensor:
        """The objective's generator loss on the critic's patch scores of `fake`."""
        real_scores = None
        if getattr(self.objective, "generator_needs_real", False):
            real_scores = critic(real).float().flatten()
        return self.objective.generator_loss(critic(fake).float().flatten(), real_scores)

    def _discriminator_terms(self, batch: dict[str, Tensor], module: Any) -> Terms:
        a, b, fakes = batch["a"], batch["b"], self._fakes
        losses, logs = {}, {}
        for domain, critic, real, fake, pool in (
            ("b", module.discriminator, b, fakes["fake_b"], self.pool_b),
            ("a", module.discriminator_a, a, fakes["fake_a"], self.pool_a),
        ):
            real_scores = critic(real).float().flatten()
            fake_scores = critic(pool.query(fake)).float().flatten()
            # LS: 1/2 E[(D(real)-1)^2] + 1/2 E[D(pooled fake)^2], the official 0.5 (real + fake)
            losses[f"adversarial_{domain}"] = self.objective.discriminator_loss(
                real_scores, fake_scores
            )
            logs[f"d_real_{domain}"] = real_scores.detach().mean()
            logs[f"d_fake_{domain}"] = fake_scores.detach().mean()
        return Terms(losses, logs)

    def after_step(self, phase: Phase, module: Any) -> None:
        if phase is self.phases[-1]:
            self._fakes = {}  # the batch is done: free its graphs

    # ----------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "pool_b": self.pool_b.state_dict(),
            "pool_a": self.pool_a.state_dict(),
            "captured": self.captured,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.pool_b.load_state_dict(state["pool_b"])
        self.pool_a.load_state_dict(state["pool_a"])
        self.captured = bool(state["captured"])


@torch.no_grad()
def _eval_forward(network: Any, x: Tensor) -> Tensor:
    """network(x, None) in eval mode, its mode restored."""
    was_training = network.training
    network.eval()
    try:
        return network(x.to(next(network.parameters()).device), None).float()
    finally:
        network.train(was_training)


@torch.no_grad()
def _check_network(module: Any, name: str, shape: tuple[int, ...]) -> None:
    """Refuse a network that cannot take an image of the data's shape, or whose translation
    does not return one; a critic must give at least one patch score."""
    network = getattr(module, name)
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    x = torch.zeros((2, *shape), device=device)
    was_training = network.training
    network.eval()  # no batch-norm statistics from this probe
    try:
        out = network(x, None)
    except RuntimeError as error:
        detail = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(
            f"arch.{name} ({type(network).__name__}) cannot take data of shape {list(shape)} "
            f"({detail}); match its in_channels and depth to the data (arch=cyclegan_resnet)"
        ) from None
    finally:
        network.train(was_training)
    if name.startswith("generator") and tuple(out.shape[1:]) != shape:
        raise ValueError(
            f"arch.{name} ({ROLES[name]}) maps data of shape {list(shape)} to "
            f"{list(out.shape[1:])}; set its channels to the data's ({shape[0]})"
        )
    if name.startswith("discriminator") and out.numel() < 2:
        raise ValueError(
            f"arch.{name} gives no patch score for data of shape {list(shape)}; use fewer "
            f"layers (arch.{name}.n_layers)"
        )
