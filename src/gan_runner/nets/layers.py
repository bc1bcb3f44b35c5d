"""Building blocks shared by the network families."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS_1D = ("batch", "layer", "none")
NORMS_2D = ("batch", "instance", "layer", "none")


def norm_1d(kind: str, features: int) -> nn.Module:
    """A normalization layer for (N, features) activations."""
    layers = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}
    if kind not in NORMS_1D:
        raise ValueError(f"norm must be one of {', '.join(NORMS_1D)}, got '{kind}'")
    return layers[kind](features) if kind in layers else nn.Identity()


def norm_2d(kind: str, channels: int) -> nn.Module:
    """A normalization layer for (N, C, H, W) activations; 'layer' normalizes over C, H, W."""
    if kind not in NORMS_2D:
        raise ValueError(f"norm must be one of {', '.join(NORMS_2D)}, got '{kind}'")
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # one group = layer norm over (C, H, W)
    return nn.Identity()


def check_power_of_two_resolution(resolution: int, low: int = 8, high: int = 128) -> int:
    """Return log2(resolution), or explain which resolutions the family supports."""
    log2 = int(math.log2(resolution)) if resolution > 0 else -1
    if resolution < low or resolution > high or 2**log2 != resolution:
        raise ValueError(
            f"resolution {resolution} is not supported; use a power of two from {low} to {high} "
            "(set data.resolution)"
        )
    return log2


def check_image_shape(data_shape: Sequence[int], arch: str) -> tuple[int, int]:
    """Return (channels, resolution) of square image data, or say which arch fits the data."""
    shape = [int(size) for size in data_shape]
    if len(shape) != 3:
        fix = (
            "arch=mlp_1d or arch=gaussian_1d for 1D data"
            if shape == [1]
            else "arch=mlp for 2D data"
        )
        raise ValueError(
            f"arch {arch} needs image data (data.shape [C, H, W]), got {shape}; use {fix}"
        )
    channels, height, width = shape
    if height != width:
        raise ValueError(
            f"arch {arch} needs square images, got data.shape {shape}; set data.resolution"
        )
    return channels, height


class LabelEmbedding(nn.Module):
    """A learned class embedding concatenated to the latent code (conditional generators)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding(labels)


class ProjectionHead(nn.Module):
    """The class term <embed(y), h> of the projection discriminator (Miyato & Koyama 2018)."""

    def __init__(self, num_classes: int, features: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, features)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return (self.embedding(labels) * features).sum(dim=1)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm with a per-class scale and shift (de Vries et al. 2017; Miyato & Koyama 2018)."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Embedding(num_classes, channels)
        self.shift = nn.Embedding(num_classes, channels)
        # Every class starts as the identity affine map, like plain BatchNorm's initial state.
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        scale, shift = self.scale(labels)[:, :, None, None], self.shift(labels)[:, :, None, None]
        return self.norm(x) * scale + shift


@dataclass
class CriticOutput:
    """What a critic computes on a batch: its scores, the trunk's features and any heads."""

    scores: Tensor  # (N,)
    features: Tensor  # (N, F): the last hidden layer, flattened (feature matching reads it)
    heads: dict[str, Tensor] = field(default_factory=dict)  # class logits, code predictions


class CriticHeads(nn.ModuleDict):
    """Extra outputs on a critic's features: `{name: size}` (a linear map) or `{name: {size,
    hidden}}` (an MLP with BatchNorm and leaky ReLUs, InfoGAN's Q head). A player can own one
    head apart from the trunk: `discriminator.heads.<name>` in game.players."""

    def __init__(self, features: int, heads: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for name, spec in (heads or {}).items():
            spec = {"size": spec} if isinstance(spec, int) else dict(spec)
            unknown = set(spec) - {"size", "hidden"}
            if unknown or "size" not in spec or int(spec["size"]) < 1:
                raise ValueError(
                    f"head {name}: give a size >= 1, as {name}: 10 or {name}: "
                    f"{{size: 10, hidden: [128]}}; got {spec}"
                )
            layers: list[nn.Module] = []
            width = features
            for hidden in spec.get("hidden") or []:
                layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.1)]
                width = hidden
            layers.append(nn.Linear(width, int(spec["size"])))
            self[name] = nn.Sequential(*layers) if len(layers) > 1 else layers[0]

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {name: head(features) for name, head in self.items()}


