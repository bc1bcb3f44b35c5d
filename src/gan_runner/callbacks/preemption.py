"""Stopping on a signal without losing the run: finish the batch, save last.ckpt, exit cleanly."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped on a signal after saving `last.ckpt` (not a failure of the run)."""

    def __init__(self, signum: int, g_steps: int, checkpoint: Path) -> None:
        self.signum, self.g_steps, self.checkpoint = signum, g_steps, checkpoint
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at g_steps={g_steps}; saved {checkpoint}; continue with "
            "resume=auto (same command and run folder) or resume=<that checkpoint>"
        )


class Preemption(pl.Callback):
    """On SIGTERM, SIGINT or a cluster's warning signal: save `last.ckpt` after the batch, stop.

    The signal only raises a flag. At the end of each batch the ranks agree on it (one
    all-reduce under DDP), so every rank stops at the same step with consistent weights,
    optimizers and counters, saves, and raises `Interrupted`, which skips the end-of-training
    evaluation so a preempted job exits within its grace period. A second Ctrl+C stops at once.
    A handler that was there before (submitit's requeue on SIGUSR2) is left for the caller.
    """

    def __init__(
        self, dirpath: str, signals: Sequence[str] = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
    ) -> None:
        self.dirpath = Path(dirpath)
        self.signal_names = list(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for name in self.signal_names:
            signum = getattr(signal, name, None)
            if signum is not None:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: the user does not want to wait
        self.received = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:  # any rank's signal stops all of them at this step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        signum = self.received if self.received is not None else signal.SIGTERM
        raise Interrupted(signum, pl_module.counters.g_steps, path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    def previous_handler(self, signum: int) -> Callable[[int, Any], None] | None:
        """The handler `signum` had before training when it was a program's own (submitit's)."""
        previous = self._previous.get(signum)
        default = (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler, None)
        return None if previous in default else previous
