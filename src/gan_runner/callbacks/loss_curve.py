"""Records the logged losses and writes a loss-curve PNG when training ends."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl

from gan_runner.plots import loss_curves


class LossCurve(pl.Callback):
    """Plots train/d_loss, train/g_loss and every phase's terms against generator steps."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._recorded_at = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        g_steps = pl_module.counters.g_steps
        if g_steps == self._recorded_at or not pl_module.last_batch.logs:
            return
        self._recorded_at = g_steps
        phase_prefixes = tuple(f"train/{phase.name}/" for phase in pl_module.game.phases)
        for key, value in trainer.callback_metrics.items():
            if key in ("train/d_loss", "train/g_loss") or key.startswith(phase_prefixes):
                self.history.setdefault(key.removeprefix("train/"), []).append(
                    (g_steps, float(value))
                )

    def state_dict(self) -> dict:
        return {
            "history": {
                key: [list(point) for point in points] for key, points in self.history.items()
            }
        }

    def load_state_dict(self, state_dict: dict) -> None:  # a resumed run plots its whole history
        self.history = {
            key: [tuple(p) for p in points] for key, points in state_dict["history"].items()
        }

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            loss_curves(self.history, self.path)
