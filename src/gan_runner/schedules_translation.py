"""The learning-rate schedule of CycleGAN and pix2pix (Zhu et al. 2017; Isola et al. 2017):
constant, then a linear decay to zero (the official code's `lr_policy=linear`)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class ConstantThenLinear(LRScheduler):
    """Constant learning rates, then linear to 0 over the last `decay_fraction` of `total_iters`
    steps (Zhu et al. 2017: 100 epochs constant, 100 decaying). Counts generator steps, as every
    schedule here; the factor at step t is 1 - max(0, t - start) / (total_iters - start)."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_iters: int,
        decay_fraction: float = 0.5,
        last_epoch: int = -1,
    ) -> None:
        if total_iters < 1 or not 0.0 < decay_fraction <= 1.0:
            raise ValueError(
                f"total_iters must be >= 1 and decay_fraction in (0, 1], got {total_iters}, "
                f"{decay_fraction}"
            )
        self.total_iters = total_iters
        self.decay_iters = max(1, round(decay_fraction * total_iters))
        self.start = total_iters - self.decay_iters
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of the base learning rate at generator step `step`."""
        return max(0.0, 1.0 - max(0, step - self.start) / self.decay_iters)

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
