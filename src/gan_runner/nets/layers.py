"""Building blocks shared by the network families."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
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


@dataclass
class CriticOutput:
    """What a critic computes on a batch: its scores, the trunk's features and any heads."""

    scores: Tensor  # (N,)
    features: Tensor  # (N, F): the last hidden layer, flattened (feature matching reads it)
    heads: dict[str, Tensor] = field(default_factory=dict)  # class logits, code predictions


class CriticHeads(nn.ModuleDict):
    """Extra outputs on a critic's features: `{name: size}` (a linear map) or `{name: {size,
    hidden}}` (an MLP with BatchNorm and leaky ReLUs, InfoGAN's Q head). A player can own one
    head apart from the trunk: `discriminator.heads.<name>` in game.players."""

    def __init__(self, features: int, heads: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for name, spec in (heads or {}).items():
            spec = {"size": spec} if isinstance(spec, int) else dict(spec)
            unknown = set(spec) - {"size", "hidden"}
            if unknown or "size" not in spec or int(spec["size"]) < 1:
                raise ValueError(
                    f"head {name}: give a size >= 1, as {name}: 10 or {name}: "
                    f"{{size: 10, hidden: [128]}}; got {spec}"
                )
            layers: list[nn.Module] = []
            width = features
            for hidden in spec.get("hidden") or []:
                layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.1)]
                width = hidden
            layers.append(nn.Linear(width, int(spec["size"])))
            self[name] = nn.Sequential(*layers) if len(layers) > 1 else layers[0]

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {name: head(features) for name, head in self.items()}


class ConcatLabels(nn.Module):
    """One-hot labels joined to the critic's input: as features (flat) or as constant maps
    (images), the conditional GAN of Mirza & Osindero 2014."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        one_hot = F.one_hot(labels, self.num_classes).to(x.dtype)
        if x.dim() == 2:
            return torch.cat([x, one_hot], dim=1)
        maps = one_hot[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return torch.cat([x, maps], dim=1)


CONDITIONING = ("projection", "concat")


def check_conditioning(conditioning: str) -> str:
    if conditioning not in CONDITIONING:
        raise ValueError(
            f"conditioning must be one of {', '.join(CONDITIONING)}, got {conditioning!r}"
        )
    return conditioning
