"""Latent code distributions p(z)."""

from __future__ import annotations

import torch
from torch import Tensor


class Normal:
    """z ~ N(0, I), the common choice since DCGAN-era follow-ups."""

    def sample(self, n: int, dim: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, dim, generator=generator, device=generator.device)


class Uniform:
    """z ~ U(-1, 1)^d, as in Radford et al. 2016 (DCGAN)."""

    def sample(self, n: int, dim: int, generator: torch.Generator) -> Tensor:
        return torch.rand(n, dim, generator=generator, device=generator.device) * 2 - 1
