"""Fully connected generator and discriminator, for 2D mixtures and flattened small images."""

from __future__ import annotations

import math
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
    norm_1d,
)


def _mlp(widths: Sequence[int], norm: str, activation: nn.Module) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), norm_1d(norm, fan_out), activation]
    return layers


class MLPGenerator(nn.Module):
    """A multilayer perceptron generator, as in Goodfellow et al. 2014 and PacGAN's 2D setup."""

    def __init__(
        self,
        z_dim: int,
        data_shape: Sequence[int],
        hidden: Sequence[int] = (512, 512, 512),
        norm: str = "none",
        num_classes: int = 0,
        bounded: bool = True,
    ) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        self.data_shape = tuple(data_shape)
        self.embed = LabelEmbedding(num_classes, z_dim) if num_classes else None
        in_dim = 2 * z_dim if num_classes else z_dim
        layers = _mlp([in_dim, *hidden], norm, nn.ReLU())
        layers.append(nn.Linear(hidden[-1] if hidden else in_dim, math.prod(self.data_shape)))
        if bounded:  # image data lives in [-1, 1]; 2D mixtures are unbounded
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z).view(z.shape[0], *self.data_shape)


class MLPDiscriminator(nn.Module):
    """A multilayer perceptron critic with leaky ReLUs, conditioned by projection (Miyato &
    Koyama 2018) or by one-hot labels joined to its input (Mirza & Osindero 2014)."""

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden: Sequence[int] = (512, 512, 512),
        norm: str = "none",
        num_classes: int = 0,
        negative_slope: float = 0.2,
        conditioning: str = "projection",
        heads: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_conditioning(conditioning)
        concat = bool(num_classes) and conditioning == "concat"
        in_dim = math.prod(data_shape) + (num_classes if concat else 0)
        self.features = nn.Sequential(*_mlp([in_dim, *hidden], norm, nn.LeakyReLU(negative_slope)))
        width = hidden[-1] if hidden else in_dim
        self.score = nn.Linear(width, 1)
        projection = num_classes and not concat
        self.projection = ProjectionHead(num_classes, width) if projection else None
        self.concat = ConcatLabels(num_classes) if concat else None
        self.heads = CriticHeads(width, heads) if heads else None

    def outputs(self, x: Tensor, labels: Tensor | None = None) -> CriticOutput:
        x = x.flatten(1)
        if self.concat is not None:
            x = self.concat(x, labels)
        h = self.features(x)
        scores = self.score(h).squeeze(1)
        if self.projection is not None:
            scores = scores + self.projection(h, labels)
        return CriticOutput(scores, h, self.heads(h) if self.heads is not None else {})

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.outputs(x, labels).scores
