"""SAGAN's self-attention block as released, and where the image families insert it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv1x1(fan_in: int, fan_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(fan_in, fan_out, 1, bias=False)  # the released convs have no bias
    nn.init.xavier_uniform_(conv.weight)
    return conv


class SelfAttention(nn.Module):
    """The self-attention block of Zhang et al. 2019 (SAGAN) as its released code builds it.

    brain-research/self-attention-gan's `sn_non_local_block_sim` (and BigGAN-PyTorch's
    `Attention`), not the paper's text: queries θ and keys φ at C/8 channels, values g at C/2,
    keys and values max-pooled 2×2 (N queries attend to N/4 keys), an output 1×1 conv back to C,
    no biases, and y = x + γ·o with γ one scalar starting at 0, so the block starts as the
    identity and only γ learns at the first step. `value_ratio: 8, key_pool: 1` is the paper's.
    """

    def __init__(
        self, channels: int, key_ratio: int = 8, value_ratio: int = 2, key_pool: int = 2
    ) -> None:
        super().__init__()
        for key, value in (("key_ratio", key_ratio), ("value_ratio", value_ratio)):
            if value < 1 or channels // value < 1:
                raise ValueError(f"attention {key} {value} leaves no channels of {channels}")
        if key_pool < 1:
            raise ValueError(f"attention key_pool must be >= 1, got {key_pool}")
        keys, values = channels // key_ratio, channels // value_ratio
        self.key_pool = key_pool
        self.theta = _conv1x1(channels, keys)  # queries
        self.phi = _conv1x1(channels, keys)  # keys
        self.g = _conv1x1(channels, values)  # values
        self.out = _conv1x1(values, channels)
        self.gamma = nn.Parameter(torch.zeros(()))  # one scalar, not one per sample

    def _pool(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.key_pool) if self.key_pool > 1 else x

    def attention(self, x: Tensor) -> Tensor:
        """β: (B, N, N/pool²), each query's softmax over the pooled keys (rows sum to 1)."""
        height, width = x.shape[-2:]
        if height % self.key_pool or width % self.key_pool:
            raise ValueError(
                f"self-attention pools keys {self.key_pool}x{self.key_pool}, which a "
                f"{height}x{width} map does not divide; attend at an even resolution"
            )
        queries = self.theta(x).flatten(2)  # (B, C/8, N)
        keys = self._pool(self.phi(x)).flatten(2)  # (B, C/8, N/4)
        return torch.softmax(queries.transpose(1, 2) @ keys, dim=-1)  # softmax over keys

    def forward(self, x: Tensor) -> Tensor:
        beta = self.attention(x)
        values = self._pool(self.g(x)).flatten(2)  # (B, C/2, N/4)
        attended = (values @ beta.transpose(1, 2)).view(x.shape[0], -1, *x.shape[2:])
        return x + self.gamma * self.out(attended)  # y = x + γ·o


class AttentionSites(nn.ModuleDict):
    """Self-attention blocks keyed by the resolution whose feature maps they follow."""

    def __init__(
        self, resolutions: Sequence[int], channels_at: dict[int, int], network: str
    ) -> None:
        super().__init__()
        for resolution in resolutions or ():
            if resolution not in channels_at:
                have = ", ".join(str(r) for r in sorted(channels_at))
                raise ValueError(
                    f"arch.{network}.attention_resolutions has {resolution}, a resolution the "
                    f"{network}'s blocks do not output (they output {have}); pick one of those"
                )
            self[str(resolution)] = SelfAttention(channels_at[resolution])

    def after(self, h: Tensor, applied: set[int]) -> Tensor:
        """h through the block at its resolution, once: the first block to output that size."""
        resolution = h.shape[-1]
        block = self._modules.get(str(resolution)) if self else None
        if block is None or resolution in applied:
            return h
        applied.add(resolution)
        return block(h)
