"""Latent code distributions p(z): sampling, truncation and the geometry of interpolation."""

from __future__ import annotations

import torch
from torch import Tensor


class Normal:
    """z ~ N(0, I), the common choice since DCGAN-era follow-ups."""

    # Codes concentrate near a sphere of radius √d, so interpolate along great circles (slerp).
    spherical = True

    def sample(self, n: int, dim: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, dim, generator=generator, device=generator.device)

    def truncated(self, n: int, dim: int, psi: float, generator: torch.Generator) -> Tensor:
        """The truncation trick of Brock et al. 2019 (BigGAN): components limited to [-ψ, ψ]."""
        if psi <= 0:
            raise ValueError(f"truncation={psi} is not valid for latent=Normal: it must be > 0")
        # The inverse CDF of N(0, 1) on U(Φ(-ψ), Φ(ψ)): the distribution BigGAN's resampling of
        # |z| > ψ converges to, in one draw however small ψ is.
        edge = torch.special.ndtr(torch.tensor(psi, dtype=torch.float64))
        u = torch.rand(n, dim, generator=generator, dtype=torch.float64, device=generator.device)
        u = u * (2 * edge - 1) + 1 - edge
        return torch.special.ndtri(u).clamp(-psi, psi).float()


class Uniform:
    """z ~ U(-1, 1)^d, as in Radford et al. 2016 (DCGAN)."""

    spherical = False  # a cube: straight lines stay inside the support

    def sample(self, n: int, dim: int, generator: torch.Generator) -> Tensor:
        return torch.rand(n, dim, generator=generator, device=generator.device) * 2 - 1

    def truncated(self, n: int, dim: int, psi: float, generator: torch.Generator) -> Tensor:
        """Codes shrunk toward the centre of the cube by ψ, the uniform analogue of truncation."""
        if not 0 < psi <= 1:
            raise ValueError(
                f"truncation={psi} is not valid for latent=Uniform: it must be in (0, 1]"
            )
        return psi * self.sample(n, dim, generator)
