"""Small scripted feature networks: stand-in Inceptions that score images in milliseconds."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn


class PooledFeatures(nn.Module):
    """A fixed random conv + pooling to `width` features: any input side, FID-able features.

    side > 0 first pools the input to side × side: a wide net on 299-px input stays cheap.
    """

    def __init__(self, width: int, seed: int = 0, side: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, width, 5, stride=2)
        self.side = side

    def forward(self, x: Tensor) -> Tensor:
        if self.side > 0:
            x = nn.functional.adaptive_avg_pool2d(x, self.side)
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


def scripted(module: nn.Module, path: Path) -> Path:
    """module scripted and saved at path, as a user's TorchScript extractor would be."""
    with warnings.catch_warnings():  # torch.jit.script's deprecation notice
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), str(path))
    return path
