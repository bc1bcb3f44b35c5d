"""A Gaussian generator with an exact density: the known p_g of the theory checks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class GaussianGenerator(nn.Module):
    """x = μ + σ·z[:, :d], one μ and σ per data dimension: the "tiny neural sampler" of
    Nowozin et al. 2016's Gaussian fit, and a frozen, known p_g for Goodfellow et al. 2014's
    optimal discriminator.

    σ = exp(log σ) keeps it positive under gradient steps. `trainable: false` freezes both
    parameters (requires_grad off), so the generator's phase is skipped and only the critic
    trains. `pdf` and `log_prob` are its distribution's when z ~ N(0, I) (latent=normal).
    """

    def __init__(
        self,
        z_dim: int,
        data_shape: Sequence[int],
        mean: float = 0.0,
        std: float = 1.0,
        trainable: bool = True,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.data_shape = tuple(int(size) for size in data_shape)
        dim = math.prod(self.data_shape)
        if z_dim < dim:
            raise ValueError(
                f"z_dim={z_dim} is smaller than the data's {dim} dimensions; a Gaussian "
                f"generator needs one latent per dimension: set z_dim >= {dim}"
            )
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        if num_classes:
            raise ValueError(
                f"num_classes={num_classes}, but a Gaussian generator has no class input; "
                "set num_classes=0 or choose an MLP generator (arch=mlp_1d)"
            )
        self.mean = nn.Parameter(torch.full((dim,), float(mean)))
        self.log_std = nn.Parameter(torch.full((dim,), math.log(std)))
        self.requires_grad_(trainable)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        x = self.mean + self.log_std.exp() * z[:, : self.mean.numel()]
        return x.view(z.shape[0], *self.data_shape)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p_g(x) in x's dtype: elementwise for 1D data (x of any shape), else per point of
        shape (N, *data_shape), summed over the dimensions."""
        mean, log_std = (p.detach().to(x.device, x.dtype) for p in (self.mean, self.log_std))
        points = x.unsqueeze(-1) if mean.numel() == 1 else x.flatten(1)
        z = (points - mean) * (-log_std).exp()
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def pdf(self, x: Tensor) -> Tensor:
        """p_g(x), as `log_prob` lays it out."""
        return self.log_prob(x).exp()
