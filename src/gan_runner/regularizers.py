"""Regularizers: penalties, constraints and reparametrizations attached to one player.

Each regularizer implements only the hooks it needs; the training loop calls every hook of every
configured regularizer and never asks which one it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Critic = Callable[[Tensor, Tensor | None], Tensor]


@dataclass
class PenaltyInputs:
    """What a penalty may look at during one discriminator step."""

    critic: Critic  # the discriminator as a function of (samples, labels) -> scores (N,)
    real: Tensor
    fake: Tensor  # detached generator output
    real_labels: Tensor | None
    fake_labels: Tensor | None
    d_steps: int  # discriminator steps taken before this one
    noise: torch.Generator  # the run's per-rank generator, so penalties are reproducible


class Regularizer:
    """A term or constraint attached to a player; every hook defaults to doing nothing."""

    # True when the penalty is a per-sample input gradient, which BatchNorm in the critic
    # invalidates by coupling the samples of a batch (Gulrajani et al. 2017, §4).
    per_sample_gradient: bool = False
    # Whether its penalty reads generated samples (PenaltyInputs.fake): a phase of penalties
    # alone makes none for those that do not (StyleGAN2's R1 phase runs no generator).
    reads_fake: bool = True

    def build(self, discriminator: nn.Module) -> nn.Module:
        """Reparametrize the critic once, before the optimizers are made."""
        return discriminator

    def build_network(self, name: str, network: nn.Module) -> nn.Module:
        """Reparametrize any network by name, once, before the optimizers are made; by default
        the critic only, through `build`."""
        return self.build(network) if name == "discriminator" else network

    def discriminator_penalty(self, inputs: PenaltyInputs) -> Tensor | None:
        """A term added to the discriminator's loss, or None when it skips this step."""
        return None

    def generator_penalty(self, generator: nn.Module) -> Tensor | None:
        """A term added to the generator's loss, or None when it has none this step."""
        return None

    def after_discriminator_step(self, discriminator: nn.Module) -> None:
        """A constraint applied to the critic after each of its optimizer steps."""


def _input_gradient_sq_norm(critic: Critic, x: Tensor, labels: Tensor | None) -> Tensor:
    """Per-sample squared L2 norm of d critic(x) / d x, computed in float32 with a graph."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.detach().float().requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x, labels).float().sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(dim=1)  # flatten BEFORE the norm: one norm per sample


class LazyPenalty(Regularizer):
    """A per-sample input-gradient penalty, optionally lazy: computed on every k-th discriminator
    step and scaled by k to keep its average strength (Karras et al. 2020, StyleGAN2 App. B)."""

    per_sample_gradient = True

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every

    def discriminator_penalty(self, inputs: PenaltyInputs) -> Tensor | None:
        if inputs.d_steps % self.every:
            return None
        return self.every * self.penalty(inputs)

    def penalty(self, inputs: PenaltyInputs) -> Tensor:
        """The penalty's value on this step, before the laziness scaling."""
        raise NotImplementedError


class GradientPenalty(LazyPenalty):
    """The two-sided gradient penalty of Gulrajani et al. 2017 (WGAN-GP); target 0 gives the
    zero-centred 0-GP of Thanh-Tung et al. 2019."""

    def __init__(self, weight: float = 10.0, target: float = 1.0, every: int = 1) -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        super().__init__(every)
        self.weight, self.target = weight, target

    def penalty(self, inputs: PenaltyInputs) -> Tensor:
        real, fake = inputs.real.detach(), inputs.fake.detach()
        shape = (real.shape[0],) + (1,) * (real.dim() - 1)  # one epsilon per sample, not per pixel
        eps = torch.rand(shape, device=real.device, generator=inputs.noise)
        mixed = eps * real.float() + (1 - eps) * fake.float()
        # Interpolates carry the real labels: conditional critics see (x_hat, y) pairs.
        sq_norm = _input_gradient_sq_norm(inputs.critic, mixed, inputs.real_labels)
        gap = (sq_norm + 1e-12).sqrt() - self.target
        return self.weight * gap.pow(2).mean()  # λ E(‖∇‖-target)²


