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


class GaussianMixture:
    """z ~ (1/K) Σₖ N(μₖ, σ² I): K separate islands of latent space, equally likely.

    A generator is continuous, so a connected latent such as N(0, I) must put some of its mass on
    the paths between disconnected data modes (Khayatkhoei et al. 2018, "Disconnected Manifold
    Learning for Generative Adversarial Networks", NeurIPS, arXiv:1806.00880). With islands the
    generator can send neighbouring ones to different modes and cross the gap where no code
    lands. This is DeLiGAN's mixture prior (Gurumurthy et al. 2017, arXiv:1706.02071) with the
    means fixed instead of learned. The means are drawn once from N(0, I) by `seed`, which is not
    the run's seed: every run, checkpoint and gan-sample call sees the same islands. `std` must
    be small beside the gaps between means (about 0.7 for 100 means in 4 dimensions) and
    `components` at least the number of modes.
    """

    spherical = False  # a straight line between two islands crosses the gap, as a slerp would

    def __init__(self, components: int = 100, std: float = 0.05, seed: int = 0) -> None:
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise ValueError(f"components must be an integer >= 1, got {components!r}")
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std!r}")
        self.components, self.std, self.seed = components, float(std), seed
        self._means: dict[tuple[int, torch.device], Tensor] = {}

    def means(self, dim: int, device: torch.device | str = "cpu") -> Tensor:
        """The K island centres in a `dim`-dimensional latent, the same for every caller."""
        key = (dim, torch.device(device))
        if key not in self._means:
            drawn = torch.randn(
                self.components, dim, generator=torch.Generator().manual_seed(self.seed)
            )
            self._means[key] = drawn.to(device)
        return self._means[key]

    def _centres(self, n: int, dim: int, generator: torch.Generator) -> Tensor:
        island = torch.randint(self.components, (n,), generator=generator, device=generator.device)
        return self.means(dim, generator.device)[island]

    def sample(self, n: int, dim: int, generator: torch.Generator) -> Tensor:
        centres = self._centres(n, dim, generator)
        return centres + self.std * torch.randn(
            n, dim, generator=generator, device=generator.device
        )

    def truncated(self, n: int, dim: int, psi: float, generator: torch.Generator) -> Tensor:
        """Every island truncated as latent=Normal truncates: components of z - μ within ψσ."""
        if psi <= 0:
            raise ValueError(
                f"truncation={psi} is not valid for latent=GaussianMixture: it must be > 0"
            )
        centres = self._centres(n, dim, generator)
        return centres + self.std * Normal().truncated(n, dim, psi, generator).to(centres)
