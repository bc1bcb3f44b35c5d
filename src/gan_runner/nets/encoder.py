"""An MLP encoder x -> z and a joint critic D(x, z), the networks BiGAN and ALI add to a GAN."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gan_runner.nets.layers import CriticOutput, norm_1d
from gan_runner.nets.mlp import _mlp, critic_activation


class MLPEncoder(nn.Module):
    """The inference network E: x -> z of BiGAN (Donahue et al. 2017) and ALI (Dumoulin et al.
    2017), an MLP with leaky ReLUs and a linear output.

    Deterministic by default (BiGAN). `stochastic: true` is ALI's q(z|x): it outputs μ(x) and
    log σ(x) and returns z = μ + σ ⊙ ε, ε ~ N(0, I) from torch's global stream (in eval mode μ).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        z_dim: int,
        hidden: Sequence[int] = (512, 512),
        norm: str = "none",
        negative_slope: float = 0.2,
        stochastic: bool = False,
    ) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        self.z_dim, self.stochastic = z_dim, stochastic
        in_dim = math.prod(data_shape)
        layers = _mlp([in_dim, *hidden], lambda f: norm_1d(norm, f), nn.LeakyReLU(negative_slope))
        width = hidden[-1] if hidden else in_dim
        layers.append(nn.Linear(width, 2 * z_dim if stochastic else z_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x.flatten(1))
        if not self.stochastic:
            return out
        mean, log_std = out.chunk(2, dim=1)
        if not self.training:
            return mean
        return mean + log_std.exp() * torch.randn_like(mean)  # z = μ + σ ⊙ ε


class JointCritic(nn.Module):
    """BiGAN/ALI's discriminator on (x, z) pairs (Dumoulin et al. 2017, Appendix A): an x path
    and a z path, their features concatenated and scored by a joint path, as an MLP.

    `outputs(x, labels=None, z=...)` and `forward(x, labels=None, z=...)` need the latent paired
    with x: E(x) for data, the prior's z for generated samples. `takes_latent` says so to games.
    """

    takes_latent = True

    def __init__(
        self,
        data_shape: Sequence[int],
        z_dim: int,
        x_hidden: Sequence[int] = (512,),
        z_hidden: Sequence[int] = (512,),
        joint_hidden: Sequence[int] = (1024,),
        negative_slope: float = 0.2,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if num_classes:
            raise ValueError(
                f"num_classes={num_classes}: the joint critic is unconditional; set num_classes=0"
            )
        act = critic_activation("leaky_relu", negative_slope)
        x_dim = math.prod(data_shape)
        self.x_path = nn.Sequential(*_mlp([x_dim, *x_hidden], lambda f: nn.Identity(), act))
        self.z_path = nn.Sequential(*_mlp([z_dim, *z_hidden], lambda f: nn.Identity(), act))
        joined = (x_hidden[-1] if x_hidden else x_dim) + (z_hidden[-1] if z_hidden else z_dim)
        self.joint = nn.Sequential(*_mlp([joined, *joint_hidden], lambda f: nn.Identity(), act))
        self.score = nn.Linear(joint_hidden[-1] if joint_hidden else joined, 1)

    def outputs(
        self, x: Tensor, labels: Tensor | None = None, z: Tensor | None = None
    ) -> CriticOutput:
        if z is None:
            raise ValueError("the joint critic scores (x, z) pairs; pass z= beside x")
        h = self.joint(torch.cat([self.x_path(x.flatten(1)), self.z_path(z.flatten(1))], dim=1))
        return CriticOutput(self.score(h).squeeze(1), h)

    def forward(self, x: Tensor, labels: Tensor | None = None, z: Tensor | None = None) -> Tensor:
        return self.outputs(x, labels, z).scores
