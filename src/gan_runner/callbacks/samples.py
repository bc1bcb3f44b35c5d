"""Fixed-noise sample grids (images) or scatter plots over the data (2D) every N G steps."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torchvision.utils import make_grid

from gan_runner.loggers import log_image
from gan_runner.plots import save_png, scatter_over_data


def to_uint8_grid(images: Tensor, nrow: int = 8) -> Tensor:
    """A (3, H, W) uint8 grid of [-1, 1] images, clamped and rounded (never wrapped)."""
    grid = make_grid(images.float().clamp(-1, 1), nrow=nrow, padding=2, pad_value=1.0)
    return ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class SampleGrid(pl.Callback):
    """Writes samples/g<steps>.png from the fixed latent batch, and logs it as an image."""

    def __init__(self, dirpath: str, every: int = 500, n_scatter: int = 2500) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.dirpath, self.every, self.n_scatter = Path(dirpath), every, n_scatter
        self.last_path: Path | None = None
        self._drawn_at = -1  # the generator step of the last grid, so none is drawn twice

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        g_steps = pl_module.counters.g_steps
        if g_steps and g_steps % self.every == 0 and g_steps != self._drawn_at:
            self.draw(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._drawn_at != pl_module.counters.g_steps:
            self.draw(trainer, pl_module)

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drawn_at = g_steps = pl_module.counters.g_steps
        if trainer.global_rank != 0:
            return
        path = self.dirpath / f"g{g_steps:07d}.png"
        samples = pl_module.fixed_samples()
        if samples.dim() == 2:  # 2D data: a scatter of many samples over the real distribution
            image = self._scatter(trainer, pl_module, path)
        else:
            image = to_uint8_grid(samples.cpu())
            save_png(image, path)
        self.last_path = path
        log_image(trainer.loggers, "samples", image, g_steps)

    def _scatter(self, trainer, pl_module, path: Path) -> Tensor:
        generator = torch.Generator(device=pl_module.device).manual_seed(pl_module.seed)
        z, labels = pl_module.game.draw_latent(pl_module, self.n_scatter, generator)
        fake = pl_module.sample(z, labels).cpu()
        data = trainer.datamodule.data.samples[: self.n_scatter].float().cpu()
        means = getattr(trainer.datamodule.source, "means", None)
        return scatter_over_data(
            fake, data, means, path, title=f"g_steps={pl_module.counters.g_steps}"
        )
