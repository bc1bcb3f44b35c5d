"""Progressive growing of GANs (Karras, Aila, Laine, Lehtinen, ICLR 2018, arXiv:1710.10196).

The schedule is a pure function of images seen, as PGG's TrainingSchedule. The networks hold
their stage (resolution, alpha) in persistent buffers, so a checkpoint, load_state_dict and the
G-EMA copy carry it, and run at that resolution: G returns images at it, D takes images at it.
Conventions are PGG's, not StyleGAN2's: the He gain sits in the weights (gain √2, the dense
layer of G's 4x4 block √2/4) and the leaky ReLU has no gain of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.nets.equalized import EqualizedConv2d, EqualizedLinear, MinibatchStd, pixel_norm
from gan_runner.nets.layers import CriticOutput, ProjectionHead, check_image_shape

GAIN = math.sqrt(2.0)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class Stage:
    """Where progressive growing stands: the networks' resolution, the new block's weight."""

    resolution: int
    alpha: float  # 1: stable (the new block alone); in (0, 1): fading it in over the old one
    lod: float  # PGG's level of detail: log2(final / resolution) while stable


@dataclass(frozen=True)
class ProgressiveSchedule:
    """PGG's resolution schedule: stable_kimg at each resolution, then fade_kimg fading in the
    next (Karras et al. 2018, §3; TrainingSchedule in the authors' train.py)."""

    final_resolution: int
    initial_resolution: int = 4
    stable_kimg: float = 600.0
    fade_kimg: float = 600.0

    def __post_init__(self) -> None:
        final, initial = self.final_resolution, self.initial_resolution
        if not _is_power_of_two(final):
            raise ValueError(f"data.resolution {final} is not a power of two; set it to 32 or 64")
        if not _is_power_of_two(initial) or initial < 4:
            raise ValueError(
                f"arch.generator.initial_resolution {initial} must be a power of two >= 4; set 4"
            )
        if initial > final:
            raise ValueError(
                f"arch.generator.initial_resolution {initial} exceeds data.resolution {final}; "
                f"set it to {final} or less"
            )
        for key in ("stable_kimg", "fade_kimg"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}; PGG uses 600")
        if self.stable_kimg + self.fade_kimg <= 0:
            raise ValueError("stable_kimg + fade_kimg must be > 0; PGG uses 600 and 600")

    def lod(self, images_seen: int) -> float:
        """PGG's lod: log2(final/initial) at the start, down by one per stable+fade phase."""
        kimg = images_seen / 1000.0
        phase_dur = self.stable_kimg + self.fade_kimg
        phase_idx = math.floor(kimg / phase_dur)
        phase_kimg = kimg - phase_idx * phase_dur
        # fade_kimg 0: phase_kimg < stable_kimg always, so lod steps by whole levels.
        fading = max(phase_kimg - self.stable_kimg, 0.0) / self.fade_kimg if self.fade_kimg else 0
        levels = math.log2(self.final_resolution) - math.log2(self.initial_resolution)
        return max(levels - phase_idx - fading, 0.0)

    def at(self, images_seen: int) -> Stage:
        """The stage after `images_seen` images. While fading in resolution r, floor(lod) has
        already dropped: the resolution is the NEW one, r, with alpha = 1 − frac(lod) in (0, 1),
        as in PGG (the fade to 8 at 32×32 is lod in (2, 3): resolution 8, not 4)."""
        lod = self.lod(images_seen)
        level = math.floor(lod)
        resolution = self.final_resolution >> level
        return Stage(resolution, 1.0 - (lod - level), lod)

    def optimizer_resets(self, images_before: int, images_after: int) -> bool:
        """PGG's reset_opt_for_new_lod: Adam restarts when floor(lod) or ceil(lod) changes, i.e.
        on the step that starts a fade and on the step that ends it."""
        before, after = self.lod(images_before), self.lod(images_after)
        return math.floor(before) != math.floor(after) or math.ceil(before) != math.ceil(after)


def fade_reals(x: Tensor, resolution: int, alpha: float) -> Tensor:
    """Real images as PGG's process_reals feeds D: box-filtered (2×2 means) down to `resolution`,
    then lerp(upsample_nearest(avgpool2(x)), x, alpha), so reals fade exactly like G's output."""
    size = x.shape[-1]
    if x.shape[-2] != size or not _is_power_of_two(size // resolution) or size % resolution:
        raise ValueError(
            f"fade_reals: images of {tuple(x.shape[-2:])} do not box-filter down to {resolution}"
        )
    while x.shape[-1] > resolution:
        x = F.avg_pool2d(x, 2)  # dataset_tool.py's one level: the mean of each 2×2 block
    if alpha < 1.0:
        x = torch.lerp(F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0), x, alpha)
    return x


def _width(resolution: int, channel_base: int, channel_max: int) -> int:
    # PGG's nf(stage) = min(fmap_base / 2^stage, fmap_max) at stage log2(resolution) − 1: with
    # fmap_base 8192, 512 channels up to 32×32 and 16 at 1024.
    return max(min(2 * channel_base // resolution, channel_max), 1)


def _check_sizes(
    data_shape: Sequence[int], initial_resolution: int, channel_base: int, channel_max: int
) -> tuple[int, int]:
    channels, final = check_image_shape(data_shape, "progressive")
    ProgressiveSchedule(final, initial_resolution)  # refuses either resolution in one line
    if channel_base < 1 or channel_max < 1:
        raise ValueError(
            f"channel_base and channel_max must be >= 1, got {channel_base}, {channel_max}"
        )
    return channels, final


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)  # PGG: the gain is in the weights, none after the activation


class _Staged(nn.Module):
    """The stage buffers both players share, and set_stage."""

    def _init_stage(self, initial: int, final: int) -> None:
        self.initial_resolution, self.final_resolution = initial, final
        self.register_buffer("resolution", torch.tensor(final, dtype=torch.long))
        self.register_buffer("alpha", torch.tensor(1.0))

    def set_stage(self, resolution: int, alpha: float) -> None:
        """Run at `resolution`, its block weighted `alpha` over the upsampled one below."""
        low, high = self.initial_resolution, self.final_resolution
        if not _is_power_of_two(resolution) or not low <= resolution <= high:
            raise ValueError(f"resolution {resolution} is not a power of two from {low} to {high}")
        if not 0.0 <= alpha <= 1.0 or (alpha < 1.0 and resolution == low):
            raise ValueError(f"stage alpha {alpha} must be in [0, 1], and 1 at {low}×{low}")
        with torch.no_grad():
            self.resolution.fill_(resolution)
            self.alpha.fill_(alpha)

    @property
    def growing(self) -> bool:
        """True until the final resolution has fully faded in (metrics wait for it)."""
        resolution, alpha = self.stage()
        return resolution < self.final_resolution or alpha < 1.0

    @property
    def stage_name(self) -> str:
        resolution, alpha = self.stage()
        final = self.final_resolution
        return f"{resolution}×{resolution} at α={alpha:.3f} of {final}×{final}"

    def stage(self) -> tuple[int, float]:
        # The buffers are the one source of truth: EMA copies and load_state_dict write them in
        # place, so a Python copy would go stale (the price: a host read per forward).
        return int(self.resolution), float(self.alpha)


class _UpBlock(nn.Module):
    """G's block: nearest ×2, then two 3×3 convs, each with lrelu and pixel norm."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(fan_in, fan_out, 3, gain=GAIN)
        self.conv1 = EqualizedConv2d(fan_out, fan_out, 3, gain=GAIN)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0)
        x = pixel_norm(_act(self.conv0(x)))
        return pixel_norm(_act(self.conv1(x)))


class _FirstBlock(nn.Module):
    """G's 4×4 block: the pixel-normed latent through a dense layer, then a 3×3 conv."""

    def __init__(self, in_features: int, width: int) -> None:
        super().__init__()
        self.width = width
        # PGG's gain √2/4 ("to match the original Theano implementation"); one bias per channel.
        self.dense = EqualizedLinear(in_features, width * 16, bias=False, gain=GAIN / 4)
        self.bias = nn.Parameter(torch.zeros(width))
        self.conv = EqualizedConv2d(width, width, 3, gain=GAIN)

    def forward(self, latent: Tensor) -> Tensor:
        x = self.dense(pixel_norm(latent)).view(-1, self.width, 4, 4)
        x = pixel_norm(_act(x + self.bias[None, :, None, None]))
        return pixel_norm(_act(self.conv(x)))


class ProgressiveGenerator(_Staged):
    """PGGAN's generator: pixel norm, equalized lr, toRGB at every resolution, fade-in of each
    new block (Karras et al. 2018). Conditional: one-hot labels joined to z, as PGG."""

    def __init__(
        self,
        z_dim: int,
        data_shape: Sequence[int],
        num_classes: int = 0,
        channel_base: int = 8192,
        channel_max: int = 512,
        initial_resolution: int = 4,
        bounded: bool = False,
    ) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        channels, final = _check_sizes(data_shape, initial_resolution, channel_base, channel_max)
        self._init_stage(initial_resolution, final)
        self.num_classes, self.bounded = num_classes, bounded
        nf = partial(_width, channel_base=channel_base, channel_max=channel_max)
        self.first = _FirstBlock(z_dim + num_classes, nf(4))
        self.blocks = nn.ModuleDict()
        self.to_rgb = nn.ModuleDict()
        res = 4
        while res <= final:
            if res > 4:
                self.blocks[str(res)] = _UpBlock(nf(res // 2), nf(res))
            if res >= initial_resolution:  # a toRGB below the first stage would never run
                self.to_rgb[str(res)] = EqualizedConv2d(nf(res), channels, 1, gain=1.0)
            res *= 2

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        resolution, alpha = self.stage()
        latent = z
        if self.num_classes:
            if labels is None:
                raise ValueError("a conditional ProgressiveGenerator needs labels")
            latent = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)
        x = self.first(latent)
        previous = x
        res = 4
        while res < resolution:
            res *= 2
            previous, x = x, self.blocks[str(res)](x)
        image = self.to_rgb[str(resolution)](x)
        if alpha < 1.0:  # the old toRGB upsampled, image = lerp(old, new, alpha)
            old = F.interpolate(self.to_rgb[str(resolution // 2)](previous), scale_factor=2.0)
            image = torch.lerp(old, image, alpha)
        return torch.tanh(image) if self.bounded else image


class _DownBlock(nn.Module):
    """D's block: two 3×3 convs with lrelu, then a 2×2 average pool."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(fan_in, fan_in, 3, gain=GAIN)
        self.conv1 = EqualizedConv2d(fan_in, fan_out, 3, gain=GAIN)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(_act(self.conv1(_act(self.conv0(x)))), 2)


class ProgressiveDiscriminator(_Staged):
    """PGGAN's critic: fromRGB at every resolution, fade-in, minibatch std at 4×4 (Karras et al.
    2018). Conditional: a projection term <embed(y), h> on the last hidden layer (Miyato &
    Koyama 2018) in place of PGG's AC-GAN outputs, so the loss needs no class term."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        channel_base: int = 8192,
        channel_max: int = 512,
        initial_resolution: int = 4,
        mbstd_group: int = 4,
    ) -> None:
        super().__init__()
        channels, final = _check_sizes(data_shape, initial_resolution, channel_base, channel_max)
        if mbstd_group < 1:
            raise ValueError(f"mbstd_group must be >= 1 (1 turns it off), got {mbstd_group}")
        self._init_stage(initial_resolution, final)
        nf = partial(_width, channel_base=channel_base, channel_max=channel_max)
        self.from_rgb = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        res = final
        while res >= 4:
            if res >= initial_resolution:
                self.from_rgb[str(res)] = EqualizedConv2d(channels, nf(res), 1, gain=GAIN)
            if res > 4:
                self.blocks[str(res)] = _DownBlock(nf(res), nf(res // 2))
            res //= 2
        self.mbstd = MinibatchStd(mbstd_group, 1) if mbstd_group > 1 else None
        extra = 1 if self.mbstd is not None else 0
        self.conv = EqualizedConv2d(nf(4) + extra, nf(4), 3, gain=GAIN)
        self.dense = EqualizedLinear(nf(4) * 16, nf(2), gain=GAIN)
        self.score = EqualizedLinear(nf(2), 1, gain=1.0)
        self.projection = ProjectionHead(num_classes, nf(2)) if num_classes else None

    def outputs(self, x: Tensor, labels: Tensor | None = None) -> CriticOutput:
        resolution, alpha = self.stage()
        if tuple(x.shape[-2:]) != (resolution, resolution):
            raise ValueError(
                f"the discriminator runs at {resolution}×{resolution}, got images of "
                f"{tuple(x.shape[-2:])}; pass reals through fade_reals (nets/progressive.py)"
            )
        h = _act(self.from_rgb[str(resolution)](x))
        res = resolution
        if res > 4:
            h = self.blocks[str(res)](h)
            if alpha < 1.0:  # h = lerp(fromRGB_{r/2}(avgpool2(x)), block_r(fromRGB_r(x)), alpha)
                old = _act(self.from_rgb[str(res // 2)](F.avg_pool2d(x, 2)))
                h = torch.lerp(old, h, alpha)
            res //= 2
        while res > 4:
            h = self.blocks[str(res)](h)
            res //= 2
        if self.mbstd is not None:
            h = self.mbstd(h)
        h = _act(self.dense(_act(self.conv(h)).flatten(1)))
        scores = self.score(h).squeeze(1)
        if self.projection is not None:
            if labels is None:
                raise ValueError("a conditional ProgressiveDiscriminator needs labels")
            scores = scores + self.projection(h, labels)
        return CriticOutput(scores, h)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.outputs(x, labels).scores
