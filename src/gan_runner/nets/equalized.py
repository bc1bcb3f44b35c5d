"""Layers shared by the Karras et al. families (PGGAN, StyleGAN, StyleGAN2), in pure PyTorch.

Equalized learning rate (Karras et al. 2018, §4.1): weights are stored N(0, 1) and scaled by
gain/√fan_in at run time, so Adam's per-parameter step moves every layer at the same relative rate.
No custom CUDA ops: resampling is a small conv2d FIR, activations are plain lrelu × gain.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_GAIN = math.sqrt(2.0)  # keeps unit variance through lrelu(0.2), as the reference's def_gain


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """x / √(mean(x²) + ε) over `dim`: the latent normalization of StyleGAN's mapping network."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """PGGAN's pixelwise feature normalization: unit mean square over channels at each pixel."""
    return normalize_2nd_moment(x, dim=1, eps=eps)


def lrelu(x: Tensor, gain: float = LRELU_GAIN) -> Tensor:
    return F.leaky_relu(x, 0.2) * gain


class EqualizedLinear(nn.Module):
    """A fully connected layer with equalized learning rate and a learning-rate multiplier.

    The weight is stored N(0, 1)/lr_mul and used × lr_mul·gain/√fan_in, the bias stored
    bias_init/lr_mul and used × lr_mul: Adam's step on the stored values moves the effective ones
    lr_mul times less (StyleGAN's mapping network, lr_mul 0.01).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        gain: float = 1.0,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = (
            nn.Parameter(torch.full([out_features], float(bias_init) / lr_mul)) if bias else None
        )
        self.weight_gain = lr_mul * gain / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias * self.bias_gain
        return F.linear(x, self.weight * self.weight_gain, bias)

    def extra_repr(self) -> str:
        out, fan_in = self.weight.shape
        return f"in={fan_in}, out={out}, bias={self.bias is not None}, gain={self.weight_gain:g}"


class EqualizedConv2d(nn.Module):
    """A same-padded conv with equalized learning rate: weight N(0, 1) × gain/√(C_in·k²)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        gain: float = 1.0,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn(out_channels, in_channels, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = gain / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        out, fan_in, k, _ = self.weight.shape
        return f"{fan_in}, {out}, kernel_size={k}, bias={self.bias is not None}"


def fir_filter(taps: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)) -> Tensor:
    """The separable 2D low-pass filter of the taps, normalized to sum to 1 ([1,3,3,1]: S2A's)."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def _filter(x: Tensor, f: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    channels = x.shape[1]
    kernel = f.to(x.dtype).flip([0, 1])[None, None].repeat(channels, 1, 1, 1)
    return F.conv2d(F.pad(x, pad), kernel, groups=channels)


def upsample_2x(x: Tensor, f: Tensor) -> Tensor:
    """upfirdn2d(up=2): zero-insertion then the FIR scaled by 4 (the reference's gain = up²)."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, h, 2, w, 2)
    up[:, :, :, 0, :, 0] = x
    up = up.reshape(n, c, 2 * h, 2 * w)
    taps = f.shape[0]
    p0 = (
        taps + 1
    ) // 2  # pads of upfirdn2d.upsample2d for an even-length filter: (2, 1) for 4 taps
    p1 = (taps - 2) // 2
    return _filter(up, f * 4, (p0, p1, p0, p1))


def downsample_2x(x: Tensor, f: Tensor) -> Tensor:
    """upfirdn2d(down=2): the FIR then every other pixel."""
    taps = f.shape[0]
    p = (taps - 2) // 2
    return _filter(x, f, (p, p, p, p))[:, :, ::2, ::2]


def blur(x: Tensor, f: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """The FIR at stride 1 with explicit (left, right, top, bottom) padding."""
    return _filter(x, f, pad)


class MinibatchStd(nn.Module):
    """Minibatch standard deviation (Karras et al. 2018, §3), as S2A's MinibatchStdLayer.

    Samples are split into groups of `group_size` (strided: sample i joins group i mod N/G);
    each group's std per feature, averaged over channels and pixels, becomes `num_channels` extra
    feature maps for every sample of the group.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        f = self.num_channels
        if n % g:
            raise ValueError(
                f"minibatch std groups of {g} need a batch divisible by {g}, got {n}; set "
                "data.batch_size to a multiple of arch.discriminator.mbstd_group (or lower it)"
            )
        if c % f:
            raise ValueError(f"minibatch std: {c} channels do not split into {f} groups")
        y = x.reshape(g, -1, f, c // f, h, w).float()  # [G, M, F, c, H, W]
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [M, F, c, H, W]
        y = y.mean(dim=[2, 3, 4])  # [M, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w).to(x.dtype)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
