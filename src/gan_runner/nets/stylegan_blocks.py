"""StyleGAN and StyleGAN2 building blocks in pure PyTorch (Karras et al. 2019, 2020), after
stylegan2-ada-pytorch's networks.py: no custom CUDA ops, resampling by a small FIR conv."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.nets.equalized import (
    EqualizedConv2d,
    EqualizedLinear,
    blur,
    fir_filter,
    lrelu,
    normalize_2nd_moment,
    upsample_2x,
)

NOISE_MODES = ("random", "const", "none")


class MappingNetwork(nn.Module):
    """StyleGAN's mapping network z (+ class embedding) → w, with the tracked w_avg and
    truncation (Karras et al. 2019, §2; S2A MappingNetwork)."""

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_classes: int = 0,
        num_layers: int = 8,
        lr_mul: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ) -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.num_ws = z_dim, num_classes, num_ws
        embed_dim = w_dim if num_classes else 0
        # The class embedding is an FC on one-hot labels at lr_mul 1, as S2A's `embed`.
        self.embed = EqualizedLinear(num_classes, embed_dim) if num_classes else None
        dims = [z_dim + embed_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            EqualizedLinear(fan_in, fan_out, lr_mul=lr_mul)
            for fan_in, fan_out in zip(dims[:-1], dims[1:])
        )
        self.w_avg_beta = w_avg_beta
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: Tensor | None,
        labels: Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = True,
    ) -> Tensor:
        parts = [normalize_2nd_moment(z)] if self.z_dim else []
        if self.embed is not None:
            if labels is None:
                raise ValueError("this StyleGAN network is class-conditional: call it with labels")
            one_hot = F.one_hot(labels, self.num_classes).to(self.embed.weight.dtype)
            parts.append(normalize_2nd_moment(self.embed(one_hot)))
        x = torch.cat(parts, dim=1)
        for layer in self.layers:
            x = lrelu(layer(x))
        if self.w_avg_beta is not None and self.training and update_w_avg:
            # w_avg ← lerp(mean_batch(w), w_avg, β); the style-mixing pass opts out.
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            truncated = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)  # w_avg + ψ(w − w_avg)
            ws = torch.cat([truncated, ws[:, cutoff:]], dim=1)
        return ws


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    demodulate: bool = True,
    up_filter: Tensor | None = None,
) -> Tensor:
    """StyleGAN2's weight (de)modulation, fused as one grouped conv over the batch (Karras et al.
    2020, §2.2); with `up_filter`, a stride-2 transposed conv then the FIR, as S2A's up path."""
    n, fan_in, height, width = x.shape
    fan_out, _, k, _ = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(n, 1, fan_in, 1, 1)  # w'_oik = s_i · w_oik
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()  # w'' = w'/σ_o
    x = x.reshape(1, n * fan_in, height, width)
    if up_filter is None:
        x = F.conv2d(x, w.reshape(n * fan_out, fan_in, k, k), padding=k // 2, groups=n)
    else:
        # The transposed conv gives 2H + k − 2 pixels; S2A's pads make the FIR return 2H
        # (1 and 1 for k = 3 and 4 taps).
        w = w.transpose(1, 2).reshape(n * fan_in, fan_out, k, k)
        x = F.conv_transpose2d(x, w, stride=2, groups=n)
        taps = up_filter.shape[0]
        p0 = k // 2 + (taps + 1) // 2 - (k - 1)
        p1 = k // 2 + (taps - 2) // 2 - (k - 2)
        x = blur(x, up_filter * 4, (p0, p1, p0, p1))
    return x.reshape(n, fan_out, *x.shape[2:])


def layer_noise(x: Tensor, const: Tensor, mode: str) -> Tensor | None:
    """Per-pixel noise shared by the channels: fresh, the layer's fixed draw, or none."""
    if mode == "random":
        return torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
    return const if mode == "const" else None


class SynthesisLayer(nn.Module):
    """StyleGAN2's modulated 3×3 conv, scalar-strength noise, bias, lrelu (Karras et al. 2020)."""

    def __init__(
        self, fan_in: int, fan_out: int, w_dim: int, resolution: int, up: bool = False
    ) -> None:
        super().__init__()
        self.affine = EqualizedLinear(w_dim, fan_in, bias_init=1.0)  # styles start at 1
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in, 3, 3))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(fan_out))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("up_filter", fir_filter() if up else None, persistent=False)

    def forward(self, x: Tensor, w: Tensor, noise_mode: str) -> Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w), up_filter=self.up_filter)
        noise = layer_noise(x, self.noise_const, noise_mode)
        if noise is not None:
            x = x + noise * self.noise_strength
        return lrelu(x + self.bias.reshape(1, -1, 1, 1))


