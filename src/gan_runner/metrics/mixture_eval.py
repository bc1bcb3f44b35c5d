"""The 2D mode protocol as an Evaluation: modes, HQ%, reverse KL and the score that ranks them
(all modes, then HQ%, then rKL), with a scatter plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gan_runner.errors import UserError
from gan_runner.loggers import log_image
from gan_runner.metrics.base import count, gathered_fakes
from gan_runner.metrics.mixture import HQ_TOLERANCE, ModeStats, mode_statistics, ranking_score
from gan_runner.plots import scatter_over_data


class MixtureEvaluation:
    """Modes covered, HQ% and reverse KL of generated 2D samples (PacGAN, Lin et al. 2018).

    Also logs `score_<n>`, `ranking_score` of the three: the headline (`primary`) that picks the
    best checkpoint, so that it is the one with all modes first, then the highest HQ% (to
    `hq_tolerance` points), then the lowest rKL. Reverse KL alone prefers an early generator
    whose spread-out cloud touches every mode evenly at a low HQ%.
    """

    def __init__(
        self,
        n_samples: int = 2500,
        n_std: float = 3.0,
        batch_size: int = 2500,
        scatter_dir: str | None = None,
        hq_tolerance: float = HQ_TOLERANCE,
    ) -> None:
        if n_samples < 1 or batch_size < 1:
            raise ValueError(
                f"n_samples and batch_size must be >= 1, got {n_samples}, {batch_size}"
            )
        if n_std <= 0:
            raise ValueError(f"n_std must be > 0, got {n_std}")
        if not 0 < hq_tolerance <= 100:
            raise ValueError(f"hq_tolerance must be in (0, 100] points, got {hq_tolerance}")
        self.hq_tolerance = hq_tolerance
        self.n_samples, self.n_std, self.batch_size = n_samples, n_std, batch_size
        self.scatter_dir = Path(scatter_dir) if scatter_dir else None
        self._mixture: dict[str, Any] = {}
        # The protocol in every name: sample count, and the HQ radius unless PacGAN's 3 std.
        self.suffix = count(n_samples) + ("" if n_std == 3.0 else f"_{n_std:g}std")
        # The score's own setting too, unless the default tolerance of 1 HQ point.
        tolerance = "" if hq_tolerance == HQ_TOLERANCE else f"_hqtol{hq_tolerance:g}"
        self.score_name = f"score_{self.suffix}{tolerance}"

    @property
    def primary(self) -> str:
        """The number that picks the best checkpoint when no best_metric is named: the score."""
        return self.score_name

    def names(self) -> list[str]:
        """modes, HQ% and rKL as PacGAN reports them, then the score that ranks them."""
        protocol = [f"{m}_{self.suffix}" for m in ("modes", "hq_percent", "rkl")]
        return [*protocol, self.score_name]

    def prepare(self, datamodule: Any, device: torch.device | str | None = None) -> None:
        """Check the data is a known mixture before training, not at the first evaluation."""
        source = _mixture(datamodule)
        self._mixture = {
            "mixture": type(source).__name__,
            "n_modes": len(source.means),
            "std": float(source.std),
        }

    def evaluate(
        self, module: Any, datamodule: Any, generator: torch.Generator
    ) -> dict[str, float]:
        self.prepare(datamodule)
        source = datamodule.source
        # Every rank scores all n samples (its share plus the others'): the same value on each.
        fake = gathered_fakes(module, self.n_samples, self.batch_size, generator).cpu()
        stats = mode_statistics(fake, source.means, source.std, self.n_std)
        if self.scatter_dir is not None and module.global_rank == 0:
            self._draw(module, datamodule, fake, stats)
        return self.scores(stats)

    def scores(self, stats: ModeStats) -> dict[str, float]:
        """The logged values of one sample set's statistics, named as `names()`."""
        modes, hq, rkl, score = self.names()
        return {
            modes: float(stats.modes),
            hq: 100.0 * stats.hq_fraction,
            rkl: stats.reverse_kl,
            score: ranking_score(stats, self.hq_tolerance),
        }

    def provenance(self) -> dict[str, Any]:
        return {
            "protocol": "PacGAN Table 1 (Lin et al. 2018)",
            "n_samples": self.n_samples,
            "high_quality_within_std": self.n_std,
            "reverse_kl": "KL(HQ mode histogram ‖ uniform), nats",
            "score": (
                f"1000·modes + t·floor(HQ%/t) + (t/2)·(1 − rKL/ln K), t = {self.hq_tolerance:g}"
                " HQ points: all modes, then HQ%, then rKL"
            ),
            **self._mixture,
            "torch": torch.__version__,
        }

    def _draw(self, module: Any, datamodule: Any, fake: Tensor, stats: ModeStats) -> None:
        g_steps = module.counters.g_steps
        # The live generator's plot must not overwrite the EMA generator's.
        live = getattr(module, "generator_ema", None) is not None and (
            module.sampling_generator is module.generator
        )
        name = f"eval_live_g{g_steps:07d}.png" if live else f"eval_g{g_steps:07d}.png"
        real = datamodule.data.samples[: self.n_samples].float().cpu()
        means = datamodule.source.means
        title = f"g_steps={g_steps}{' (live)' if live else ''}: {stats}"
        image = scatter_over_data(fake, real, means, self.scatter_dir / name, title=title)
        key = "val_live/mode_scatter" if live else "val/mode_scatter"
        log_image(getattr(module, "loggers", []), key, image, g_steps)


def _mixture(datamodule: Any) -> Any:
    source = getattr(datamodule, "source", None)
    if not hasattr(source, "means") or not hasattr(source, "std"):
        raise UserError(
            f"metrics=[mixture] scores 2D Gaussian mixtures, but data.source is "
            f"{type(source).__name__}; use data=ring8 or data=grid25, or drop mixture from metrics"
        )
    return source
