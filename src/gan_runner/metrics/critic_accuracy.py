"""The critic as a classifier: its class head's accuracy on the held-out test split."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gan_runner.data.module import TEST_FRACTION, TEST_SEED, TensorData, to_model_range
from gan_runner.errors import UserError

HEAD = "class_logits"


class CriticAccuracy:
    """Test accuracy of the argmax of the critic's class head, the figure of merit of the K+1
    semi-supervised GAN (Salimans et al. 2016, §5), scored on the raw critic in eval mode.

    The test split is the data module's held-out split (`data.labeled_per_class` on a set
    without one of its own, e.g. digits: the classifier metric's 20%, never trained on), else
    the source's own test split (mnist, cifar10, svhn).
    """

    primary = "accuracy"

    def __init__(self, batch_size: int = 500) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.test: TensorData | None = None
        self.split = ""

    def names(self) -> list[str]:
        return [self.primary]

    def prepare(self, datamodule: Any, device: torch.device | str | None = None) -> None:
        """Load the test split now, and refuse a critic without a class head before training."""
        trainer = getattr(datamodule, "trainer", None)
        if trainer is not None and trainer.lightning_module is not None:
            check_critic(trainer.lightning_module)
        if self.test is None:
            self.test, self.split = test_split(datamodule)
        if device is not None:
            self.test = TensorData(self.test.samples.to(device), self.test.labels.to(device))

    def evaluate(
        self, module: Any, datamodule: Any, generator: torch.Generator
    ) -> dict[str, float]:
        check_critic(module)
        self.prepare(datamodule)
        critic = module.discriminator
        was_training = critic.training
        critic.eval()  # deterministic: BatchNorm on its running statistics, no train noise
        try:
            with torch.no_grad():
                starts = range(0, len(self.test), self.batch_size)
                hits = sum(int(self._hits(critic, start)) for start in starts)
        finally:
            critic.train(was_training)
        return {self.primary: hits / len(self.test)}

    def _hits(self, critic: Any, start: int) -> Tensor:
        device = next(critic.parameters()).device
        samples = self.test.samples[start : start + self.batch_size].to(device)
        labels = self.test.labels[start : start + self.batch_size].to(device)
        logits = critic.outputs(to_model_range(samples)).heads[HEAD]
        return (logits.argmax(dim=1) == labels).sum()

    def provenance(self) -> dict[str, Any]:
        n = len(self.test) if self.test is not None else None
        return {"head": HEAD, "split": self.split, "n": n, "critic": "live, eval mode"}


def check_critic(module: Any) -> None:
    """Refuse a critic without a class head, or one that reads the labels it is asked for."""
    heads = getattr(module.discriminator, "heads", None) or {}
    if HEAD not in heads:
        raise UserError(
            f"metrics.critic_accuracy scores the critic's {HEAD} head, which arch.discriminator "
            f"has not got; add arch.discriminator.heads.{HEAD}=<data.num_classes>"
        )
    if module.num_classes:
        raise UserError(
            f"metrics.critic_accuracy scores an unconditional critic, but num_classes="
            f"{module.num_classes} feeds it the labels; set num_classes=0"
        )


def test_split(datamodule: Any) -> tuple[TensorData, str]:
    """The labelled test images: the data module's held-out split, else the source's own."""
    datamodule.setup()
    held_out = getattr(datamodule, "held_out", None)
    if held_out is not None:
        percent = round(100 * TEST_FRACTION)
        return held_out, f"held-out {percent}% (seed {TEST_SEED}), never trained on"
    source = datamodule.source
    name = getattr(source, "name", "") or type(source).__name__
    if "test" not in getattr(source, "splits", ()) or getattr(source, "split", "") == "test":
        raise UserError(
            f"metrics.critic_accuracy needs a held-out test split, which data={name} has not "
            "got; set data.labeled_per_class (which holds out 20% of a set without one)"
        )
    from gan_runner.metrics.fidelity import reference_data

    data = reference_data(datamodule, "test")
    if not isinstance(data, TensorData) or data.labels is None:
        raise UserError(
            f"metrics.critic_accuracy scores labelled images held in memory, which data={name}'s "
            "test split is not; use another metric"
        )
    return data, "test"
