"""Parzen-window log-likelihood: held-out data under a Gaussian KDE of generated samples.

The number in Goodfellow et al. 2014's Table 1 (MNIST 225 ± 2, TFD 2057 ± 26 nats), by Breuleux
et al. 2011's method: σ by grid search on a validation set, then the mean log-likelihood of test
points ± its standard error. Theis et al. 2016 showed the estimate is unreliable in high
dimensions, so it is here to reproduce that table, not to rank models.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from gan_runner.data.module import resize_images, to_model_range
from gan_runner.errors import UserError
from gan_runner.metrics.base import count, gather_rows, gathered_fakes, rank_rows

log = logging.getLogger(__name__)

THEIS_WARNING = (
    "metrics=[parzen]: the Parzen-window log-likelihood is kept to reproduce Goodfellow et al. "
    "2014's table; Theis et al. 2016 found it unreliable (in high dimensions it can rank a "
    "model above the true distribution), so do not compare models with it"
)
# Fresh draws from a known mixture: a fixed seed so every run is scored on the same points.
REFERENCE_SEED = 2014


def log_densities(
    points: Tensor, centres: Tensor, sigmas: Tensor, batch_size: int | None = None, desc: str = ""
) -> Tensor:
    """log p_σ(x) in nats, (len(sigmas), len(points)), under a KDE with a kernel per centre."""
    points, centres = points.flatten(1).double(), centres.flatten(1).to(points).double()
    sigmas = sigmas.to(centres)
    n, dim = centres.shape
    # log p(x) = logsumexp_i(-|x-c_i|²/2σ²) - log n - d/2 log(2πσ²)
    norm = math.log(n) + 0.5 * dim * torch.log(2 * math.pi * sigmas**2)
    centre_sq = centres.square().sum(1)
    batch_size = batch_size or max(1, 2**21 // n)  # a few MB of distances per batch
    work = torch.empty(min(batch_size, len(points)), n, device=centres.device)
    out = []
    batches = points.split(batch_size)
    for batch in tqdm(batches, desc=desc, leave=False, disable=None if desc else True):
        # |x-c|² = |c|² - 2x·c + |x|², in float64 for accuracy at image dimensions, in place.
        sq = torch.addmm(centre_sq, batch, centres.T, alpha=-2)
        sq.add_(batch.square().sum(1, keepdim=True)).clamp_min_(0)
        nearest = sq.amin(1, keepdim=True)
        excess = sq.sub_(nearest).float()  # ≥ 0, so exp(-excess/2σ²) never overflows
        out.append(torch.stack([_log_sum_kernels(excess, nearest, s, work) for s in sigmas]))
    return torch.cat(out, dim=1) - norm[:, None]


def _log_sum_kernels(excess: Tensor, nearest: Tensor, sigma: Tensor, work: Tensor) -> Tensor:
    # logsumexp(-sq/2σ²) with the max factored out by hand, in one reused buffer: no per-σ
    # allocation of a batch × n matrix.
    work = work[: len(excess)]
    torch.mul(excess, float(-0.5 / sigma**2), out=work)
    return work.exp_().sum(1).double().log_() - nearest[:, 0] * (0.5 / sigma**2)


def select_sigma(validation: Tensor, centres: Tensor, sigmas: Tensor, **kw: Any) -> float:
    """The σ of the grid with the highest mean validation log-likelihood (Breuleux et al. 2011)."""
    return float(sigmas[log_densities(validation, centres, sigmas, **kw).mean(1).argmax()])


class ParzenWindow:
    """Parzen-window log-likelihood of test data (Goodfellow et al. 2014; Breuleux et al. 2011)."""

    def __init__(
        self,
        n_samples: int = 10_000,
        n_validation: int = 10_000,
        n_test: int = 10_000,
        log10_sigma_min: float = -1.0,
        log10_sigma_max: float = 0.0,
        n_sigmas: int = 10,
        batch_size: int = 500,  # generated samples per generator call
        unit_range_images: bool = True,
    ) -> None:
        for key, value in (("n_samples", n_samples), ("n_validation", n_validation)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if n_test < 2 or n_sigmas < 1 or log10_sigma_max < log10_sigma_min:
            raise ValueError("need n_test >= 2, n_sigmas >= 1 and log10_sigma_min <= max")
        self.n_samples, self.n_validation, self.n_test = n_samples, n_validation, n_test
        # Goodfellow et al. 2014 searched logspace(-1, 0, 10) on MNIST in [0, 1].
        self.sigmas = torch.logspace(
            log10_sigma_min, log10_sigma_max, n_sigmas, dtype=torch.float64
        )
        self.batch_size, self.unit_range_images = batch_size, unit_range_images
        self._held_out: dict[str, Any] = {}
        self._reference_points: tuple[Tensor, Tensor] | None = None
        self._warned = False

    @property
    def name(self) -> str:
        return f"parzen_{count(self.n_samples)}_test"

    @property
    def primary(self) -> str:
        """The number that picks the best checkpoint when no best_metric is named."""
        return self.name

    def names(self) -> list[str]:
        return [self.name, f"{self.name}_stderr", f"{self.name}_sigma"]

    def prepare(self, datamodule: Any, device: torch.device | str | None = None) -> None:
        """Warn once and load the held-out points (a missing test split fails here)."""
        if not self._warned:
            log.warning(THEIS_WARNING)
            self._warned = True
        if self._reference_points is None:  # loaded once: the same points at every evaluation
            validation, test, self._held_out = held_out(datamodule, self.n_validation, self.n_test)
            self._reference_points = (self._scaled(validation), self._scaled(test))

    def evaluate(
        self, module: Any, datamodule: Any, generator: torch.Generator
    ) -> dict[str, float]:
        self.prepare(datamodule)
        # The kernel centres are all n fakes on every rank; each rank scores its block of the
        # held-out points and the blocks are swapped, so every rank holds the same numbers.
        validation, test = (rank_rows(t).to(module.device) for t in self._reference_points)
        fake = gathered_fakes(module, self.n_samples, self.batch_size, generator)
        fake, show, grid = self._scaled(fake), module.global_rank == 0, self.sigmas
        valid_ll = log_densities(validation, fake, grid, desc="parzen σ" if show else "")
        sigma = float(grid[gather_rows(valid_ll.T).T.mean(1).argmax()])
        best = torch.tensor([sigma])
        ll = gather_rows(log_densities(test, fake, best, desc="parzen test" if show else "")[0])
        if show and len(grid) > 1 and sigma in (float(grid[0]), float(grid[-1])):
            log.warning("parzen: σ=%.3g is at the end of the grid; widen log10_sigma_*", sigma)
        return {
            self.name: float(ll.mean()),
            f"{self.name}_stderr": float(ll.std() / math.sqrt(len(ll))),
            f"{self.name}_sigma": sigma,
        }

    def provenance(self) -> dict[str, Any]:
        return {
            "method": "Parzen window (Goodfellow et al. 2014; Breuleux et al. 2011)",
            "caveat": "unreliable: Theis et al. 2016",
            "units": "nats per sample",
            "n_generated": self.n_samples,
            "sigma_grid": [float(s) for s in self.sigmas],
            "image_range": "[0, 1]" if self.unit_range_images else "[-1, 1]",
            **self._held_out,
            "torch": torch.__version__,
            "numpy": np.__version__,
        }

    def _scaled(self, samples: Tensor) -> Tensor:
        # Densities depend on the scale: the paper's MNIST pixels are in [0, 1], ours in [-1, 1].
        if samples.dim() > 2 and self.unit_range_images:
            samples = (samples + 1) / 2
        return samples.flatten(1).double()


def held_out(datamodule: Any, n_validation: int, n_test: int) -> tuple[Tensor, Tensor, dict]:
    """Validation and test points in model range, and where they came from.

    A known mixture gives fresh draws; an image set gives its test split and, as in Goodfellow
    et al. 2014 (MNIST train[50k:60k]), the last training images for validation.
    """
    source = datamodule.source
    if hasattr(source, "sample"):
        validation, _ = source.sample(n_validation, torch.Generator().manual_seed(REFERENCE_SEED))
        test, _ = source.sample(n_test, torch.Generator().manual_seed(REFERENCE_SEED + 1))
        where = f"fresh draws from {type(source).__name__} (seeds {REFERENCE_SEED}, +1)"
        return validation, test, {"validation": where, "test": where, "n_test": n_test}
    if "test" not in getattr(source, "splits", ()):
        raise UserError(
            f"metrics=[parzen] needs held-out data, but data.source ({type(source).__name__}) "
            "has no test split; use a 2D mixture or a data set with one (mnist, cifar10, ...)"
        )
    test_source = copy.copy(source)
    test_source.split = "test"
    test_data, train_data = test_source.load(), datamodule.data
    if not hasattr(test_data, "samples") or not hasattr(train_data, "samples"):
        raise UserError("metrics=[parzen] needs a data set held in memory (2D, MNIST/CIFAR-size)")
    test = _model_range(test_data.samples[:n_test], datamodule.shape)
    validation = to_model_range(train_data.samples[-n_validation:]).cpu()
    return (
        validation,
        test,
        {
            "validation": f"last {len(validation)} training samples (trained on; the paper's not)",
            "test": f"first {len(test)} samples of the test split",
            "n_test": len(test),
        },
    )


def _model_range(samples: Tensor, shape: list[int]) -> Tensor:
    if samples.dim() == 4:
        samples = resize_images(samples, shape[-1])
    return to_model_range(samples)
