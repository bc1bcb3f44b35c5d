"""Checkpoints scheduled in generator steps and written atomically."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the same folder, fsyncs, then renames over the target.

    A crash mid-write leaves the previous checkpoint intact (Lightning's own save truncates the
    target first).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def weights_are_finite(trainer: pl.Trainer) -> bool:
    """Whether every weight of the module is finite on every rank (one host sync)."""
    params = list(trainer.lightning_module.parameters())
    finite = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
    return trainer.strategy.reduce_boolean_decision(finite, all=True)


class GStepCheckpoint(pl.Callback):
    """Saves last.ckpt every `every` generator steps and at the end; g<steps>.ckpt if asked."""

    def __init__(self, dirpath: str, every: int = 1000, keep_periodic: bool = True) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.dirpath, self.every, self.keep_periodic = Path(dirpath), every, keep_periodic
        self._saved_at = -1

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def save(self, trainer: pl.Trainer, g_steps: int) -> None:
        self._saved_at = g_steps
        if not weights_are_finite(trainer):
            # The last good checkpoint is what a divergence rollback or a resume goes back to.
            log.warning(
                "g_steps=%d: weights are not finite; keeping the previous checkpoint", g_steps
            )
            return
        # Full state (optimizers, callbacks, loops): everything an exact resume needs.
        trainer.save_checkpoint(self.last_path, weights_only=False)
        if self.keep_periodic:
            trainer.save_checkpoint(self.dirpath / f"g{g_steps:07d}.ckpt", weights_only=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The run's last batch saves here too: after on_train_end Lightning has closed the
        # epoch, and a run extended from that state would start a new data order.
        g_steps = pl_module.counters.g_steps
        due = g_steps % self.every == 0 or trainer.should_stop
        if g_steps and due and g_steps != self._saved_at:
            self.save(trainer, g_steps)

    def on_train_end(self, trainer, pl_module) -> None:
        # A stop that no earlier callback announced (max_steps, a benchmark's time budget).
        if pl_module.counters.g_steps != self._saved_at:
            self.save(trainer, pl_module.counters.g_steps)
