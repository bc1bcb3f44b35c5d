"""Building blocks shared by the network families."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

NORMS_1D = ("batch", "layer", "none")
NORMS_2D = ("batch", "instance", "layer", "none")


def norm_1d(kind: str, features: int) -> nn.Module:
    """A normalization layer for (N, features) activations."""
    layers = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}
    if kind not in NORMS_1D:
        raise ValueError(f"norm must be one of {', '.join(NORMS_1D)}, got '{kind}'")
    return layers[kind](features) if kind in layers else nn.Identity()


def norm_2d(kind: str, channels: int) -> nn.Module:
    """A normalization layer for (N, C, H, W) activations; 'layer' normalizes over C, H, W."""
    if kind not in NORMS_2D:
        raise ValueError(f"norm must be one of {', '.join(NORMS_2D)}, got '{kind}'")
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # one group = layer norm over (C, H, W)
    return nn.Identity()


def check_power_of_two_resolution(resolution: int, low: int = 8, high: int = 128) -> int:
    """Return log2(resolution), or explain which resolutions the family supports."""
    log2 = int(math.log2(resolution)) if resolution > 0 else -1
    if resolution < low or resolution > high or 2**log2 != resolution:
        raise ValueError(
            f"resolution {resolution} is not supported; use a power of two from {low} to {high} "
            "(set data.resolution)"
        )
    return log2


def check_image_shape(data_shape: Sequence[int], arch: str) -> tuple[int, int]:
    """Return (channels, resolution) of square image data, or say which arch fits the data."""
    shape = [int(size) for size in data_shape]
    if len(shape) != 3:
        raise ValueError(
            f"arch {arch} needs image data (data.shape [C, H, W]), got {shape}; "
            "use arch=mlp for 2D data"
        )
    channels, height, width = shape
    if height != width:
        raise ValueError(
            f"arch {arch} needs square images, got data.shape {shape}; set data.resolution"
        )
    return channels, height


class LabelEmbedding(nn.Module):
    """A learned class embedding concatenated to the latent code (conditional generators)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding(labels)


class ProjectionHead(nn.Module):
    """The class term <embed(y), h> of the projection discriminator (Miyato & Koyama 2018)."""

    def __init__(self, num_classes: int, features: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, features)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return (self.embedding(labels) * features).sum(dim=1)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm with a per-class scale and shift (de Vries et al. 2017; Miyato & Koyama 2018)."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Embedding(num_classes, channels)
        self.shift = nn.Embedding(num_classes, channels)
        # Every class starts as the identity affine map, like plain BatchNorm's initial state.
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        scale, shift = self.scale(labels)[:, :, None, None], self.shift(labels)[:, :, None, None]
        return self.norm(x) * scale + shift
