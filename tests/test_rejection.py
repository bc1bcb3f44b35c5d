"""Discriminator rejection sampling (Azadi et al. 2019) against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from gan_runner.errors import UserError
from gan_runner.objectives import Hinge, LeastSquares, Minimax, NonSaturating, Wasserstein
from gan_runner.rejection import DiscriminatorRejection, log_ratio_of


def uniform_proposals(seed: int = 0):
    """p_g = U(0, 1) in 1D; p_data(x) = 2x on (0, 1), so log p_data / p_g = log 2x, M = 2."""
    noise = torch.Generator().manual_seed(seed)

    def propose(k: int) -> tuple[torch.Tensor, None]:
        return torch.rand(k, 1, generator=noise), None

    def log_ratio(x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return (2 * x[:, 0].clamp_min(1e-12)).log()

    return propose, log_ratio


def test_without_the_shift_it_is_exact_rejection_sampling() -> None:
    # γ = 0: sigmoid(F) = exp(r - r_M) / (1 - exp(r - r_M - ε) + exp(r - r_M)) ≈ p_data / (M p_g),
    # so the accepted points follow p_data = 2x: mean 2/3 (p_g's is 1/2), acceptance 1/M = 1/2.
    propose, log_ratio = uniform_proposals()
    sampler = DiscriminatorRejection(percentile=None, burn_in=20_000).fit(propose, log_ratio)
    assert sampler.gamma == 0.0 and math.isclose(sampler.log_bound, math.log(2), abs_tol=1e-3)
    x, labels = sampler.draw(20_000, propose, log_ratio, torch.Generator().manual_seed(1))
    assert x.shape == (20_000, 1) and labels is None
    assert abs(x.mean().item() - 2 / 3) < 0.01  # s.e. 0.0017; p_g's mean 1/2 is 100 s.e. away
    assert abs((x < 0.5).float().mean().item() - 0.25) < 0.015  # P(x < 1/2) = 1/4 under 2x
    assert abs(sampler.acceptance - 0.5) < 0.02


def test_a_low_percentile_thins_only_the_worst_samples() -> None:
    propose, log_ratio = uniform_proposals()
    kept = {}
    for percentile in (0.05, 0.5):
        sampler = DiscriminatorRejection(percentile=percentile).fit(propose, log_ratio)
        x, _ = sampler.draw(10_000, propose, log_ratio, torch.Generator().manual_seed(2))
        kept[percentile] = (sampler.acceptance, (x < 0.05).float().mean().item())
    # The shift's direction: a lower percentile keeps more, and both keep less of the region
    # where p_data / p_g is smallest (x < 0.05 holds 5% of proposals) than the proposals do.
    assert kept[0.05][0] > kept[0.5][0] + 0.1
    assert kept[0.5][1] < kept[0.05][1] < 0.05


def test_running_out_of_proposals_is_one_clear_error() -> None:
    propose, log_ratio = uniform_proposals()
    sampler = DiscriminatorRejection(percentile=None, max_proposals_per_sample=2)
    sampler.fit(propose, log_ratio)

    def hopeless(x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return torch.full((len(x),), -60.0)  # e^-60 of the bound: nothing is ever accepted

    with pytest.raises(UserError, match="accepted only 0 of .*lower rejection.percentile"):
        sampler.draw(100, propose, hopeless, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bad", [{"percentile": 1.5}, {"burn_in": 0}])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(UserError, match="rejection"):
        DiscriminatorRejection(**bad)


def test_objectives_say_the_log_density_ratio_their_optimal_critic_encodes() -> None:
    scores = torch.tensor([-2.0, 0.0, 3.0])
    # Logistic games: D* = sigmoid(score) = p_d / (p_d + p_g), so the score is log p_d / p_g.
    for objective in (NonSaturating(), Minimax()):
        assert torch.equal(objective.log_density_ratio(scores), scores)
    # LSGAN 0-1 coding: D* = p_d / (p_d + p_g); D = 0.8 means p_d / p_g = 4.
    ratio = LeastSquares().log_density_ratio(torch.tensor([0.8, 0.5]))
    assert torch.allclose(ratio, torch.tensor([math.log(4.0), 0.0]))
    # -1/1 coding: D* = (p_d - p_g) / (p_d + p_g); D = 0.5 means p_d / p_g = 3.
    ratio = LeastSquares(fake_label=-1.0, real_label=1.0).log_density_ratio(torch.tensor([0.5]))
    assert torch.allclose(ratio, torch.tensor([math.log(3.0)]))
    assert torch.isfinite(LeastSquares().log_density_ratio(torch.tensor([-0.3, 1.7]))).all()
    # A Wasserstein or hinge critic's optimum does not determine the ratio.
    assert Wasserstein().log_density_ratio(scores) is None
    assert Hinge().log_density_ratio(scores) is None


def test_a_critic_without_a_density_ratio_is_refused_by_name() -> None:
    class WassersteinGame:
        objective = Wasserstein()

    class WassersteinModel:
        game = WassersteinGame()

    with pytest.raises(UserError, match=r"objective \(Wasserstein\).*non_saturating"):
        log_ratio_of(WassersteinModel())
