"""One player's optimizer step with less per-step Python than Lightning's wrappers.

Lightning's `manual_backward` and `LightningOptimizer.step` route each backward and step through
the strategy and precision plugin to call the backward and optimizer-step hooks of every
callback. On one device in 32-bit precision, with no callback that implements those hooks, they
end in `loss.backward()` and `optimizer.step()` and do nothing else; `direct_steps` says when
that holds, and the module then calls both itself (same tensor work: the same weights).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import lightning.pytorch as pl
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor, nn

# The hooks Lightning's wrappers call around a backward and an optimizer step.
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def direct_steps(trainer: pl.Trainer) -> bool:
    """Whether Lightning's backward and step wrappers would do nothing but the plain calls."""
    if type(trainer.strategy) is not SingleDeviceStrategy:
        return False  # DDP prepares its reducer in the wrapper; others shard or scale
    if type(trainer.precision_plugin) is not Precision:
        return False  # mixed precision scales, unscales and autocasts there
    return not any(
        getattr(type(callback), hook) is not getattr(pl.Callback, hook)
        for callback in trainer.callbacks
        for hook in STEP_HOOKS
    )


@contextmanager
def frozen(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """No weight gradients for params inside (gradients still flow through them), as Lightning's
    `toggled_optimizer` does for the other optimizers' parameters, from a list made once."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad = False
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad = flag


@dataclass(slots=True)
class LastBatch:
    """What the batch just trained did, for the callbacks that run after it. Kept in a plain
    object: every attribute set on an nn.Module goes through its costly __setattr__."""

    logs: bool = False  # it logs (every train.log_every generator steps)
    generator_stepped: bool = False  # it ended a critic cycle with a generator step
    images: int = 0  # its real samples, over all ranks
    losses: dict[str, Tensor] = field(default_factory=dict)  # on the device, unsynced
