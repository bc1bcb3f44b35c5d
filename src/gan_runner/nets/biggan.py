"""BigGAN's generator and critic (Brock et al. 2019, arXiv:1809.11096), as BigGAN-PyTorch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.nets.attention import AttentionSites
from gan_runner.nets.biggan_blocks import (
    GeneratorBlock,
    discriminator_layout,
    generator_multipliers,
    init_orthogonal,
)
from gan_runner.nets.layers import (
    CriticHeads,
    CriticOutput,
    ProjectionHead,
    check_image_shape,
    check_power_of_two_resolution,
)
from gan_runner.nets.resnet import DownBlock


def _image_stages(data_shape: Sequence[int], width: int) -> tuple[int, int, int]:
    """Channels, resolution and the number of x2 stages between 4x4 and the data."""
    channels, resolution = check_image_shape(data_shape, "biggan")
    stages = check_power_of_two_resolution(resolution) - 2
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return channels, resolution, stages


class BigGANGenerator(nn.Module):
    """BigGAN's generator: shared class embedding, hierarchical z, linear-conditional BatchNorm
    (Brock et al. 2019); `generator(z, labels)` with int64 labels."""

    def __init__(
        self,
        z_dim: int,
        data_shape: Sequence[int],
        width: int = 96,
        num_classes: int = 0,
        shared_dim: int = 128,
        hierarchical: bool = True,
        attention_resolutions: Sequence[int] = (16,),
        multipliers: Sequence[int] | None = None,
        bounded: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(
                "BigGAN's generator is class-conditional (shared class embedding, conditional "
                f"BatchNorm) and num_classes is {num_classes}; use a labelled data set "
                "(data=digits or data=cifar10), or model=sngan / arch=resnet for unlabelled data"
            )
        if shared_dim < 1:
            raise ValueError(f"arch.generator.shared_dim must be >= 1, got {shared_dim}")
        channels, resolution, stages = _image_stages(data_shape, width)
        widths = [width * m for m in generator_multipliers(resolution, stages, multipliers)]
        self.hierarchical = hierarchical
        slots = stages + 1 if hierarchical else 1
        if z_dim < slots:
            raise ValueError(
                f"z_dim {z_dim} is below the {slots} chunks of BigGAN's hierarchical latent at "
                f"{resolution}x{resolution} (one per block plus one); set z_dim >= {slots}"
            )
        # As BigGAN-PyTorch, z_dim is rounded down to a multiple of the slots: the last
        # z_dim % slots coordinates of z are ignored (StudioGAN's 80 = 4 x 20 at 32x32 loses none).
        self.chunk = z_dim // slots
        self.z_used = self.chunk * slots
        cond_dim = shared_dim + (self.chunk if hierarchical else 0)
        # One embedding for every block (the lead's spectral norm skips it: BigGAN-PyTorch found
        # SN on G's embedding "cripples G").
        self.shared = nn.Embedding(num_classes, shared_dim)
        self.linear = nn.Linear(self.chunk, widths[0] * 4 * 4)
        fan_ins = [widths[0], *widths[:-1]]
        self.blocks = nn.ModuleList(
            GeneratorBlock(fan_in, fan_out, cond_dim) for fan_in, fan_out in zip(fan_ins, widths)
        )
        # The last BatchNorm is plain and affine (BigGAN-PyTorch `layers.bn`; compare_gan: "Last
        # BN in G is unconditional").
        layers: list[nn.Module] = [
            nn.BatchNorm2d(widths[-1]),
            nn.ReLU(),
            nn.Conv2d(widths[-1], channels, 3, padding=1),
        ]
        if bounded:
            layers.append(nn.Tanh())
        self.output = nn.Sequential(*layers)
        outputs = {4 * 2 ** (i + 1): fan_out for i, fan_out in enumerate(widths)}
        self.attention = AttentionSites(attention_resolutions, outputs, "generator")
        init_orthogonal(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            raise ValueError("BigGAN's generator is class-conditional: call it with labels")
        return self.synthesize(z, self.shared(labels))

    def synthesize(self, z: Tensor, embedded: Tensor) -> Tensor:
        """Images from z and already-embedded classes (so classes can be interpolated)."""
        z = z[:, : self.z_used]
        if self.hierarchical:
            first, *rest = z.split(self.chunk, dim=1)
            conditions = [torch.cat([embedded, chunk], dim=1) for chunk in rest]
        else:
            first, conditions = z, [embedded] * len(self.blocks)
        h = self.linear(first).view(z.shape[0], -1, 4, 4)
        applied: set[int] = set()
        for block, condition in zip(self.blocks, conditions):
            h = self.attention.after(block(h, condition), applied)
        return self.output(h)


class BigGANDiscriminator(nn.Module):
    """BigGAN's critic: BigGAN-PyTorch's D table of residual blocks, sum pooling and projection
    (Brock et al. 2019; Miyato & Koyama 2018)."""

    def __init__(
        self,
        data_shape: Sequence[int],
        width: int = 96,
        num_classes: int = 0,
        attention_resolutions: Sequence[int] = (16,),
        multipliers: Sequence[int] | None = None,
        heads: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        channels, resolution, stages = _image_stages(data_shape, width)
        chosen, downsample = discriminator_layout(resolution, stages, multipliers)
        widths = [width * m for m in chosen]
        fan_ins = [channels, *widths[:-1]]
        # BigGAN-PyTorch's DBlock is SNGAN's: an optimized first block (no ReLU on pixels), then
        # pre-activation blocks with a learned 1x1 skip when channels or resolution change.
        self.blocks = nn.ModuleList(
            DownBlock(fan_in, fan_out, downsample=down, first=i == 0)
            for i, (fan_in, fan_out, down) in enumerate(zip(fan_ins, widths, downsample))
        )
        self.score = nn.Linear(widths[-1], 1)
        self.projection = ProjectionHead(num_classes, widths[-1]) if num_classes else None
        self.heads = CriticHeads(widths[-1], heads) if heads else None
        outputs, size = {}, resolution
        for fan_out, down in zip(widths, downsample):
            size //= 2 if down else 1
            outputs.setdefault(size, fan_out)  # attention follows the first block of a size
        self.attention = AttentionSites(attention_resolutions, outputs, "discriminator")
        init_orthogonal(self)

    def outputs(self, x: Tensor, labels: Tensor | None = None) -> CriticOutput:
        h, applied = x, set()
        for block in self.blocks:
            h = self.attention.after(block(h), applied)
        h = F.relu(h).sum(dim=(2, 3))  # global sum pooling, as BigGAN-PyTorch
        scores = self.score(h).squeeze(1)
        if self.projection is not None:
            scores = scores + self.projection(h, labels)  # + <embed(y), h>
        return CriticOutput(scores, h, self.heads(h) if self.heads is not None else {})

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.outputs(x, labels).scores
