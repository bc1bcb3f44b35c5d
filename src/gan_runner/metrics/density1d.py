"""Divergences between 1D data with a known density and a generator, by quadrature.

p_g is the generator's exact density when it has one (a Gaussian generator under latent=normal),
else a Gaussian kernel density estimate of n generated samples with Scott's bandwidth (as
scipy.stats.gaussian_kde). Both densities are evaluated in log space on one grid that resolves
each of them, and the divergences are integrated by the trapezoid rule: Jensen-Shannon (nats,
at most log 2; the headline), KL(data‖model) and KL(model‖data).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gan_runner.errors import UserError
from gan_runner.latent import Normal
from gan_runner.metrics.base import count, gathered_fakes

LogDensity = Callable[[Tensor], Tensor]
MODEL_DENSITIES = ("auto", "kde")
# Grid points per σ of the data's narrowest component, or over its range when it has no
# components. The trapezoid rule on a Gaussian converges exponentially in σ/spacing: 20 points
# per σ (and 4 per KDE bandwidth) leave quadrature errors far below the sampling noise.
POINTS_PER_SIGMA = 20
DATA_GRID_POINTS = 4097
KERNEL_SPACING = 4
UNIFORM_POINTS = 20_001


def scott_bandwidth(samples: Tensor) -> float:
    """σ̂·n^(-1/5): Scott's rule in 1D, scipy.stats.gaussian_kde's default."""
    n = samples.numel()
    std = float(samples.double().std()) if n > 1 else 0.0
    # A collapsed generator (all samples equal) still needs a kernel: a narrow one.
    return max(std, 1e-6 * max(1.0, float(samples.double().abs().max()))) * n ** (-0.2)


def kde_log_prob(samples: Tensor, bandwidth: float, chunk: int = 512) -> LogDensity:
    """log of (1/n) Σ_i N(x; x_i, h²), elementwise over a float64 x, in chunks of x."""
    centres = samples.flatten().double() / bandwidth
    norm = math.log(centres.numel()) + math.log(bandwidth) + 0.5 * math.log(2 * math.pi)

    def log_prob(x: Tensor) -> Tensor:
        parts = []
        for part in (x.flatten().double() / bandwidth).split(chunk):
            # logsumexp(-d²/2) with the nearest kernel factored out, in place: one buffer.
            sq = (part[:, None] - centres.to(part.device)).square_()
            nearest = sq.amin(1, keepdim=True)
            total = sq.sub_(nearest).mul_(-0.5).exp_().sum(1)
            parts.append(total.log_() - 0.5 * nearest[:, 0])
        return (torch.cat(parts) - norm).view(x.shape).to(x.dtype)

    return log_prob


@dataclass
class ModelDensity:
    """log p_g as a function, how it was had ('exact' or 'kde'), and the scale it varies on."""

    log_prob: LogDensity
    kind: str
    centre: float
    scale: float  # σ for the exact Gaussian, the bandwidth for a KDE
    low: float  # where p_g's mass is: [low, high]
    high: float


def model_density(
    net: Any, latent: Any, fake: Tensor, mode: str = "auto", bandwidth: float | None = None
) -> ModelDensity:
    """A generator's exact log-density when it has one and z ~ N(0, I), else a KDE of its
    samples `fake` (bandwidth: Scott's rule unless given)."""
    fake = fake.flatten().double().cpu()
    exact = mode == "auto" and hasattr(net, "log_prob") and isinstance(latent, Normal)
    if exact:
        mean, std = float(net.mean.detach()), float(net.log_std.detach().exp())
        return ModelDensity(net.log_prob, "exact", mean, std, mean - 12 * std, mean + 12 * std)
    h = bandwidth or scott_bandwidth(fake)
    low, high = float(fake.min()) - 8 * h, float(fake.max()) + 8 * h
    return ModelDensity(kde_log_prob(fake, h), "kde", float(fake.mean()), h, low, high)


def data_grid(source: Any, low: float, high: float) -> Tensor:
    """A uniform float64 grid over [low, high], POINTS_PER_SIGMA per σ of the narrowest
    component of a mixture source, else DATA_GRID_POINTS."""
    stds = getattr(source, "stds", None)
    points = DATA_GRID_POINTS
    if stds is not None:
        points = max(257, int(math.ceil((high - low) * POINTS_PER_SIGMA / float(min(stds)))) + 1)
    return torch.linspace(low, high, points, dtype=torch.float64)


def quadrature_grid(data: Tensor, model: ModelDensity) -> Tensor:
    """A sorted float64 grid over the data's and p_g's ranges, as fine as either needs.

    Uniform when that takes at most UNIFORM_POINTS (the trapezoid rule is then exact to
    rounding on Gaussians); else, as for a collapsed generator whose bandwidth is tiny beside
    the data's range, the data's grid joined with a fine one over p_g's own range (samples lie
    within √n σ̂ of each other, so that one stays under a few thousand points).
    """
    step = model.scale / (KERNEL_SPACING if model.kind == "kde" else POINTS_PER_SIGMA)
    low, high = min(float(data[0]), model.low), max(float(data[-1]), model.high)
    finest = min(step, float(data[1] - data[0]))
    points = int(math.ceil((high - low) / finest)) + 1
    if points <= UNIFORM_POINTS:
        return torch.linspace(low, high, points, dtype=torch.float64)
    points = min(int(math.ceil((model.high - model.low) / step)) + 1, 200_001)
    fine = torch.linspace(model.low, model.high, points, dtype=torch.float64)
    return torch.cat([data, fine]).unique()  # sorted


def _integral(x: Tensor, weight_log: Tensor, integrand: Tensor) -> Tensor:
    # ∫ e^{weight_log} · integrand, where a density that underflows to 0 contributes 0 (not nan).
    density = weight_log.exp()
    return torch.trapezoid(torch.where(density > 0, density * integrand, 0.0), x)


def divergences(x: Tensor, log_p: Tensor, log_q: Tensor) -> dict[str, float]:
    """JSD(P‖Q), KL(P‖Q) and KL(Q‖P) in nats by the trapezoid rule on grid x (log densities)."""
    log_m = torch.logaddexp(log_p, log_q) - math.log(2)  # M = (P + Q)/2
    jsd = 0.5 * _integral(x, log_p, log_p - log_m) + 0.5 * _integral(x, log_q, log_q - log_m)
    return {
        "jsd": float(jsd.clamp(0.0, math.log(2))),
        "kl_pq": float(_integral(x, log_p, log_p - log_q)),
        "kl_qp": float(_integral(x, log_q, log_q - log_p)),
    }


def optimal_discriminator(log_p_data: Tensor, log_p_model: Tensor) -> Tensor:
    """D*(x) = p_data / (p_data + p_g) = σ(log p_data − log p_g) (Goodfellow et al. 2014,
    Prop. 1), stable where both densities are tiny; nan where both are 0."""
    return torch.sigmoid(log_p_data - log_p_model)


def moments(x: Tensor, log_p: Tensor) -> tuple[float, float]:
    """Mean and standard deviation of a density on a grid, by quadrature."""
    mass = _integral(x, log_p, torch.ones_like(x))
    mean = _integral(x, log_p, x) / mass
    var = _integral(x, log_p, (x - mean) ** 2) / mass
    return float(mean), float(var.sqrt())


def check_density_source(datamodule: Any, who: str) -> Any:
    """The data source, if it is 1D with an exact log-density; else one line naming the fix."""
    source, shape = datamodule.source, list(datamodule.shape)
    if shape != [1] or not hasattr(source, "log_prob"):
        has = f"data.shape {shape}" if shape != [1] else f"{type(source).__name__} has no pdf"
        raise UserError(
            f"{who} needs 1D data with a known density, but {has}; use data=gauss1d or "
            "data=mixture1d, or another metric (metrics=[mixture] for 2D points)"
        )
    return source


def data_range(datamodule: Any) -> tuple[float, float]:
    """The training samples' range, widened by a quarter each side: gauss1d's 100k samples
    reach about ±4.4σ, so the grid ends near ±6.6σ, beyond which 1e-10 of the mass lies."""
    datamodule.setup()
    samples = datamodule.data.samples.detach().double().cpu()
    low, high = float(samples.min()), float(samples.max())
    pad = 0.25 * max(high - low, 1e-3)
    return low - pad, high + pad


class Density1D:
    """JSD, KL(data‖model) and KL(model‖data) between 1D data's exact density and the
    generator's (exact or KDE), with the samples' mean and std beside the data's."""

    def __init__(
        self,
        n_samples: int = 10_000,
        batch_size: int = 10_000,
        model_density: str = "auto",
        bandwidth: float | None = None,
    ) -> None:
        if n_samples < 2 or batch_size < 1:
            raise ValueError(f"need n_samples >= 2 and batch_size >= 1, got {n_samples}")
        if bandwidth is not None and bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, or null for Scott's rule; got {bandwidth}")
        self.bandwidth = bandwidth
        if model_density not in MODEL_DENSITIES:
            raise ValueError(
                f"model_density={model_density!r}: choose auto (the generator's exact pdf when "
                "it has one, else a KDE) or kde"
            )
        self.n_samples, self.batch_size, self.mode = n_samples, batch_size, model_density
        self.suffix = count(n_samples)
        self._data: tuple[Tensor, float, float] | None = None  # grid, mean, std
        self._used = "not evaluated yet"
        self._grid_points, self._scale = 0, math.nan

    @property
    def primary(self) -> str:
        return f"jsd_{self.suffix}"

    def names(self) -> list[str]:
        s = self.suffix
        return [
            f"jsd_{s}",
            f"kl_data_model_{s}",
            f"kl_model_data_{s}",
            f"mean_{s}",
            f"std_{s}",
            "mean_data",
            "std_data",
        ]

    def prepare(self, datamodule: Any, device: torch.device | str | None = None) -> None:
        """Refuse data without a density; find the data's range and moments once."""
        source = check_density_source(datamodule, "metrics=[density1d]")
        if self._data is None:
            x = data_grid(source, *data_range(datamodule))
            self._data = (x, *moments(x, source.log_prob(x)))

    def evaluate(
        self, module: Any, datamodule: Any, generator: torch.Generator
    ) -> dict[str, float]:
        self.prepare(datamodule)
        data_x, data_mean, data_std = self._data
        fake = gathered_fakes(module, self.n_samples, self.batch_size, generator)
        fake = fake.flatten().double().cpu()
        net = module.sampling_generator
        model = model_density(net, module.latent, fake, self.mode, self.bandwidth)
        x = quadrature_grid(data_x, model)
        values = divergences(x, datamodule.source.log_prob(x), model.log_prob(x))
        self._used, self._grid_points, self._scale = model.kind, x.numel(), model.scale
        s = self.suffix
        return {
            f"jsd_{s}": values["jsd"],
            f"kl_data_model_{s}": values["kl_pq"],
            f"kl_model_data_{s}": values["kl_qp"],
            f"mean_{s}": float(fake.mean()),
            f"std_{s}": float(fake.std()),
            "mean_data": data_mean,
            "std_data": data_std,
        }

    def provenance(self) -> dict[str, Any]:
        rule = "fixed" if self.bandwidth else "Scott's rule"
        used = {
            "exact": "the generator's exact pdf (z ~ N(0, I))",
            "kde": (
                f"Gaussian KDE of the generated samples, bandwidth {self._scale:.4g} ({rule})"
            ),
        }
        return {
            "method": "quadrature (trapezoid) of the data's exact density against the model's",
            "model_density": used.get(self._used, self._used),
            "units": "nats",
            "n_generated": self.n_samples,
            "data_range": [float(self._data[0][0]), float(self._data[0][-1])]
            if self._data
            else None,
            "grid_points": self._grid_points,
            "torch": torch.__version__,
            "numpy": np.__version__,
        }