class ConcatLabels(nn.Module):
    """One-hot labels joined to the critic's input: as features (flat) or as constant maps
    (images), the conditional GAN of Mirza & Osindero 2014."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        one_hot = F.one_hot(labels, self.num_classes).to(x.dtype)
        if x.dim() == 2:
            return torch.cat([x, one_hot], dim=1)
        maps = one_hot[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return torch.cat([x, maps], dim=1)


CONDITIONING = ("projection", "concat")


def check_conditioning(conditioning: str) -> str:
    if conditioning not in CONDITIONING:
        raise ValueError(
            f"conditioning must be one of {', '.join(CONDITIONING)}, got {conditioning!r}"
        )
    return conditioning


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016, §3.2, arXiv:1606.03498): how close each
    sample's features lie to the rest of its batch, so the critic can see a collapsed batch.

    M_i = f(x_i)·T (T: A×B×C), c_b(i, j) = exp(−‖M_{i,b} − M_{j,b}‖₁), o(x_i)_b = Σ_{j≠i} c_b(i, j)
    + bias_b; the critic scores [f(x_i), o(x_i)]. As openai/improved-gan's MinibatchLayer: the self
    term j = i (always exp(0) = 1) is left out, T is weight-normalized per (b, c) with a learned
    log-scale, and the first training batch rescales T so half the mean nearest-neighbour L1
    distance is 1 and sets the bias to −mean o (data-dependent init: with T ~ N(0, 1) and no
    scaling, as torchgan does, the distances are huge and every exp(−·) starts at 0).
    It couples the samples of a batch, as BatchNorm does: real and generated batches go through
    the critic apart, and a per-sample gradient penalty is meaningless with it.
    """

    def __init__(self, in_features: int, kernels: int = 100, kernel_dim: int = 5) -> None:
        super().__init__()
        for key, value in (("kernels", kernels), ("kernel_dim", kernel_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"minibatch_discrimination.{key} must be an integer >= 1, got {value!r}"
                )
        self.kernels, self.kernel_dim = kernels, kernel_dim
        self.theta = nn.Parameter(0.05 * torch.randn(in_features, kernels, kernel_dim))
        self.log_scale = nn.Parameter(torch.zeros(kernels, kernel_dim))
        self.bias = nn.Parameter(torch.full((kernels,), -1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False  # a host copy of `initialized`, read from the buffer once

    @classmethod
    def from_spec(cls, in_features: int, spec: Mapping[str, Any]) -> MinibatchDiscrimination:
        """Build from a critic's `minibatch_discrimination: {kernels: B, kernel_dim: C}`."""
        if not isinstance(spec, Mapping) or set(spec) - {"kernels", "kernel_dim"}:
            raise ValueError(
                "minibatch_discrimination must be null or {kernels: B, kernel_dim: C} "
                f"(openai/improved-gan: {{kernels: 100, kernel_dim: 5}}); got {spec!r}"
            )
        return cls(in_features, **spec)

    def tensor(self) -> Tensor:
        """T, each (b, c) column of unit norm times exp(log_scale) (weight normalization)."""
        norm = self.theta.norm(dim=0).clamp_min(1e-12)
        return self.theta * (self.log_scale.exp() / norm)

    def forward(self, features: Tensor) -> Tensor:
        m = torch.einsum("na,abc->bnc", features.flatten(1), self.tensor())  # M: (B, N, C)
        if self.training and not self._ready:
            self._ready = bool(self.initialized)
            if not self._ready and features.shape[0] > 1:
                self._initialize(m.detach())
                m = torch.einsum("na,abc->bnc", features.flatten(1), self.tensor())
        return closeness(m).T + self.bias  # o(x_i) + b: (N, B)

    @torch.no_grad()
    def _initialize(self, m: Tensor) -> None:
        distances = torch.cdist(m, m, p=1)  # (B, N, N): ‖M_{i,b} − M_{j,b}‖₁
        distances.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        half_nearest = 0.5 * distances.min(dim=2).values.mean(dim=1).clamp_min(1e-12)  # (B,)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(half_nearest)  # every rank starts from the same T
            half_nearest /= torch.distributed.get_world_size()
        self.log_scale.sub_(half_nearest.log()[:, None])
        bias = -closeness(m / half_nearest[:, None, None]).mean(dim=1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bias)
            bias /= torch.distributed.get_world_size()
        self.bias.copy_(bias)
        self.initialized.fill_(True)
        self._ready = True


def closeness(m: Tensor) -> Tensor:
    """Σ_{j≠i} exp(−‖M_{i,b} − M_{j,b}‖₁) for M of shape (B, N, C): (B, N)."""
    c = torch.exp(-torch.cdist(m, m, p=1))  # c_b(x_i, x_j)
    eye = torch.eye(m.shape[1], dtype=torch.bool, device=m.device)
    return c.masked_fill(eye, 0.0).sum(dim=2)  # openai/improved-gan drops the self term


class VirtualBatchNorm(nn.Module):
    """Virtual batch normalization (Salimans et al. 2016, §3.5, arXiv:1606.03498).

    Its input's first `reference_size` rows are the reference batch, normalized with their own
    statistics; every later row with the statistics of the reference plus itself, its own
    weighing 1/(R+1) (openai/improved-gan's imagenet VBNL): so a sample's output never depends
    on the other samples of its batch. Per channel over (batch, H, W) for maps, per feature for
    flat activations. The reference statistics keep their graph, as in the official code.
    Works the same in train and eval mode; the generator prepends the reference
    (VirtualBatchReference), so a bare call treats its own first rows as the reference.
    """

    def __init__(self, features: int, reference_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.reference_size, self.eps = reference_size, eps
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: Tensor) -> Tensor:
        r = self.reference_size
        if x.shape[0] < r:
            raise RuntimeError(
                f"VirtualBatchNorm got {x.shape[0]} rows, fewer than its reference batch ({r})"
            )
        reference, rows = x[:r], x[r:]
        over = [0, *range(2, x.dim())]  # batch and space: per channel
        ref_mean = reference.mean(over, keepdim=True)
        ref_square = reference.square().mean(over, keepdim=True)
        space = list(range(2, x.dim()))
        own_mean = rows.mean(space, keepdim=True) if space else rows
        own_square = rows.square().mean(space, keepdim=True) if space else rows.square()
        new = 1.0 / (r + 1)
        mean = new * own_mean + (1 - new) * ref_mean  # the reference batch plus this sample
        square = new * own_square + (1 - new) * ref_square
        out = torch.cat(
            [self._normalize(reference, ref_mean, ref_square), self._normalize(rows, mean, square)]
        )
        shape = (1, -1, *[1] * (x.dim() - 2))
        return out * self.weight.view(shape) + self.bias.view(shape)

    def _normalize(self, x: Tensor, mean: Tensor, square: Tensor) -> Tensor:
        variance = (square - mean.square()).clamp_min(0.0)  # E[x²] − E[x]²
        return (x - mean) * torch.rsqrt(variance + self.eps)


class VirtualBatchReference(nn.Module):
    """The fixed reference batch of virtual batch normalization (Salimans et al. 2016, §3.5):
    latents (and labels) drawn once from N(0, I) by their own seed, kept as buffers so the
    checkpoint carries them; the generator runs them ahead of every batch."""

    def __init__(self, size: int, z_dim: int, num_classes: int = 0, seed: int = 0) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"reference_size must be an integer >= 1, got {size!r}")
        self.size = size
        drawn = torch.Generator().manual_seed(seed)  # not the global stream: init stays put
        self.register_buffer("z", torch.randn(size, z_dim, generator=drawn))
        labels = torch.randint(num_classes, (size,), generator=drawn) if num_classes else None
        self.register_buffer("labels", labels if labels is not None else torch.empty(0).long())

    def prepend(self, z: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        z = torch.cat([self.z.to(z.dtype), z])
        if labels is not None:
            labels = torch.cat([self.labels, labels])
        return z, labels


GENERATOR_NORMS_1D = (*NORMS_1D, "virtual_batch")
GENERATOR_NORMS_2D = (*NORMS_2D, "virtual_batch")


def generator_norm(kind: str, features: int, reference_size: int, image: bool) -> nn.Module:
    """A generator's normalization layer: any critic norm, or virtual batch normalization."""
    kinds = GENERATOR_NORMS_2D if image else GENERATOR_NORMS_1D
    if kind not in kinds:
        raise ValueError(f"norm must be one of {', '.join(kinds)}, got '{kind}'")
    if kind == "virtual_batch":
        return VirtualBatchNorm(features, reference_size)
    return norm_2d(kind, features) if image else norm_1d(kind, features)


class GaussianNoise(nn.Module):
    """x + σε, ε ~ N(0, I), while training only: the Gaussian noise layers of Salimans et al.
    2016's MNIST critic (drawn from torch's global stream, saved in every checkpoint)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        if std < 0:
            raise ValueError(f"input_noise must be >= 0, got {std}")
        self.std = std

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.std:
            return x
        return x + self.std * torch.randn_like(x)  # x + σε
