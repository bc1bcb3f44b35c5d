"""DCGAN's all-convolutional generator and discriminator (Radford et al. 2016, 1511.06434)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gan_runner.nets.attention import AttentionSites
from gan_runner.nets.layers import (
    ConcatLabels,
    CriticHeads,
    CriticOutput,
    LabelEmbedding,
    MinibatchDiscrimination,
    ProjectionHead,
    VirtualBatchReference,
    check_conditioning,
    check_image_shape,
    check_power_of_two_resolution,
    generator_norm,
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


def _through(layers: nn.Sequential, attention: AttentionSites, x: Tensor) -> Tensor:
    """x through the layers, with self-attention after the activation at its resolution."""
    if not attention:
        return layers(x)
    applied: set[int] = set()
    for layer in layers:
        x = layer(x)
        if isinstance(layer, (nn.ReLU, nn.LeakyReLU)):
            x = attention.after(x, applied)
    return x


class DCGANGenerator(nn.Module):
    """The DCGAN generator: fractionally strided convolutions from 4x4 (Radford et al. 2016).

    `norm: virtual_batch` normalizes against a fixed reference batch of `reference_size` latents
    (Salimans et al. 2016, §3.5) that runs ahead of every batch, in training and sampling alike.
    """

    def __init__(
        self,
        z_dim: int,
        data_shape: Sequence[int],
        base_width: int = 64,
        max_width: int = 512,
        norm: str = "batch",
        num_classes: int = 0,
        bounded: bool = True,
        reference_size: int = 64,
        reference_seed: int = 0,
        attention_resolutions: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        channels, widths = _widths(data_shape, base_width, max_width)
        self.embed = LabelEmbedding(num_classes, z_dim) if num_classes else None
        self.reference = None
        if norm == "virtual_batch":
            self.reference = VirtualBatchReference(
                reference_size, z_dim, num_classes, reference_seed
            )
        in_dim = 2 * z_dim if num_classes else z_dim
        bias = norm == "none"  # a norm's shift makes the conv bias redundant

        def normalize(width: int) -> nn.Module:
            return generator_norm(norm, width, reference_size, image=True)

        # A 4x4 transposed conv of a 1x1 map is the paper's "project and reshape" of z.
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, widths[0], 4, 1, 0, bias=bias)]
        layers += [normalize(widths[0]), nn.ReLU()]
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(fan_in, fan_out, 4, 2, 1, bias=bias)]
            layers += [normalize(fan_out), nn.ReLU()]
        # No norm on the output layer: the paper found it made samples oscillate (§3).
        layers.append(nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1))
        if bounded:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        _init_weights(self)
        # Built after the init, so a recipe without attention keeps its initial weights.
        outputs = {4 * 2**i: width for i, width in enumerate(widths)}
        self.attention = AttentionSites(attention_resolutions, outputs, "generator")

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.reference is not None:
            z, labels = self.reference.prepend(z, labels)
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        out = _through(self.net, self.attention, z[:, :, None, None])
        if self.reference is not None:
            return out[self.reference.size :]  # the reference batch only set the statistics
        return out


class DCGANDiscriminator(nn.Module):
    """The DCGAN discriminator: strided convolutions and leaky ReLUs (Radford et al. 2016),
    conditioned by projection or by one-hot label maps joined to the input image.

    `minibatch_discrimination: {kernels: B, kernel_dim: C}` scores each sample's closeness to
    the rest of its batch beside its flattened 4x4 features (Salimans et al. 2016, §3.2).
    """

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
        minibatch_discrimination: Mapping[str, int] | None = None,
        attention_resolutions: Sequence[int] = (),
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
        # Built last, so turning it on leaves every other layer's initial weights as they were.
        self.minibatch = self.minibatch_score = None
        if minibatch_discrimination:
            spec = minibatch_discrimination
            self.minibatch = MinibatchDiscrimination.from_spec(widths[-1] * 16, spec)
            self.minibatch_score = nn.Linear(self.minibatch.kernels, 1, bias=False)
        resolution = int(data_shape[-1])
        outputs = {resolution // 2 ** (i + 1): width for i, width in enumerate(widths)}
        self.attention = AttentionSites(attention_resolutions, outputs, "discriminator")

    def outputs(self, x: Tensor, labels: Tensor | None = None) -> CriticOutput:
        if self.concat is not None:
            x = self.concat(x, labels)
        h = _through(self.features, self.attention, x)
        scores = self.score(h).flatten()
        flat = h.flatten(1)
        if self.minibatch is not None:  # the 4x4 conv's score of h plus a linear score of o(h)
            scores = scores + self.minibatch_score(self.minibatch(flat)).squeeze(1)
        if self.projection is not None:
            scores = scores + self.projection(flat, labels)
        return CriticOutput(scores, flat, self.heads(flat) if self.heads is not None else {})

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.outputs(x, labels).scores
