"""Data made up for the benchmarks, where a real set of that shape is not on this machine."""

from __future__ import annotations

import torch

from gan_runner.data.module import TensorData


class SyntheticImages:
    """Seeded random uint8 images with labels: CIFAR-10's shape without CIFAR-10's files."""

    name = "synthetic"

    def __init__(
        self, n: int = 10000, channels: int = 3, num_classes: int = 10, seed: int = 0
    ) -> None:
        self.n, self.channels, self.num_classes, self.seed = n, channels, num_classes, seed

    def load(self, resolution: int | None = None) -> TensorData:
        size = resolution or 32
        noise = torch.Generator().manual_seed(self.seed)
        # Training cost does not depend on what the pixels show, only on their number.
        samples = torch.randint(
            256, (self.n, self.channels, size, size), generator=noise, dtype=torch.uint8
        )
        labels = torch.randint(self.num_classes, (self.n,), generator=noise)
        return TensorData(samples, labels)
