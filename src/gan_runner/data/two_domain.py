"""Two image domains in memory: the data of image-to-image translation (CycleGAN, pix2pix).

A batch is {"a": ..., "b": ...}. For paired data b[i] is a[i]'s target and both come from the
same indices; for unpaired data each domain is drawn by its own seeded order, so nothing pairs
the two but chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset


@dataclass
class TwoDomainData:
    """Images of domain A and of domain B (uint8 in [0, 255] or float in [-1, 1]), with their
    labels where the source has some; `paired`: b[i] is the translation of a[i]."""

    a: Tensor
    b: Tensor
    a_labels: Tensor | None = None
    b_labels: Tensor | None = None
    paired: bool = False

    def __post_init__(self) -> None:
        if self.paired and len(self.a) != len(self.b):
            raise ValueError(f"paired domains differ in size: {len(self.a)} and {len(self.b)}")

    def __len__(self) -> int:
        return self.a.shape[0]

    def to(self, device: torch.device) -> TwoDomainData:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return TwoDomainData(
            move(self.a), move(self.b), move(self.a_labels), move(self.b_labels), self.paired
        )


class TwoDomainTensors(Dataset):
    """Whole batches of both domains for a list of indices (paired) or a pair of lists."""

    def __init__(self, data: TwoDomainData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: list[int] | tuple[list[int], list[int]]) -> dict[str, Tensor]:
        a_indices, b_indices = indices if isinstance(indices, tuple) else (indices, indices)
        device = self.data.a.device
        return {
            "a": self.data.a[torch.as_tensor(a_indices, device=device)],
            "b": self.data.b[torch.as_tensor(b_indices, device=device)],
        }