class ToRGB(nn.Module):
    """StyleGAN2's modulated 1×1 conv to pixels, without demodulation (Karras et al. 2020)."""

    def __init__(self, fan_in: int, channels: int, w_dim: int) -> None:
        super().__init__()
        self.affine = EqualizedLinear(w_dim, fan_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(channels, fan_in, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight_gain = 1 / math.sqrt(fan_in)  # on the styles: equalized lr without demod

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return x + self.bias.reshape(1, -1, 1, 1)


class SynthesisBlock(nn.Module):
    """One StyleGAN2 resolution: (const | up-conv) → conv → ToRGB, skip or orig (Karras et al.
    2020, Fig. 7); consumes ws[num_conv + num_torgb], the ToRGB's w shared with the next conv."""

    def __init__(
        self,
        fan_in: int,
        fan_out: int,
        w_dim: int,
        resolution: int,
        channels: int,
        is_last: bool,
        architecture: str,
    ) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.randn(fan_out, 4, 4)) if fan_in == 0 else None
        self.conv0 = (
            None if fan_in == 0 else SynthesisLayer(fan_in, fan_out, w_dim, resolution, up=True)
        )
        self.conv1 = SynthesisLayer(fan_out, fan_out, w_dim, resolution)
        skip = is_last or architecture == "skip"
        self.torgb = ToRGB(fan_out, channels, w_dim) if skip else None
        self.num_conv, self.num_torgb = (1 if fan_in == 0 else 2), int(skip)
        self.register_buffer("filter", fir_filter(), persistent=False)

    def forward(
        self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str
    ) -> tuple[Tensor, Tensor | None]:
        if self.const is not None:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        layers = [self.conv1] if self.conv0 is None else [self.conv0, self.conv1]
        for i, layer in enumerate(layers):
            x = layer(x, ws[:, i], noise_mode)
        if img is not None:
            img = upsample_2x(img, self.filter)
        if self.torgb is not None:
            rgb = self.torgb(x, ws[:, self.num_conv])
            img = rgb if img is None else img + rgb
        return x, img


class AdaINLayer(nn.Module):
    """StyleGAN's layer: (up, conv, blur) → per-channel noise → bias → lrelu → instance norm →
    AdaIN x·(s₀+1)+s₁ (Karras et al. 2019, §2; SG1 layer_epilogue)."""

    def __init__(
        self, fan_in: int, fan_out: int, w_dim: int, resolution: int, conv: bool, up: bool
    ) -> None:
        super().__init__()
        self.conv = EqualizedConv2d(fan_in, fan_out, 3, bias=False) if conv else None
        self.up = up
        self.noise_strength = nn.Parameter(torch.zeros(fan_out))  # per channel in StyleGAN 1
        self.bias = nn.Parameter(torch.zeros(fan_out))
        self.style = EqualizedLinear(w_dim, 2 * fan_out)  # bias 0: the scale is s₀ + 1
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("filter", fir_filter((1.0, 2.0, 1.0)), persistent=False)

    def forward(self, x: Tensor, w: Tensor, noise_mode: str) -> Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")  # SG1's upscale2d below 128 px
        if self.conv is not None:
            x = self.conv(x)
        if self.up:
            x = blur(x, self.filter, (1, 1, 1, 1))
        noise = layer_noise(x, self.noise_const, noise_mode)
        if noise is not None:
            x = x + noise * self.noise_strength.reshape(1, -1, 1, 1)
        x = lrelu(x + self.bias.reshape(1, -1, 1, 1))
        x = x - x.mean(dim=[2, 3], keepdim=True)
        x = x * (x.square().mean(dim=[2, 3], keepdim=True) + 1e-8).rsqrt()
        scale, shift = self.style(w).reshape(x.shape[0], 2, -1, 1, 1).unbind(1)
        return x * (scale + 1) + shift


class AdaINBlock(nn.Module):
    """One StyleGAN resolution: two AdaIN layers (the 4×4 one starts from a constant of ones),
    a plain 1×1 ToRGB at the last resolution or, skip, at every one (Karras et al. 2019)."""

    def __init__(
        self,
        fan_in: int,
        fan_out: int,
        w_dim: int,
        resolution: int,
        channels: int,
        is_last: bool,
        architecture: str,
    ) -> None:
        super().__init__()
        first = fan_in == 0
        self.const = nn.Parameter(torch.ones(fan_out, 4, 4)) if first else None
        self.layer0 = AdaINLayer(
            fan_in or fan_out, fan_out, w_dim, resolution, conv=not first, up=not first
        )
        self.layer1 = AdaINLayer(fan_out, fan_out, w_dim, resolution, conv=True, up=False)
        skip = is_last or architecture == "skip"
        self.torgb = EqualizedConv2d(fan_out, channels, 1) if skip else None
        self.num_conv, self.num_torgb = 2, 0  # StyleGAN's ToRGB reads no style
        self.register_buffer("filter", fir_filter(), persistent=False)

    def forward(
        self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str
    ) -> tuple[Tensor, Tensor | None]:
        if self.const is not None:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        x = self.layer1(self.layer0(x, ws[:, 0], noise_mode), ws[:, 1], noise_mode)
        if img is not None:
            img = upsample_2x(img, self.filter)
        if self.torgb is not None:
            img = self.torgb(x) if img is None else img + self.torgb(x)
        return x, img
