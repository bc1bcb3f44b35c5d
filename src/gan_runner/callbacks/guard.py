"""A divergence guard: non-finite losses or weights stop the run, or roll it back."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from gan_runner.errors import UserError

log = logging.getLogger(__name__)
ACTIONS = ("stop", "rollback")


class Diverged(UserError):
    """Training produced a non-finite loss or weight and the guard stopped it."""


class DivergenceGuard(pl.Callback):
    """Watches every step's losses (on the device, no host sync) and checks them with the
    weights every `every` generator steps.

    `action=stop` ends the run with a line naming the loss and the generator steps; the last
    checkpoint stays as it was (GStepCheckpoint never writes non-finite weights).
    `action=rollback` reloads `<dirpath>/last.ckpt` (weights, EMA, optimizers, schedules,
    counters and random state), multiplies every learning rate by `lr_factor` and goes on, at
    most `max_rollbacks` times. The lowered rates are saved with the optimizers, so a resume
    keeps them. Checks are all-reduced under DDP so every rank takes the same branch.
    """

    def __init__(
        self,
        dirpath: str,
        action: str = "stop",
        every: int = 50,
        lr_factor: float = 0.5,
        max_rollbacks: int = 3,
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not 0 < lr_factor < 1:
            raise ValueError(f"lr_factor must be in (0, 1), got {lr_factor}")
        self.dirpath, self.action, self.every = Path(dirpath), action, every
        self.lr_factor, self.max_rollbacks = lr_factor, max_rollbacks
        self.rollbacks = 0
        self._finite: Tensor | None = None  # every loss finite since the last check
        self._window_start = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        losses = pl_module.last_batch.losses
        if losses:  # three small device ops per batch, no host sync
            finite = torch.isfinite(torch.stack([v.float() for v in losses.values()])).all()
            self._finite = finite if self._finite is None else self._finite & finite
        g_steps = pl_module.counters.g_steps
        if not pl_module.last_batch.generator_stepped or g_steps % self.every:
            return
        bad = self._non_finite(pl_module, losses)
        if trainer.world_size > 1:
            bad_anywhere = trainer.strategy.reduce_boolean_decision(bool(bad), all=False)
            bad = bad or ("a loss or weight on another rank" if bad_anywhere else "")
        window = (self._window_start, g_steps)
        self._finite = None
        self._window_start = g_steps
        if bad:
            self._diverged(trainer, pl_module, bad, window)

    def _non_finite(self, pl_module: pl.LightningModule, losses: dict[str, Tensor]) -> str:
        """What went non-finite since the last check, or '' (one host sync)."""
        params = [p for p in pl_module.parameters() if p.requires_grad]
        weights = torch.stack([torch.isfinite(p).all() for p in params]).all()
        seen = self._finite if self._finite is not None else weights
        now = [torch.isfinite(v).all() for v in losses.values()]
        flags = torch.stack([seen, weights, *now]).cpu().tolist()
        if all(flags):
            return ""
        # Name the first loss still non-finite now; one that recovered is just "a loss".
        named = [f"train/{n}" for n, ok in zip(losses, flags[2:]) if not ok]
        if named:
            return named[0]
        return "a loss" if not flags[0] else "the weights"

    def _diverged(self, trainer, pl_module, what: str, window: tuple[int, int]) -> None:
        where = f"{what} became non-finite between g_steps={window[0]} and {window[1]}"
        last = self.dirpath / "last.ckpt"
        if self.action == "stop" or self.rollbacks >= self.max_rollbacks:
            reason = "" if self.action == "stop" else f" after {self.rollbacks} rollbacks"
            kept = f"; the last good checkpoint is {last}" if last.is_file() else ""
            raise Diverged(
                f"training diverged: {where}{reason}{kept}; lower the learning rates, add a "
                "gradient penalty or grad_clip, or set callbacks.guard.action=rollback"
            )
        if not last.is_file():
            raise Diverged(
                f"training diverged: {where}, and there is no checkpoint to roll back to yet "
                "(callbacks.checkpoint.every is the rollback distance); lower the learning rates"
            )
        self._roll_back(trainer, pl_module, last)
        self._window_start = pl_module.counters.g_steps
        log.warning(
            "%s: rolled back to g_steps=%d (%s) with learning rates x%g (rollback %d of %d)",
            where,
            pl_module.counters.g_steps,
            last,
            self.lr_factor,
            self.rollbacks,
            self.max_rollbacks,
        )

    def _roll_back(self, trainer: pl.Trainer, pl_module: pl.LightningModule, last: Path) -> None:
        checkpoint = torch.load(last, map_location=pl_module.device, weights_only=True)
        pl_module.load_state_dict(checkpoint["state_dict"])
        for optimizer, state in zip(trainer.optimizers, checkpoint["optimizer_states"]):
            optimizer.load_state_dict(state)
        for config, state in zip(trainer.lr_scheduler_configs, checkpoint["lr_schedulers"]):
            config.scheduler.load_state_dict(state)
        pl_module.on_load_checkpoint(checkpoint)  # counters, noise and global random state
        self.rollbacks += 1
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_factor
        for config in trainer.lr_scheduler_configs:  # schedules recompute lr from base_lrs
            scheduler = config.scheduler
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * self.lr_factor for lr in scheduler.base_lrs]
        for logger in trainer.loggers:
            logger.log_metrics(
                {"train/rollbacks": self.rollbacks}, step=pl_module.counters.g_steps
            )

    def state_dict(self) -> dict[str, Any]:
        return {"rollbacks": self.rollbacks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rollbacks = int(state_dict.get("rollbacks", 0))
