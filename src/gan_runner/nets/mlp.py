"""Fully connected generator and discriminator, for 2D mixtures and flattened small images."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gan_runner.nets.layers import (
    ConcatLabels,
    CriticHeads,
    CriticOutput,
    GaussianNoise,
    LabelEmbedding,
    MinibatchDiscrimination,
    ProjectionHead,
    VirtualBatchReference,
    check_conditioning,
    generator_norm,
    norm_1d,
)


def _mlp(
    widths: Sequence[int], norm: Callable[[int], nn.Module], activation: nn.Module
) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), norm(fan_out), activation]
    return layers


# The critic's hidden activation by name; leaky ReLU is the default of every recipe.
CRITIC_ACTIVATIONS: dict[str, Callable[[float], nn.Module]] = {
    "leaky_relu": nn.LeakyReLU,
    "relu": lambda slope: nn.ReLU(),
    "tanh": lambda slope: nn.Tanh(),  # Nowozin et al. 2016's 1D critic
}


def critic_activation(name: str, negative_slope: float) -> nn.Module:
    if name not in CRITIC_ACTIVATIONS:
        raise ValueError(
            f"activation={name!r} is not a critic activation; choose one of "
            f"{', '.join(CRITIC_ACTIVATIONS)}"
        )
    return CRITIC_ACTIVATIONS[name](negative_slope)


class MLPGenerator(nn.Module):
    """A multilayer perceptron generator, as in Goodfellow et al. 2014 and PacGAN's 2D setup.

    `norm: virtual_batch` normalizes against a fixed reference batch of `reference_size` latents
    (Salimans et al. 2016, §3.5) that runs ahead of every batch, in training and sampling alike.
    """

    def __init__(
        self,
        z_dim: int,
        data_shape: Sequence[int],
        hidden: Sequence[int] = (512, 512, 512),
        norm: str = "none",
        num_classes: int = 0,
        bounded: bool = True,
        reference_size: int = 64,
        reference_seed: int = 0,
    ) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        self.data_shape = tuple(data_shape)
        self.embed = LabelEmbedding(num_classes, z_dim) if num_classes else None
        self.reference = None
        if norm == "virtual_batch":
            self.reference = VirtualBatchReference(
                reference_size, z_dim, num_classes, reference_seed
            )
        in_dim = 2 * z_dim if num_classes else z_dim
        layers = _mlp(
            [in_dim, *hidden],
            lambda features: generator_norm(norm, features, reference_size, image=False),
            nn.ReLU(),
        )
        layers.append(nn.Linear(hidden[-1] if hidden else in_dim, math.prod(self.data_shape)))
        if bounded:  # image data lives in [-1, 1]; 2D mixtures are unbounded
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.reference is not None:
            z, labels = self.reference.prepend(z, labels)
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        out = self.net(z)
        if self.reference is not None:
            out = out[self.reference.size :]  # the reference batch only set the statistics
        return out.view(out.shape[0], *self.data_shape)


class MLPDiscriminator(nn.Module):
    """A multilayer perceptron critic with leaky ReLUs (or `activation: tanh | relu`),
    conditioned by projection (Miyato & Koyama 2018) or by one-hot labels joined to its input
    (Mirza & Osindero 2014).

    `minibatch_discrimination: {kernels: B, kernel_dim: C}` scores each sample's closeness to
    the rest of its batch beside its last hidden layer (Salimans et al. 2016, §3.2).
    `input_noise` σ adds Gaussian noise to its inputs while training (their MNIST critic).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden: Sequence[int] = (512, 512, 512),
        norm: str = "none",
        num_classes: int = 0,
        negative_slope: float = 0.2,
        conditioning: str = "projection",
        heads: Mapping[str, Any] | None = None,
        minibatch_discrimination: Mapping[str, int] | None = None,
        input_noise: float = 0.0,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        check_conditioning(conditioning)
        nonlinearity = critic_activation(activation, negative_slope)
        self.input_noise = GaussianNoise(input_noise)  # no parameters: nothing else moves
        concat = bool(num_classes) and conditioning == "concat"
        in_dim = math.prod(data_shape) + (num_classes if concat else 0)
        layers = _mlp([in_dim, *hidden], lambda f: norm_1d(norm, f), nonlinearity)
        self.features = nn.Sequential(*layers)
        width = hidden[-1] if hidden else in_dim
        self.score = nn.Linear(width, 1)
        projection = num_classes and not concat
        self.projection = ProjectionHead(num_classes, width) if projection else None
        self.concat = ConcatLabels(num_classes) if concat else None
        self.heads = CriticHeads(width, heads) if heads else None
        # Built last, so turning it on leaves every other layer's initial weights as they were.
        self.minibatch = self.minibatch_score = None
        if minibatch_discrimination:
            self.minibatch = MinibatchDiscrimination.from_spec(width, minibatch_discrimination)
            self.minibatch_score = nn.Linear(self.minibatch.kernels, 1, bias=False)

    def outputs(self, x: Tensor, labels: Tensor | None = None) -> CriticOutput:
        x = self.input_noise(x.flatten(1))
        if self.concat is not None:
            x = self.concat(x, labels)
        h = self.features(x)
        scores = self.score(h).squeeze(1)
        if self.minibatch is not None:  # a linear score of [h, o(h)], split in two
            scores = scores + self.minibatch_score(self.minibatch(h)).squeeze(1)
        if self.projection is not None:
            scores = scores + self.projection(h, labels)
        return CriticOutput(scores, h, self.heads(h) if self.heads is not None else {})

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.outputs(x, labels).scores
