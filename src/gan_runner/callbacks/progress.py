"""A rich progress bar that reports a GAN run in generator steps rather than epochs."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar


class GANProgressBar(RichProgressBar):
    """Rich progress bar whose description and metrics show generator steps done / planned."""

    def __init__(self, g_steps: int, leave: bool = True) -> None:
        super().__init__(leave=leave)
        self.planned_g_steps = g_steps

    def _get_train_description(self, current_epoch: int) -> str:
        # Epochs mean little when run length is counted in G steps (max_epochs is -1).
        return f"epoch {current_epoch}"

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("train/g_steps", None)
        metrics = {key.removeprefix("train/"): value for key, value in metrics.items()}
        return {"g_steps": f"{pl_module.counters.g_steps}/{self.planned_g_steps}", **metrics}
