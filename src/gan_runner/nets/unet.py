"""pix2pix's networks (Isola et al. 2017, arXiv:1611.07004): a U-Net generator A -> B and a
conditional PatchGAN critic on the channel concatenation (a, b).

Layer by layer as the official code (junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py:
UnetGenerator, NLayerDiscriminator): 4x4 convolutions of stride 2, leaky ReLUs (0.2) going down
and ReLUs going up, no norm on the outermost layers or the bottleneck's down conv, convolution
biases only where no batch norm follows, weights from N(0, 0.02).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.nets.layers import check_image_shape
from gan_runner.nets.translation import PatchGANCritic

NORMS = ("batch", "instance", "none")


class PaperBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that normalizes by the test batch's own statistics in eval mode, as pix2pix
    samples (Isola et al. 2017, §3.3: "batch normalization using the statistics of the test
    batch"); with `test_batch_stats` off it is plain BatchNorm2d (running statistics)."""

    def __init__(self, channels: int, test_batch_stats: bool = True) -> None:
        super().__init__(channels)
        self.test_batch_stats = test_batch_stats

    def forward(self, x: Tensor) -> Tensor:
        if self.training or not self.test_batch_stats:
            return super().forward(x)
        # No running statistics passed: sampling never moves the buffers that training keeps.
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class PaperDropout(nn.Module):
    """Dropout as pix2pix's only noise, kept on at test time (Isola et al. 2017, §3.1).

    In eval mode its masks come from its own seeded stream, not torch's global one, so sample
    grids and metrics never change what training draws afterwards (exact resume holds).
    """

    def __init__(self, p: float, at_test: bool = True, seed: int = 0) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}; set arch.generator.dropout")
        self.p, self.at_test, self.seed = p, at_test, seed
        self._noise: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return F.dropout(x, self.p, training=True)
        if not self.at_test or self.p == 0:
            return x
        if self._noise is None or self._noise.device != x.device:
            self._noise = torch.Generator(device=x.device).manual_seed(self.seed)
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=self._noise)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, at_test={self.at_test}"


def _norm(kind: str, channels: int, test_batch_stats: bool = False) -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got '{kind}'")
    if kind == "batch":
        return PaperBatchNorm2d(channels, test_batch_stats)
    if kind == "instance":  # the official code's: no affine parameters, no running statistics
        return nn.InstanceNorm2d(channels)
    return nn.Identity()


