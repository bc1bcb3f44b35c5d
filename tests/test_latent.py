"""Latent distributions: the Gaussian-mixture prior's islands, weights, truncation and checks."""

from __future__ import annotations

import pytest
import torch

from gan_runner.latent import GaussianMixture


def draw(latent, n: int = 20000, dim: int = 4, seed: int = 0) -> torch.Tensor:
    return latent.sample(n, dim, torch.Generator().manual_seed(seed))


def nearest_island(latent: GaussianMixture, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    distance, island = torch.cdist(z, latent.means(z.shape[1])).min(dim=1)
    return distance, island


def test_mixture_draws_lie_on_their_islands_with_the_set_spread() -> None:
    latent = GaussianMixture(components=100, std=0.05)
    z = draw(latent)
    distance, island = nearest_island(latent, z)
    offset = z - latent.means(4)[island]
    # Islands are ~14σ apart at z_dim 4, so the nearest centre is the one drawn from: each
    # coordinate of z - μ is N(0, σ²). Merged islands (σ ignored) or centres drawn per call fail.
    assert offset.std().item() == pytest.approx(0.05, rel=0.03)
    assert distance.max().item() < 0.05 * 7
    # Equal weights: 200 expected per island; a chi-square with 99 d.o.f. stays well under 160.
    counts = torch.bincount(island, minlength=100).float()
    assert ((counts - 200) ** 2 / 200).sum().item() < 160
    assert (counts > 0).all()


def test_islands_are_fixed_by_their_own_seed_not_the_runs() -> None:
    a, b = GaussianMixture(seed=0), GaussianMixture(seed=0)
    # Two runs with different seeds still share the islands, so checkpoints and gan-sample agree.
    assert torch.equal(a.means(4), b.means(4))
    assert not torch.equal(a.means(4), GaussianMixture(seed=1).means(4))
    assert torch.equal(draw(a, seed=3), draw(b, seed=3))
    assert not torch.equal(draw(a, seed=3), draw(a, seed=4))
    # The islands spread like N(0, I), whatever the dimension.
    assert a.means(64).std().item() == pytest.approx(1.0, abs=0.05)


def test_truncation_keeps_draws_within_psi_sigma_of_their_island() -> None:
    latent = GaussianMixture(components=20, std=0.1)
    z = latent.truncated(5000, 8, 0.5, torch.Generator().manual_seed(0))
    distance, island = nearest_island(latent, z)
    offset = z - latent.means(8)[island]
    assert offset.abs().max().item() <= 0.1 * 0.5 + 1e-6
    # Truncation narrows each island, as it narrows N(0, I), and does not move it.
    assert offset.abs().max().item() > 0.1 * 0.45
    assert offset.mean(0).abs().max().item() < 0.01
    assert torch.bincount(island, minlength=20).min().item() > 150  # every island still drawn
    with pytest.raises(ValueError, match="truncation=0 is not valid for latent=GaussianMixture"):
        latent.truncated(4, 8, 0, torch.Generator())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"components": 0}, "components must be an integer >= 1, got 0"),
        ({"components": 2.5}, "components must be an integer >= 1, got 2.5"),
        ({"std": 0.0}, "std must be > 0, got 0.0"),
        ({"std": -1}, "std must be > 0, got -1"),
    ],
)
def test_bad_mixture_settings_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        GaussianMixture(**kwargs)
