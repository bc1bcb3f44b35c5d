"""SNGAN's residual generator and critic (Miyato et al. 2018 App. B; Gulrajani et al. 2017)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.nets.attention import AttentionSites
from gan_runner.nets.layers import (
    ConditionalBatchNorm2d,
    CriticHeads,
    CriticOutput,
    ProjectionHead,
    check_conditioning,
    check_image_shape,
    check_power_of_two_resolution,
)


def _conv(fan_in: int, fan_out: int, kernel: int, gain: float = 1.0) -> nn.Conv2d:
    # SNGAN's code: Glorot-uniform, gain sqrt(2) on the residual convs (which follow a ReLU)
    # and 1 on shortcuts, so the two branches start at comparable scales.
    conv = nn.Conv2d(fan_in, fan_out, kernel, padding=kernel // 2)
    nn.init.xavier_uniform_(conv.weight, gain)
    nn.init.zeros_(conv.bias)
    return conv


def _batch_norm(channels: int, num_classes: int) -> nn.Module:
    return (
        ConditionalBatchNorm2d(num_classes, channels) if num_classes else nn.BatchNorm2d(channels)
    )


def _normalize(norm: nn.Module, x: Tensor, labels: Tensor | None) -> Tensor:
    return norm(x, labels) if isinstance(norm, ConditionalBatchNorm2d) else norm(x)


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _image_stages(data_shape: Sequence[int], width: int) -> tuple[int, int]:
    """Channels and the number of x2 stages between 4x4 and the data's resolution."""
    channels, resolution = check_image_shape(data_shape, "resnet")
    stages = check_power_of_two_resolution(resolution) - 2
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return channels, stages


class UpBlock(nn.Module):
    """A pre-activation residual block doubling resolution (Miyato et al. 2018, Fig. 8a)."""

    def __init__(self, fan_in: int, fan_out: int, num_classes: int = 0) -> None:
        super().__init__()
        self.norm1, self.norm2 = (
            _batch_norm(fan_in, num_classes),
            _batch_norm(fan_out, num_classes),
        )
        self.conv1 = _conv(fan_in, fan_out, 3, math.sqrt(2))
        self.conv2 = _conv(fan_out, fan_out, 3, math.sqrt(2))
        self.shortcut = _conv(fan_in, fan_out, 1)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.conv1(_upsample(F.relu(_normalize(self.norm1, x, labels))))
        h = self.conv2(F.relu(_normalize(self.norm2, h, labels)))
        return h + self.shortcut(_upsample(x))


class DownBlock(nn.Module):
    """A residual critic block, halving resolution when asked (Miyato et al. 2018, Fig. 8b)."""

    def __init__(
        self, fan_in: int, fan_out: int, downsample: bool = True, first: bool = False
    ) -> None:
        super().__init__()
        self.downsample, self.first = downsample, first
        self.conv1 = _conv(fan_in, fan_out, 3, math.sqrt(2))
        self.conv2 = _conv(fan_out, fan_out, 3, math.sqrt(2))
        learned = downsample or fan_in != fan_out
        self.shortcut = _conv(fan_in, fan_out, 1) if learned else nn.Identity()

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: Tensor) -> Tensor:
        # SNGAN's "optimized" first block: no ReLU on raw pixels, and the shortcut pools before
        # its 1x1 conv, which is the same linear map at a quarter of the cost.
        h = x if self.first else F.relu(x)
        h = self._pool(self.conv2(F.relu(self.conv1(h))))
        shortcut = self.shortcut(self._pool(x)) if self.first else self._pool(self.shortcut(x))
        return h + shortcut


class ResNetGenerator(nn.Module):
    """SNGAN's ResNet generator, class-conditional through BatchNorm (Miyato & Koyama 2018)."""

    def __init__(
        self,
        z_dim: int,
        data_shape: Sequence[int],
        width: int = 128,
        num_classes: int = 0,
        bounded: bool = True,
        attention_resolutions: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        channels, stages = _image_stages(data_shape, width)
        self.width = width
        self.project = nn.Linear(z_dim, 4 * 4 * width)
        nn.init.xavier_uniform_(self.project.weight)
        self.blocks = nn.ModuleList(UpBlock(width, width, num_classes) for _ in range(stages))
        # The last BatchNorm is unconditional, as in Miyato & Koyama's generator.
        layers: list[nn.Module] = [nn.BatchNorm2d(width), nn.ReLU(), _conv(width, channels, 3)]
        if bounded:
            layers.append(nn.Tanh())
        self.output = nn.Sequential(*layers)
        # Built last, so a recipe without attention keeps every other layer's initial weights.
        outputs = {4 * 2 ** (i + 1): width for i in range(stages)}
        self.attention = AttentionSites(attention_resolutions, outputs, "generator")

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.project(z).view(z.shape[0], self.width, 4, 4)
        applied: set[int] = set()
        for block in self.blocks:
            h = self.attention.after(block(h, labels), applied)
        return self.output(h)


class ResNetDiscriminator(nn.Module):
    """SNGAN's ResNet critic with sum pooling and projection conditioning (Miyato et al. 2018)."""

    def __init__(
        self,
        data_shape: Sequence[int],
        width: int = 128,
        extra_blocks: int = 1,
        num_classes: int = 0,
        conditioning: str = "projection",
        heads: Mapping[str, Any] | None = None,
        attention_resolutions: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if check_conditioning(conditioning) != "projection" and num_classes:
            raise ValueError(
                "the ResNet critic is conditioned by projection only; use arch=dcgan or "
                "arch=mlp for conditioning=concat"
            )
        channels, stages = _image_stages(data_shape, width)
        if extra_blocks < 0:
            raise ValueError(f"extra_blocks must be >= 0, got {extra_blocks}")
        blocks = [DownBlock(channels, width, first=True)]
        blocks += [DownBlock(width, width) for _ in range(stages - 1)]
        # Blocks at 4x4 add depth without pooling away the last spatial detail (SNGAN's STL and
        # ImageNet critics end with one).
        blocks += [DownBlock(width, width, downsample=False) for _ in range(extra_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.score = nn.Linear(width, 1)
        nn.init.xavier_uniform_(self.score.weight)
        self.projection = ProjectionHead(num_classes, width) if num_classes else None
        if self.projection is not None:
            nn.init.xavier_uniform_(self.projection.embedding.weight)
        self.heads = CriticHeads(width, heads) if heads else None
        resolution = int(data_shape[-1])
        outputs = {resolution // 2 ** (i + 1): width for i in range(stages)}
        self.attention = AttentionSites(attention_resolutions, outputs, "discriminator")

    def outputs(self, x: Tensor, labels: Tensor | None = None) -> CriticOutput:
        h, applied = x, set()
        for block in self.blocks:
            h = self.attention.after(block(h), applied)
        # Sum, not mean, pooling as in SNGAN's code, so its hinge margin and rates carry over.
        h = F.relu(h).sum(dim=(2, 3))
        scores = self.score(h).squeeze(1)
        if self.projection is not None:
            scores = scores + self.projection(h, labels)
        return CriticOutput(scores, h, self.heads(h) if self.heads is not None else {})

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.outputs(x, labels).scores