def _init_weights(net: nn.Module) -> None:
    # The official init_weights('normal', 0.02): conv weights N(0, 0.02), BN scales N(1, 0.02).
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class UNetGenerator(nn.Module):
    """pix2pix's U-Net generator (Isola et al. 2017, §3.2.1): an encoder-decoder whose down
    layer i feeds up layer n - i through a skip connection; tanh out.

    `depth` stride-2 layers (null: log2(resolution), a 1x1 bottleneck as unet_256's 8 at 256
    px). Widths base_width * 2^i capped at max_width. Dropout `dropout` on the first
    `dropout_layers` decoder layers from the bottleneck (the paper's CD512 x 3; the official code
    puts them one layer further out, which at depth <= 5 leaves none). `dropout_at_test` and
    `test_batch_stats` keep the paper's inference (dropout on, test-batch statistics); off, the
    network samples deterministically like any eval-mode network. Called as the module calls a
    generator: forward(a, labels=None) -> b, labels ignored.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        in_channels: int | None = None,
        depth: int | None = None,
        base_width: int = 64,
        max_width: int = 512,
        norm: str = "batch",
        dropout: float = 0.5,
        dropout_layers: int = 3,
        dropout_at_test: bool = True,
        test_batch_stats: bool = True,
        dropout_seed: int = 0,
    ) -> None:
        super().__init__()
        self.out_channels, resolution = check_image_shape(data_shape, "pix2pix_unet")
        self.in_channels = self.out_channels if in_channels is None else int(in_channels)
        widths = _unet_widths(resolution, depth, base_width, max_width)
        bias = norm != "batch"  # batch norm's shift makes a conv bias redundant

        def norm_layer(channels: int) -> nn.Module:
            return _norm(norm, channels, test_batch_stats)

        downs = [nn.Conv2d(self.in_channels, widths[0], 4, 2, 1, bias=bias)]
        for i in range(1, len(widths)):
            layers = [nn.LeakyReLU(0.2), nn.Conv2d(widths[i - 1], widths[i], 4, 2, 1, bias=bias)]
            if i < len(widths) - 1:  # no norm on the bottleneck: 1x1 maps in unet_256
                layers.append(norm_layer(widths[i]))
            downs.append(nn.Sequential(*layers))
        ups = []
        for i in range(len(widths) - 1, 0, -1):  # bottleneck outwards; skips double fan-in
            fan_in = widths[i] * (1 if i == len(widths) - 1 else 2)
            layers = [nn.ReLU(), nn.ConvTranspose2d(fan_in, widths[i - 1], 4, 2, 1, bias=bias)]
            layers.append(norm_layer(widths[i - 1]))
            if len(ups) < dropout_layers and dropout > 0:
                layers.append(PaperDropout(dropout, dropout_at_test, dropout_seed + len(ups)))
            ups.append(nn.Sequential(*layers))
        outermost = nn.ConvTranspose2d(2 * widths[0], self.out_channels, 4, 2, 1)
        ups.append(nn.Sequential(nn.ReLU(), outermost, nn.Tanh()))
        self.downs, self.ups = nn.ModuleList(downs), nn.ModuleList(ups)
        _init_weights(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = self.ups[0](skips.pop())
        for up in self.ups[1:]:
            x = up(torch.cat([skips.pop(), x], dim=1))  # official order: skip first
        return x


def _unet_widths(resolution: int, depth: int | None, base_width: int, max_width: int) -> list[int]:
    most = int(math.log2(resolution)) if resolution > 0 else 0
    if 2**most != resolution or most < 2:
        raise ValueError(
            f"pix2pix_unet needs a power-of-two resolution >= 4, got {resolution}; set "
            "data.resolution"
        )
    depth = most if depth is None else int(depth)
    if not 2 <= depth <= most:
        raise ValueError(
            f"arch.generator.depth={depth} does not fit {resolution} px images; use 2 to {most} "
            f"(null: {most}, a 1x1 bottleneck)"
        )
    if base_width < 1 or max_width < 1:
        raise ValueError(f"base_width and max_width must be >= 1, got {base_width}, {max_width}")
    return [min(base_width * 2**i, max_width) for i in range(depth)]


class ConditionalPatchCritic(PatchGANCritic):
    """pix2pix's conditional PatchGAN (Isola et al. 2017, §3.2.2): a logit per overlapping
    patch of the pair (a, b) joined on channels, the official NLayerDiscriminator.

    The game calls it as discriminator(b, None, condition=a) -> (N, 1, H', W') logits: the
    PatchGAN of nets/translation.py on a's and b's channels; n_layers 3 is the 70x70 PatchGAN (a
    30x30 map at 256 px). null: the most, up to 3, that leave a map of at least 2x2 (1 at 8 px,
    2 at 16 px, 3 from 32 px).
    """

    takes_condition = True  # game=pix2pix refuses a critic that cannot see a (zoo-games §8.3)

    def __init__(
        self,
        data_shape: Sequence[int],
        condition_channels: int | None = None,
        width: int = 64,
        n_layers: int | None = None,
        norm: str = "batch",
        negative_slope: float = 0.2,
    ) -> None:
        channels, resolution = check_image_shape(data_shape, "pix2pix_unet")
        condition = channels if condition_channels is None else int(condition_channels)
        n_layers = _patch_layers(resolution, n_layers)
        super().__init__(channels + condition, width, n_layers, norm, negative_slope, resolution)
        self.in_channels = channels + condition

    def forward(
        self, x: Tensor, labels: Tensor | None = None, condition: Tensor | None = None
    ) -> Tensor:
        if condition is None:
            raise ValueError(
                "ConditionalPatchCritic scores (a, b) pairs: pass condition=a (the source image)"
            )
        return self.net(torch.cat([condition, x], dim=1))  # the official cat((real_A, B), 1)


def _patch_layers(resolution: int, n_layers: int | None) -> int:
    # Stride-2 layers halve the map; the two 4x4 stride-1 layers (padding 1) take 1 px each.
    most = int(math.log2(resolution)) - 2 if resolution >= 4 else 0
    if n_layers is None:
        n_layers = min(3, most)
    if not 1 <= n_layers <= most:
        raise ValueError(
            f"arch.discriminator.n_layers={n_layers} leaves no 2x2 logit map at {resolution} px; "
            f"use 1 to {max(most, 1)} (null: {min(3, max(most, 1))})"
        )
    return n_layers
