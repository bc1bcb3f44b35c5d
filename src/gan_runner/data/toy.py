"""Synthetic data: 2D Gaussian mixtures for mode-collapse studies (PacGAN protocol, Lin et al.
2018) and 1D Gaussians and mixtures with exact densities for the theory checks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from gan_runner.data.module import TensorData


class GaussianMixture2D:
    """Equal-weight isotropic Gaussians at fixed means in the plane.

    With `num_classes` equal to the number of modes, each point's label is the index of the
    Gaussian that drew it (class-conditional runs: one class per mode); with 0 it is unlabelled.
    """

    def __init__(
        self, means: Tensor, std: float, n_samples: int, seed: int, num_classes: int = 0
    ) -> None:
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if num_classes not in (0, len(means)):
            raise ValueError(
                f"data.num_classes={num_classes}, but the mixture's labels are its {len(means)} "
                f"mode indices; set data.num_classes={len(means)} (one class per mode) or 0"
            )
        self.means, self.std, self.n_samples, self.seed = means, std, n_samples, seed
        self.num_classes = num_classes

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        modes = torch.randint(len(self.means), (n,), generator=generator)
        points = self.means[modes] + self.std * torch.randn(n, 2, generator=generator)
        return points, modes

    def load(self, resolution: int | None = None) -> TensorData:
        # The same draws labelled or not: labels never change an unconditional run's points.
        points, modes = self.sample(self.n_samples, torch.Generator().manual_seed(self.seed))
        return TensorData(points, modes if self.num_classes else None)


class GaussianRing(GaussianMixture2D):
    """Gaussians with means (r cos 2πi/n, r sin 2πi/n), i = 0..n-1 (ring8: n=8, r=1, std 0.01)."""

    def __init__(
        self,
        n_modes: int = 8,
        radius: float = 1.0,
        std: float = 0.01,
        n_samples: int = 100_000,
        seed: int = 0,
        num_classes: int = 0,
    ) -> None:
        # i/n (not linspace(0, 2π, n), which repeats its first centre: VEEGAN's 7-mode ring)
        angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
        means = torch.stack([radius * angles.cos(), radius * angles.sin()], dim=1).float()
        super().__init__(means, std, n_samples, seed, num_classes)


class GaussianGrid(GaussianMixture2D):
    """Gaussians on a square grid (grid25: side 5, spacing 2, std 0.05)."""

    def __init__(
        self,
        side: int = 5,
        spacing: float = 2.0,
        std: float = 0.05,
        n_samples: int = 100_000,
        seed: int = 0,
        num_classes: int = 0,
    ) -> None:
        axis = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2) * spacing
        means = torch.cartesian_prod(axis, axis)
        super().__init__(means, std, n_samples, seed, num_classes)


class Mixture1D:
    """A weighted mixture of 1D Gaussians with an exact density: the theory checks' data.

    `load()` gives unlabelled points of shape (n, 1); `sample(n, generator)` gives fresh ones
    with each point's component index, as the 2D mixtures do; `pdf(x)` and `log_prob(x)` are
    elementwise over a tensor of any shape, in its dtype (float64 for quadrature).
    """

    def __init__(
        self,
        weights: Sequence[float],
        means: Sequence[float],
        stds: Sequence[float],
        n_samples: int = 100_000,
        seed: int = 0,
    ) -> None:
        weights, means, stds = (list(map(float, v)) for v in (weights, means, stds))
        if not means or not len(weights) == len(means) == len(stds):
            raise ValueError(
                f"weights, means and stds need one entry per component and equal lengths, got "
                f"{len(weights)}, {len(means)} and {len(stds)}"
            )
        if min(stds) <= 0:
            raise ValueError(f"stds must all be > 0, got {stds}")
        if min(weights) <= 0:
            raise ValueError(f"weights must all be > 0 (they are normalized), got {weights}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        total = sum(weights)
        self.weights = torch.tensor([w / total for w in weights], dtype=torch.float64)
        self.means = torch.tensor(means, dtype=torch.float64)
        self.stds = torch.tensor(stds, dtype=torch.float64)
        self.n_samples, self.seed = n_samples, seed

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        components = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, generator=generator, dtype=torch.float64)
        points = self.means[components] + self.stds[components] * noise
        return points.float().unsqueeze(1), components

    def load(self, resolution: int | None = None) -> TensorData:
        points, _ = self.sample(self.n_samples, torch.Generator().manual_seed(self.seed))
        return TensorData(points)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x), elementwise: logsumexp_k [log w_k + log N(x; μ_k, σ_k²)]."""
        weights, means, stds = (
            v.to(x.device, x.dtype) for v in (self.weights, self.means, self.stds)
        )
        z = (x.unsqueeze(-1) - means) / stds
        per_component = weights.log() - stds.log() - 0.5 * math.log(2 * math.pi) - 0.5 * z**2
        return per_component.logsumexp(-1)

    def pdf(self, x: Tensor) -> Tensor:
        """p(x), elementwise."""
        return self.log_prob(x).exp()

    @property
    def mean(self) -> float:
        return float((self.weights * self.means).sum())

    @property
    def std(self) -> float:
        second = (self.weights * (self.stds**2 + self.means**2)).sum()
        return float((second - self.mean**2).sqrt())


class Gaussian1D(Mixture1D):
    """One Gaussian N(mean, std²) on the line (data=gauss1d)."""

    def __init__(
        self, mean: float = 0.0, std: float = 1.0, n_samples: int = 100_000, seed: int = 0
    ) -> None:
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        super().__init__([1.0], [mean], [std], n_samples, seed)
