"""Scores of feature sets: FID, KID, IS on torchmetrics; precision/recall and density/coverage.

torchmetrics' FID/KID/IS receive features computed beforehand through `Given`, an identity
"extractor", so one extractor forward serves every score and the metrics hold no network.
PR (Kynkäänniemi et al. 2019) and DC (Naeem et al. 2020) estimate each manifold as a union of
balls reaching every sample's k-th nearest neighbour; distances are computed in row chunks, so
50k × 50k never sits in memory at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from gan_runner.metrics.base import sum_over_ranks


class Given(nn.Module):
    """Features computed beforehand, handed to torchmetrics in place of its Inception network."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def fid_metric(num_features: int) -> FrechetInceptionDistance:
    """torchmetrics' FID on given features (Heusel et al. 2017), accumulating in float64."""
    fid = FrechetInceptionDistance(
        feature=Given(num_features),
        reset_real_features=False,
        normalize=False,
        antialias=False,
        sync_on_compute=False,
    )
    return fid.set_dtype(torch.float64)


def add_fakes_over_ranks(fid: FrechetInceptionDistance) -> None:
    """Under DDP, make a rank's FID hold every rank's fakes (its fake sums added over ranks)."""
    fid.fake_features_sum = sum_over_ranks(fid.fake_features_sum)
    fid.fake_features_cov_sum = sum_over_ranks(fid.fake_features_cov_sum)
    fid.fake_features_num_samples = sum_over_ranks(fid.fake_features_num_samples)


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FID between two feature sets: ‖μ_r − μ_f‖² + Tr(Σ_r + Σ_f − 2(Σ_r Σ_f)^½)."""
    fid = fid_metric(real.shape[1]).to(real.device)
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    return float(fid.compute())


@contextmanager
def _features_kept() -> Iterator[None]:
    # KID and IS warn that they keep every feature vector: here that is the plan, on the CPU.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Metric `(Kernel Inception Distance|InceptionScore)`")
        yield


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # KID's subsets and IS's splits draw from the global generator: fork it, so evaluating
    # neither shifts training randomness nor depends on it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def kernel_distance(
    real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> float:
    """Unbiased KID (Bińkowski et al. 2018): the mean cubic-kernel MMD² over random subsets."""
    size = min(subset_size, real.shape[0], fake.shape[0])
    with _features_kept():
        kid = KernelInceptionDistance(
            feature=Given(real.shape[1]),
            subsets=subsets,
            subset_size=size,
            reset_real_features=False,
            compute_on_cpu=True,
            sync_on_compute=False,
        )
    kid.update(real.cpu(), real=True)
    kid.update(fake.cpu(), real=False)
    with _seeded(seed):
        return float(kid.compute()[0])


def inception_score(logits: Tensor, splits: int = 10, seed: int = 0) -> float:
    """IS (Salimans et al. 2016): exp E[KL(p(y|x) ‖ p(y))], averaged over splits."""
    with _features_kept():
        score = InceptionScore(
            Given(logits.shape[1]), splits=splits, compute_on_cpu=True, sync_on_compute=False
        )
    score.update(logits.cpu())
    with _seeded(seed):
        return float(score.compute()[0])


def _distances(a: Tensor, b: Tensor, chunk: int, device: torch.device) -> Iterator[Tensor]:
    """Rows of cdist(a, b), `chunk` rows of a at a time, on `device`."""
    b = b.to(device, torch.float32)
    for start in range(0, a.shape[0], chunk):
        yield torch.cdist(a[start : start + chunk].to(device, torch.float32), b)


def knn_radii(
    features: Tensor, k: int, chunk: int = 1024, device: torch.device | str = "cpu"
) -> Tensor:
    """Distance from each row to its k-th nearest other row (the radius of its ball)."""
    if features.shape[0] <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} samples")
    # k + 1: each row's nearest neighbour is itself, at distance 0.
    radii = [
        d.kthvalue(k + 1, dim=1).values for d in _distances(features, features, chunk, device)
    ]
    return torch.cat(radii)


def precision_recall(
    real: Tensor, fake: Tensor, k: int = 3, chunk: int = 1024, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """Share of fakes inside the real manifold and of reals inside the fake one (paper: k=3)."""
    return (
        _inside_share(fake, real, knn_radii(real, k, chunk, device), chunk, device),
        _inside_share(real, fake, knn_radii(fake, k, chunk, device), chunk, device),
    )


def _inside_share(
    queries: Tensor, centers: Tensor, radii: Tensor, chunk: int, device: torch.device | str
) -> float:
    radii = radii.to(device)
    inside = [(d <= radii).any(dim=1) for d in _distances(queries, centers, chunk, device)]
    return float(torch.cat(inside).float().mean())


def density_coverage(
    real: Tensor, fake: Tensor, k: int = 5, chunk: int = 1024, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """Density (real balls per fake, over k) and coverage (share of reals with a fake inside)."""
    radii = knn_radii(real, k, chunk, device).to(device)
    hits = torch.zeros((), dtype=torch.float64, device=device)
    nearest_fake = torch.full_like(radii, float("inf"))
    for d in _distances(fake, real, chunk, device):
        # density = 1/(kM) Σ_j Σ_i 1[‖f_j − r_i‖ < r_i's k-NN radius]
        hits += (d < radii).sum()
        nearest_fake = torch.minimum(nearest_fake, d.min(dim=0).values)
    density = float(hits) / (k * fake.shape[0])
    # coverage = 1/N Σ_i 1[min_j ‖f_j − r_i‖ < r_i's k-NN radius]
    coverage = float((nearest_fake < radii).float().mean())
    return density, coverage
