"""Exponential moving average of the generator's weights (Karras et al. 2018/2020)."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import torch


class GeneratorEMA(pl.Callback):
    """Keeps `generator_ema`, a G-only weight average with a half-life measured in images.

    beta = 0.5 ** (batch / half_life_images): the same averaging horizon at any batch size.
    With `rampup`, the half-life is at most `rampup` × images seen, as in StyleGAN2-ADA, so early
    samples are not dominated by the random initialization. Buffers (BatchNorm statistics,
    spectral-norm vectors) are copied, never averaged. Before `start_g_steps` generator steps the
    average is a copy of G (BigGAN-PyTorch's `ema_start`).
    """

    def __init__(
        self, half_life_kimg: float = 10.0, rampup: float | None = 0.05, start_g_steps: int = 0
    ) -> None:
        if start_g_steps < 0:
            raise ValueError(f"start_g_steps must be >= 0, got {start_g_steps}")
        self.start_g_steps = start_g_steps
        if half_life_kimg <= 0:
            raise ValueError(f"half_life_kimg must be > 0, got {half_life_kimg}")
        if rampup is not None and rampup <= 0:
            raise ValueError(f"rampup must be > 0 or null, got {rampup}")
        self.half_life_kimg, self.rampup = half_life_kimg, rampup
        self._g_steps_seen = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # A submodule with no gradients: saved in the checkpoint, ignored by DDP and optimizers.
        if getattr(pl_module, "generator_ema", None) is None:
            ema = copy.deepcopy(pl_module.generator).eval().requires_grad_(False)
            pl_module.generator_ema = ema

    def beta(self, batch_images: int, images_seen: int) -> float:
        half_life = self.half_life_kimg * 1000
        if self.rampup is not None:
            half_life = min(half_life, images_seen * self.rampup)
        return 0.5 ** (batch_images / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, pl_module: pl.LightningModule, beta: float) -> None:
        live, ema = pl_module.generator, pl_module.generator_ema
        for p_ema, p in zip(ema.parameters(), live.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - beta)  # p_ema ← beta p_ema + (1-beta) p
        for b_ema, b in zip(ema.buffers(), live.buffers()):
            b_ema.copy_(b)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        g_steps = pl_module.counters.g_steps
        if g_steps == self._g_steps_seen:
            return  # no generator step this batch
        self._g_steps_seen = g_steps
        # The module's count: under train.batches_per_step > 1, `batch` holds the whole group.
        last = getattr(pl_module, "last_batch", None)
        batch_images = (last.images if last is not None else 0) or (
            batch["samples"].shape[0] * trainer.world_size
        )
        # One update per G step, so the ramp-up counts G-side images too (not D's, which
        # n_critic multiplies).
        beta = self.beta(batch_images, g_steps * batch_images)
        self.update(pl_module, 0.0 if g_steps <= self.start_g_steps else beta)

    def on_train_start(self, trainer, pl_module) -> None:
        self._g_steps_seen = pl_module.counters.g_steps
