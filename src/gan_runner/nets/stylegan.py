"""StyleGAN's and StyleGAN2's generator and critic in pure PyTorch (Karras et al. 2019,
arXiv:1812.04948; Karras et al. 2020, arXiv:1912.04958), after stylegan2-ada-pytorch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.nets.equalized import (
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchStd,
    blur,
    fir_filter,
    lrelu,
)
from gan_runner.nets.layers import CriticOutput, check_image_shape, check_power_of_two_resolution
from gan_runner.nets.stylegan_blocks import (
    NOISE_MODES,
    AdaINBlock,
    MappingNetwork,
    SynthesisBlock,
)

SYNTHESES = {"modulated": SynthesisBlock, "adain": AdaINBlock}  # the two papers' layer kinds


def _choice(key: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _channels(
    data_shape: Sequence[int], channel_base: int, channel_max: int, side: str
) -> tuple[int, int, dict[int, int]]:
    """(image channels, resolution, {resolution: feature channels}) of a StyleGAN network."""
    channels, resolution = check_image_shape(data_shape, "stylegan")
    log2 = check_power_of_two_resolution(resolution, low=8, high=1024)
    if channel_base < resolution or channel_max < 1:
        raise ValueError(
            f"arch.{side}.channel_base {channel_base} / channel_max {channel_max} leave no "
            f"channels at {resolution}x{resolution}; set channel_base >= {resolution} and "
            "channel_max >= 1"
        )
    sizes = [2**i for i in range(2, log2 + 1)]
    return channels, resolution, {r: min(channel_base // r, channel_max) for r in sizes}


class SynthesisNetwork(nn.Module):
    """StyleGAN's synthesis network ws → images, one block per resolution from 4×4
    (Karras et al. 2019, 2020)."""

    def __init__(
        self,
        w_dim: int,
        channels: int,
        widths: dict[int, int],
        synthesis: str,
        architecture: str,
        noise_mode: str,
        bounded: bool,
    ) -> None:
        super().__init__()
        block, resolution = SYNTHESES[synthesis], max(widths)
        self.resolutions = sorted(widths)
        self.blocks = nn.ModuleList(
            block(
                widths.get(r // 2, 0), widths[r], w_dim, r, channels, r == resolution, architecture
            )
            for r in self.resolutions
        )
        self.ws_at_resolution: dict[int, tuple[int, int]] = {}
        start = 0
        for r, b in zip(self.resolutions, self.blocks):
            # A block's ToRGB reads the w of the next block's first conv (S2A's w_idx).
            self.ws_at_resolution[r] = (start, start + b.num_conv + b.num_torgb)
            start += b.num_conv
        self.num_ws = start + self.blocks[-1].num_torgb
        self.noise_mode, self.bounded = noise_mode, bounded

    def forward(self, ws: Tensor, noise_mode: str | None = None) -> Tensor:
        mode = _choice("noise_mode", noise_mode or self.noise_mode, NOISE_MODES)
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(
                f"synthesis needs ws of shape [N, {self.num_ws}, w_dim], got {ws.shape}"
            )
        x = img = None
        for r, block in zip(self.resolutions, self.blocks):
            start, end = self.ws_at_resolution[r]
            x, img = block(x, img, ws[:, start:end], mode)
        return torch.tanh(img) if self.bounded else img


class StyleGANGenerator(nn.Module):
    """StyleGAN2's (synthesis="modulated") or StyleGAN's ("adain") generator: a mapping network
    z → w and a synthesis network ws → images (Karras et al. 2019, 2020)."""

    def __init__(
        self,
        z_dim: int,
        data_shape: Sequence[int],
        num_classes: int = 0,
        w_dim: int = 512,
        mapping_layers: int = 8,
        mapping_lr_mul: float = 0.01,
        channel_base: int = 32768,
        channel_max: int = 512,
        synthesis: str = "modulated",
        architecture: str = "skip",
        w_avg_beta: float = 0.995,
        noise_mode: str = "random",
        bounded: bool = False,
    ) -> None:
        super().__init__()
        _choice("arch.generator.synthesis", synthesis, tuple(SYNTHESES))
        _choice("arch.generator.architecture", architecture, ("skip", "orig"))
        _choice("arch.generator.noise_mode", noise_mode, NOISE_MODES)
        if w_dim < 1 or mapping_layers < 1:
            raise ValueError(
                f"arch.generator.w_dim {w_dim} and mapping_layers {mapping_layers} must be >= 1"
            )
        channels, _, widths = _channels(data_shape, channel_base, channel_max, "generator")
        self.synthesis = SynthesisNetwork(
            w_dim, channels, widths, synthesis, architecture, noise_mode, bounded
        )
        self.num_ws, self.w_dim = self.synthesis.num_ws, w_dim
        self.ws_at_resolution = self.synthesis.ws_at_resolution
        self.mapping = MappingNetwork(
            z_dim, w_dim, self.num_ws, num_classes, mapping_layers, mapping_lr_mul, w_avg_beta
        )
        self.truncation_psi = 1.0  # not state: training never truncates

    def forward(
        self,
        z: Tensor,
        labels: Tensor | None = None,
        truncation_psi: float | None = None,
        noise_mode: str | None = None,
        truncation_cutoff: int | None = None,
    ) -> Tensor:
        # None: the sampling ψ gan-sample sets (truncation=ψ), 1 (none) otherwise.
        psi = self.truncation_psi if truncation_psi is None else truncation_psi
        ws = self.mapping(z, labels, psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)


class ConvLayer(nn.Module):
    """The critic's equalized conv, optionally FIR-blurred and strided by 2, with lrelu·√2
    (S2A Conv2dLayer)."""

    def __init__(
        self,
        fan_in: int,
        fan_out: int,
        kernel: int,
        bias: bool = True,
        activate: bool = True,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.conv = EqualizedConv2d(fan_in, fan_out, kernel, bias=bias)
        self.activate = activate
        self.register_buffer("filter", fir_filter() if down else None, persistent=False)

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        if self.filter is None:
            x = self.conv(x)
        else:
            weight, k = self.conv.weight * self.conv.weight_gain, self.conv.weight.shape[-1]
            # S2A's down path: the FIR with the conv's padding folded in, then a stride-2 conv
            # (for a 1×1 kernel this is downsample_2x, then the conv).
            x = blur(x, self.filter, (k // 2 + 1,) * 4)
            x = F.conv2d(x, weight, self.conv.bias, stride=2)
        return (lrelu(x) if self.activate else x) * gain


class DiscriminatorBlock(nn.Module):
    """StyleGAN2's critic block: (FromRGB) → conv → down-conv, residual with a 1×1 down skip
    scaled by √0.5, or orig (Karras et al. 2020, Fig. 7)."""

    def __init__(
        self, fan_in: int, hidden: int, fan_out: int, channels: int, architecture: str
    ) -> None:
        super().__init__()
        self.fromrgb = ConvLayer(channels, hidden, 1) if fan_in == 0 else None
        self.conv0 = ConvLayer(hidden, hidden, 3)
        self.conv1 = ConvLayer(hidden, fan_out, 3, down=True)
        resnet = architecture == "resnet"
        self.skip = (
            ConvLayer(hidden, fan_out, 1, bias=False, activate=False, down=True)
            if resnet
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(x)
        if self.skip is None:
            return self.conv1(self.conv0(x))
        half = math.sqrt(0.5)  # keeps the sum of two unit-variance branches at unit variance
        return self.skip(x, gain=half) + self.conv1(self.conv0(x), gain=half)


class DiscriminatorEpilogue(nn.Module):
    """The critic's 4×4 head: minibatch std → conv → fc → out (Karras et al. 2018, 2020)."""

    def __init__(self, width: int, out_dim: int, mbstd_group: int, mbstd_channels: int) -> None:
        super().__init__()
        self.mbstd = MinibatchStd(mbstd_group, mbstd_channels) if mbstd_channels > 0 else None
        self.conv = ConvLayer(width + mbstd_channels, width, 3)
        self.fc = EqualizedLinear(width * 16, width)
        self.out = EqualizedLinear(width, out_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(out [N, out_dim], features: the fc's output [N, width])."""
        if self.mbstd is not None:
            x = self.mbstd(x)
        features = lrelu(self.fc(self.conv(x).flatten(1)))
        return self.out(features), features


class StyleGANDiscriminator(nn.Module):
    """StyleGAN2's critic: FromRGB, residual (or orig) down blocks, a minibatch-std epilogue and,
    conditional, a projection on a label mapping (Karras et al. 2020; S2A Discriminator)."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        channel_base: int = 32768,
        channel_max: int = 512,
        architecture: str = "resnet",
        mbstd_group: int = 4,
        mbstd_channels: int = 1,
        cmap_dim: int | None = None,
        mapping_layers: int = 2,
    ) -> None:
        super().__init__()
        _choice("arch.discriminator.architecture", architecture, ("resnet", "orig"))
        channels, resolution, widths = _channels(
            data_shape, channel_base, channel_max, "discriminator"
        )
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(
                widths[r] if r < resolution else 0,
                widths[r],
                widths[r // 2],
                channels,
                architecture,
            )
            for r in sorted(widths, reverse=True)
            if r > 4
        )
        self.cmap_dim = (cmap_dim or widths[4]) if num_classes else 0
        # S2A's label mapping is 8 FC layers at lr_mul 0.01 (+2.37M parameters at 512 wide);
        # mapping_layers defaults to 2 (set 8 for the reference).
        self.mapping = (
            MappingNetwork(0, self.cmap_dim, None, num_classes, mapping_layers, w_avg_beta=None)
            if num_classes
            else None
        )
        self.epilogue = DiscriminatorEpilogue(
            widths[4], self.cmap_dim or 1, mbstd_group, mbstd_channels
        )

    def outputs(self, x: Tensor, labels: Tensor | None = None) -> CriticOutput:
        for block in self.blocks:
            x = block(x)
        out, features = self.epilogue(x)
        if self.mapping is None:
            return CriticOutput(out.squeeze(1), features)
        cmap = self.mapping(None, labels)
        scores = (out * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)  # projection on cmap
        return CriticOutput(scores, features)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.outputs(x, labels).scores
