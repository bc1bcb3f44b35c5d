"""Mode coverage of 2D Gaussian mixtures: the PacGAN protocol (Lin et al. 2018, Table 1).

Modes, high-quality fraction and reverse KL as in PacGAN (Lin et al. 2018), who took the
"high-quality sample" idea from VEEGAN (Srivastava et al. 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class ModeStats:
    """Modes covered, HQ fraction and reverse KL of one sample set (Lin et al. 2018 PacGAN)."""

    modes: int  # modes with at least one high-quality sample
    hq_fraction: float  # high-quality samples / all samples
    reverse_kl: float  # KL(mode histogram of HQ samples ‖ uniform over K modes), in nats
    counts: tuple[int, ...]  # HQ samples assigned to each mode, in the order of `means`

    def __str__(self) -> str:
        return (
            f"{self.modes}/{len(self.counts)} modes, HQ {100 * self.hq_fraction:.1f}%, "
            f"rKL {self.reverse_kl:.3f}"
        )


def mode_statistics(samples: Tensor, means: Tensor, std: float, n_std: float = 3.0) -> ModeStats:
    """Score samples against a mixture's means (Lin et al. 2018 PacGAN; Srivastava et al. 2017)."""
    if samples.dim() != 2 or samples.shape[1] != means.shape[1]:
        raise ValueError(f"samples must be (N, {means.shape[1]}), got {tuple(samples.shape)}")
    # float64 on the CPU: a sample exactly on the 3-std boundary must not flip with the device.
    samples, means = samples.detach().double().cpu(), means.detach().double().cpu()
    distance, nearest = torch.cdist(samples, means).min(dim=1)
    # A point far from every mean is a poor sample, not evidence for the nearest mode.
    high_quality = distance <= n_std * std
    counts = torch.bincount(nearest[high_quality], minlength=len(means))
    assigned = int(counts.sum())
    return ModeStats(
        modes=int((counts > 0).sum()),
        hq_fraction=assigned / max(len(samples), 1),
        reverse_kl=_kl_to_uniform(counts),
        counts=tuple(int(c) for c in counts),
    )


def _kl_to_uniform(counts: Tensor) -> float:
    """KL(p ‖ uniform) = Σ p_k log(K p_k), with 0 log 0 = 0."""
    k, total = len(counts), int(counts.sum())
    if total == 0:
        # No high-quality sample: score it as the worst histogram, all mass on one mode (log K),
        # so a generator that misses everything never looks better than one that collapses.
        return math.log(k)
    p = counts[counts > 0].double() / total
    return float((p * (p * k).log()).sum())


@torch.no_grad()
def evaluate_mixture(module: Any, source: Any, n: int = 2500, seed: int = 0) -> ModeStats:
    """Mode statistics of n samples of a GANModule on a 2D mixture (Lin et al. 2018 PacGAN).

    `source` is the data source that knows the mixture (GaussianRing, GaussianGrid): anything
    with `means` and `std`, or a data module holding one as `.source`.
    """
    source = getattr(source, "source", source)
    # Its own generator: evaluating mid-run must not shift the training noise or global RNG.
    noise = torch.Generator(device=module.device).manual_seed(seed)
    z = module.latent.sample(n, module.z_dim, noise)
    return mode_statistics(module.sample(z), source.means, source.std)
