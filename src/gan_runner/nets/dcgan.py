"""DCGAN's all-convolutional generator and discriminator (Radford et al. 2016, 1511.06434)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gan_runner.nets.layers import (
    ConcatLabels,
    CriticHeads,
    CriticOutput,
    LabelEmbedding,
    ProjectionHead,
    check_conditioning,
    check_image_shape,
    check_power_of_two_resolution,
    norm_2d,
)


def _widths(data_shape: Sequence[int], base_width: int, max_width: int) -> tuple[int, list[int]]:
    """Channels and the widths at 4x4, 8x8, ..., resolution/2: doubling as the maps halve."""
    channels, resolution = check_image_shape(data_shape, "dcgan")
    stages = check_power_of_two_resolution(resolution) - 2  # stride-2 layers between 4x4 and res
    if base_width < 1 or max_width < 1:
        raise ValueError(f"base_width and max_width must be >= 1, got {base_width}, {max_width}")
    return channels, [min(base_width * 2 ** (stages - 1 - i), max_width) for i in range(stages)]


def _init_weights(net: nn.Module) -> None:
    # Radford et al. 2016 §4: all weights from N(0, 0.02); their code centres norm scales on 1.
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)):
            if module.weight is not None:
                nn.init.normal_(module.weight, 1.0, 0.02)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    """The DCGAN generator: fractionally strided convolutions from 4x4 (Radford et al. 2016)."""

    def __init__(
        self,
        z_dim: int,
        data_shape: Sequence[int],
        base_width: int = 64,
        max_width: int = 512,
        norm: str = "batch",
        num_classes: int = 0,
        bounded: bool = True,
    ) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        channels, widths = _widths(data_shape, base_width, max_width)
        self.embed = LabelEmbedding(num_classes, z_dim) if num_classes else None
        in_dim = 2 * z_dim if num_classes else z_dim
        bias = norm == "none"  # a norm's shift makes the conv bias redundant
        # A 4x4 transposed conv of a 1x1 map is the paper's "project and reshape" of z.
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, widths[0], 4, 1, 0, bias=bias)]
        layers += [norm_2d(norm, widths[0]), nn.ReLU()]
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(fan_in, fan_out, 4, 2, 1, bias=bias)]
            layers += [norm_2d(norm, fan_out), nn.ReLU()]
        # No norm on the output layer: the paper found it made samples oscillate (§3).
        layers.append(nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1))
        if bounded:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """The DCGAN discriminator: strided convolutions and leaky ReLUs (Radford et al. 2016),
    conditioned by projection or by one-hot label maps joined to the input image."""

    def __init__(
        self,
        data_shape: Sequence[int],
        base_width: int = 64,
        max_width: int = 512,
        norm: str = "batch",
        num_classes: int = 0,
        negative_slope: float = 0.2,
        conditioning: str = "projection",
        heads: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_conditioning(conditioning)
        concat = bool(num_classes) and conditioning == "concat"
        channels, widths = _widths(data_shape, base_width, max_width)
        widths = widths[::-1]  # resolution/2 down to 4x4
        bias = norm == "none"
        in_channels = channels + (num_classes if concat else 0)
        # No norm on the input layer: the paper found it made training unstable (§3).
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 4, 2, 1)]
        layers.append(nn.LeakyReLU(negative_slope))
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(fan_in, fan_out, 4, 2, 1, bias=bias), norm_2d(norm, fan_out)]
            layers.append(nn.LeakyReLU(negative_slope))
        self.features = nn.Sequential(*layers)
        # The 4x4 conv is a linear map of the flattened 4x4 features, which projection shares.
        self.score = nn.Conv2d(widths[-1], 1, 4, 1, 0)
        projection = num_classes and not concat
        self.projection = ProjectionHead(num_classes, widths[-1] * 16) if projection else None
        self.concat = ConcatLabels(num_classes) if concat else None
        _init_weights(self)
        self.heads = CriticHeads(widths[-1] * 16, heads) if heads else None

    def outputs(self, x: Tensor, labels: Tensor | None = None) -> CriticOutput:
        if self.concat is not None:
            x = self.concat(x, labels)
        h = self.features(x)
        scores = self.score(h).flatten()
        flat = h.flatten(1)
        if self.projection is not None:
            scores = scores + self.projection(flat, labels)
        return CriticOutput(scores, flat, self.heads(flat) if self.heads is not None else {})

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.outputs(x, labels).scores
