"""BigGAN's layers and width tables (Brock et al. 2019, arXiv:1809.11096), as BigGAN-PyTorch."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.nets.resnet import _upsample


def init_orthogonal(network: nn.Module) -> None:
    """BigGAN-PyTorch's `--G_init ortho`/`--D_init ortho` on every conv, linear and embedding
    (attention convs and the shared embedding included, as its `init_weights` does), with
    StudioGAN's zero biases (BigGAN-PyTorch leaves PyTorch's uniform ones)."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d | nn.Linear | nn.Embedding):
            nn.init.orthogonal_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class LinearConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias are linear in a conditioning vector (BigGAN's `ccbn`).

    out = BN_noaffine(x) · (1 + W_γ c) + W_β c, W_γ and W_β bias-free (Brock et al. 2019 §3; de
    Vries et al. 2017): with c = [shared class embedding, z chunk], and zero W it is plain BN.
    """

    def __init__(self, cond_dim: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, eps=eps, affine=False)
        self.gain = nn.Linear(cond_dim, channels, bias=False)
        self.bias = nn.Linear(cond_dim, channels, bias=False)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        gain = 1 + self.gain(c)[:, :, None, None]  # 1 + W_γ c
        return self.norm(x) * gain + self.bias(c)[:, :, None, None]  # ... + W_β c


class GeneratorBlock(nn.Module):
    """BigGAN's up-block (BigGAN-PyTorch `GBlock`): cBN-ReLU-up-conv3, cBN-ReLU-conv3, 1x1 skip."""

    def __init__(self, fan_in: int, fan_out: int, cond_dim: int) -> None:
        super().__init__()
        self.norm1 = LinearConditionalBatchNorm2d(cond_dim, fan_in)
        self.conv1 = nn.Conv2d(fan_in, fan_out, 3, padding=1)
        self.norm2 = LinearConditionalBatchNorm2d(cond_dim, fan_out)
        self.conv2 = nn.Conv2d(fan_out, fan_out, 3, padding=1)
        # Every block upsamples, so the skip always needs its learnable 1x1 conv.
        self.shortcut = nn.Conv2d(fan_in, fan_out, 1)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.conv1(_upsample(F.relu(self.norm1(x, c))))
        h = self.conv2(F.relu(self.norm2(h, c)))
        return h + self.shortcut(_upsample(x))


def _check_multipliers(
    multipliers: Sequence[int] | None, default: list[int], network: str, resolution: int
) -> list[int]:
    if multipliers is None:
        return default
    chosen = [int(m) for m in multipliers]
    if len(chosen) != len(default) or min(chosen, default=1) < 1:
        raise ValueError(
            f"arch.{network}.multipliers {list(multipliers)} must hold {len(default)} positive "
            f"integers at {resolution}x{resolution} (one per block), or be null for BigGAN's table"
        )
    return chosen


def generator_multipliers(
    resolution: int, stages: int, multipliers: Sequence[int] | None
) -> list[int]:
    """Each up-block's output channels / width; the 4x4 input has the first block's width.

    BigGAN-PyTorch's G_arch: 32 -> [4, 4, 4]; 64 -> [16, 8, 4, 2]; 128 -> [16, 8, 4, 2, 1].
    It has no 8 or 16 entry: there every block is 4, as at 32.
    """
    table = {64: [16, 8, 4, 2], 128: [16, 8, 4, 2, 1]}
    return _check_multipliers(
        multipliers, table.get(resolution, [4] * stages), "generator", resolution
    )


def discriminator_layout(
    resolution: int, stages: int, multipliers: Sequence[int] | None
) -> tuple[list[int], list[bool]]:
    """Each critic block's output channels / width, and whether it halves the resolution.

    BigGAN-PyTorch's D_arch: 32 -> [4, 4, 4, 4] halving twice (it stops at 8x8); 64 ->
    [1, 2, 4, 8, 16] and 128 -> [1, 2, 4, 8, 16, 16], halving down to 4x4, then one block at
    4x4. It has no 8 or 16 entry: there [4] per halving down to 4x4 plus one block at 4x4.
    """
    if resolution == 32:
        default, downsample = [4, 4, 4, 4], [True, True, False, False]
    else:
        table = {64: [1, 2, 4, 8, 16], 128: [1, 2, 4, 8, 16, 16]}
        default = table.get(resolution, [4] * (stages + 1))
        downsample = [True] * stages + [False]
    return _check_multipliers(multipliers, default, "discriminator", resolution), downsample