class R1(LazyPenalty):
    """The R1 penalty on real data of Mescheder et al. 2018, lazy as in Karras et al. 2020."""

    reads_fake = False

    def __init__(self, gamma: float = 10.0, every: int = 1) -> None:
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        super().__init__(every)
        self.gamma = gamma

    def penalty(self, inputs: PenaltyInputs) -> Tensor:
        sq_norm = _input_gradient_sq_norm(inputs.critic, inputs.real, inputs.real_labels)
        return self.gamma / 2 * sq_norm.mean()  # γ/2 E‖∇D(x)‖²


class WeightClip(Regularizer):
    """Clipping of every critic weight to [-c, c] after each step (Arjovsky et al. 2017)."""

    def __init__(self, clip_value: float = 0.01) -> None:
        if clip_value <= 0:
            raise ValueError(f"clip_value must be > 0, got {clip_value}")
        self.clip_value = clip_value

    @torch.no_grad()
    def after_discriminator_step(self, discriminator: nn.Module) -> None:
        for parameter in discriminator.parameters():
            parameter.clamp_(-self.clip_value, self.clip_value)


class SpectralNorm(Regularizer):
    """Spectral normalization of every layer's weight in the named networks (Miyato et al. 2018,
    SNGAN; the critic only, or G too as in SAGAN and BigGAN, Zhang et al. 2019).

    A generator's embeddings stay unnormalized: SAGAN's class-conditional BatchNorm gains are
    plain, and BigGAN-PyTorch found SN on G's shared embedding "seems to randomly cripple G"."""

    layer_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)

    def __init__(
        self,
        n_power_iterations: int = 1,
        eps: float = 1e-12,
        networks: Sequence[str] = ("discriminator",),
    ) -> None:
        if n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
        self.n_power_iterations, self.eps = n_power_iterations, eps
        self.networks = tuple(networks)

    def build(self, discriminator: nn.Module) -> nn.Module:
        return self._normalize(discriminator, self.layer_types)

    def build_network(self, name: str, network: nn.Module) -> nn.Module:
        if name not in self.networks:
            return network
        if name == "discriminator":
            return self.build(network)
        return self._normalize(
            network, tuple(t for t in self.layer_types if t is not nn.Embedding)
        )

    def _normalize(self, network: nn.Module, layer_types: tuple[type, ...]) -> nn.Module:
        parametrize = torch.nn.utils.parametrizations.spectral_norm
        for module in list(network.modules()):
            already = torch.nn.utils.parametrize.is_parametrized(module, "weight")
            if isinstance(module, layer_types) and not already:
                parametrize(module, n_power_iterations=self.n_power_iterations, eps=self.eps)
        return network


class OrthogonalRegularization(Regularizer):
    """BigGAN's orthogonal regularization of the generator (Brock et al. 2019, §3.1).

    R_β(W) = β‖W Wᵀ ⊙ (1 − I)‖²_F summed over G's weights (rows: output filters, reshaped to
    [out, −1]; the pre-spectral-norm weight; embeddings and 1-D parameters left out). Only the
    off-diagonal: filters are pushed apart in angle, their norms are free. `convention:
    biggan_pytorch` is half the paper's value (ajbrock/BigGAN-PyTorch `utils.ortho` adds the
    gradient 2β(WWᵀ⊙(1−I))W, the gradient of (β/2)‖·‖²), for matching that code.
    """

    conventions = {"paper": 1.0, "biggan_pytorch": 0.5}

    def __init__(self, weight: float = 1e-4, convention: str = "paper") -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if convention not in self.conventions:
            known = ", ".join(self.conventions)
            raise ValueError(f"convention must be one of {known}, got {convention!r}")
        self.weight, self.convention = weight, convention

    def generator_penalty(self, generator: nn.Module) -> Tensor | None:
        embedded = {
            id(p)
            for m in generator.modules()
            if isinstance(m, nn.Embedding)
            for p in m.parameters()
        }
        total: Tensor | None = None
        for parameter in generator.parameters():
            if parameter.dim() < 2 or id(parameter) in embedded or not parameter.requires_grad:
                continue
            w = parameter.float().flatten(1)
            gram = w @ w.T
            off_diagonal = gram - torch.diag_embed(gram.diagonal())  # W Wᵀ ⊙ (1 − I)
            term = off_diagonal.square().sum()
            total = term if total is None else total + term
        if total is None:
            return None
        return self.conventions[self.convention] * self.weight * total  # β‖WWᵀ⊙(1−I)‖²_F
