"""The 2D mode protocol (PacGAN, Lin et al. 2018) on sample sets whose answers are known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gan_runner.callbacks.metrics import infer_mode
from gan_runner.data.module import GANDataModule
from gan_runner.data.toy import GaussianGrid, GaussianRing
from gan_runner.games.adversarial import AdversarialGame
from gan_runner.games.base import prior_latent
from gan_runner.latent import Normal
from gan_runner.metrics.mixture import evaluate_mixture, mode_statistics
from gan_runner.metrics.mixture_eval import MixtureEvaluation
from gan_runner.module import GANModule
from gan_runner.nets.mlp import MLPDiscriminator, MLPGenerator
from gan_runner.objectives import NonSaturating

RING = GaussianRing()  # ring8: radius 1, std 0.01


def test_samples_on_every_mean_cover_all_modes_uniformly():
    samples = RING.means.repeat(10, 1)
    stats = mode_statistics(samples, RING.means, RING.std)
    assert (stats.modes, stats.hq_fraction) == (8, 1.0)
    assert stats.counts == (10,) * 8
    assert stats.reverse_kl == pytest.approx(0.0, abs=1e-12)


def test_one_mode_only_is_the_worst_histogram():
    samples = RING.means[3].expand(100, 2)
    stats = mode_statistics(samples, RING.means, RING.std)
    assert (stats.modes, stats.hq_fraction) == (1, 1.0)
    assert stats.counts[3] == 100
    assert stats.reverse_kl == pytest.approx(math.log(8))


def test_half_and_half_on_two_of_eight_modes():
    samples = torch.cat([RING.means[0].expand(50, 2), RING.means[5].expand(50, 2)])
    stats = mode_statistics(samples, RING.means, RING.std)
    # KL(p || u) = sum_k p_k log(8 p_k) = 2 * 0.5 * log(8 * 0.5) = log 4
    assert stats.modes == 2
    assert stats.reverse_kl == pytest.approx(math.log(4))


def test_points_past_three_std_are_not_high_quality():
    direction = torch.tensor([[1.0, 0.0]])
    far = RING.means + 3.5 * RING.std * direction  # 3.5 std from its mean, far from the others
    near = RING.means + 2.5 * RING.std * direction
    stats = mode_statistics(torch.cat([far, near]), RING.means, RING.std)
    assert stats.hq_fraction == pytest.approx(0.5)
    assert stats.counts == (1,) * 8
    assert mode_statistics(far, RING.means, RING.std).modes == 0
    assert mode_statistics(far, RING.means, RING.std, n_std=4.0).modes == 8


def test_high_quality_is_measured_against_the_nearest_mean_only():
    # The ring's centre is 1 from every mean: no mode, whatever the tolerance around it.
    stats = mode_statistics(torch.zeros(10, 2), RING.means, RING.std)
    assert (stats.modes, stats.hq_fraction, stats.counts) == (0, 0.0, (0,) * 8)
    assert stats.reverse_kl == pytest.approx(math.log(8))  # nothing assigned: defined as log K


def test_mixed_quality_sample_set():
    samples = torch.cat(
        [RING.means[0].expand(3, 2), RING.means[1].expand(1, 2), torch.full((4, 2), 5.0)]
    )
    stats = mode_statistics(samples, RING.means, RING.std)
    p = torch.tensor([0.75, 0.25])
    assert stats.modes == 2
    assert stats.hq_fraction == pytest.approx(0.5)  # HQ% counts every sample, not just HQ ones
    assert stats.reverse_kl == pytest.approx(float((p * (8 * p).log()).sum()))


def test_rejects_samples_of_the_wrong_shape():
    with pytest.raises(ValueError, match="samples must be"):
        mode_statistics(torch.zeros(10, 3), RING.means, RING.std)


@pytest.mark.parametrize(
    ("source", "modes"), [(GaussianRing(), 8), (GaussianGrid(), 25)], ids=["ring8", "grid25"]
)
def test_real_data_scores_full_coverage(source, modes):
    samples, _ = source.sample(2500, torch.Generator().manual_seed(0))
    stats = mode_statistics(samples, source.means, source.std)
    assert stats.modes == modes
    assert stats.hq_fraction >= 0.98  # 3 std in 2D holds ~98.9% of a Gaussian's mass
    assert stats.reverse_kl < 0.02


def _module() -> GANModule:
    return GANModule(
        networks={
            "generator": MLPGenerator(8, [2], hidden=[16], bounded=False),
            "discriminator": MLPDiscriminator([2], hidden=[16]),
        },
        game=AdversarialGame.classic(NonSaturating()),
        optimizers={"generator": torch.optim.Adam, "discriminator": torch.optim.Adam},
        latent=Normal(),
        z_dim=8,
    )


def test_evaluate_mixture_leaves_the_global_rng_alone():
    module = _module()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = evaluate_mixture(module, RING, n=500, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluate_mixture(module, RING, n=500, seed=7) == first  # its own seeded stream


def test_evaluate_mixture_scores_the_sampling_generator():
    module = _module()

    class OnTheMeans(nn.Module):
        def forward(self, z, labels=None):
            return RING.means[torch.arange(len(z)) % 8]

    module.generator_ema = OnTheMeans()  # an EMA copy, when present, is what gets scored
    stats = evaluate_mixture(module, RING, n=800)
    assert (stats.modes, stats.hq_fraction, stats.counts) == (8, 1.0, (100,) * 8)
    datamodule = GANDataModule(RING, batch_size=16, shape=[2], bounded=False)
    assert evaluate_mixture(module, datamodule, n=800) == stats  # or the data module holding it


# --- the headline number that picks the best checkpoint: all modes, then HQ%, then rKL ------


class Points(nn.Module):
    """A generator that ignores z and returns a fixed sample set, in order."""

    def __init__(self, points: torch.Tensor) -> None:
        super().__init__()
        self.points, self.done = points, 0

    def forward(self, z, labels=None):
        batch = self.points[self.done : self.done + len(z)]
        self.done += len(z)
        return batch


def on_modes(counts: list[int], n: int = 2500) -> torch.Tensor:
    """counts[i] samples exactly on ring mean i; the rest at the centre, 100 std from all modes."""
    on = [RING.means[i].expand(c, 2) for i, c in enumerate(counts)]
    return torch.cat([*on, torch.zeros(n - sum(counts), 2)])


PRIOR = SimpleNamespace(draw_latent=prior_latent)  # the classic game's latent, without a game


def fake_module(points: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(
        sampling_generator=Points(points), latent=Normal(), z_dim=1, num_classes=0, game=PRIOR
    )


def headline(counts: list[int]) -> tuple[float, dict[str, float]]:
    """The mixture evaluation's `primary` of a sample set, signed so that larger is better."""
    evaluation = MixtureEvaluation()
    datamodule = SimpleNamespace(source=RING)
    values = evaluation.evaluate(fake_module(on_modes(counts)), datamodule, torch.Generator())
    sign = 1.0 if infer_mode(evaluation.primary) == "max" else -1.0
    return sign * values[evaluation.primary], values


def test_headline_prefers_high_hq_over_a_spread_out_cloud_with_a_lower_rkl():
    # Issue 13: an early generator, all modes evenly at 85% HQ, beat the final one at 97%.
    early, early_values = headline([266] * 5 + [265] * 3)  # 2125: HQ 85%, near-uniform
    late, late_values = headline([380, 280, 300, 300, 300, 300, 300, 265])  # 2425: HQ 97%
    assert early_values["modes_2500"] == late_values["modes_2500"] == 8
    assert early_values["hq_percent_2500"] == 85 and late_values["hq_percent_2500"] == 97
    assert early_values["rkl_2500"] < 0.001 < 0.005 < late_values["rkl_2500"] < 0.02
    assert late > early


def test_headline_prefers_all_modes_at_80_percent_hq_to_seven_at_99():
    all_modes, values = headline([1000] + [143] * 6 + [142])  # 8 modes, HQ 80%, uneven
    seven, seven_values = headline([354] * 6 + [351, 0])  # 7 modes, HQ 99%, even on those
    assert (values["modes_2500"], values["hq_percent_2500"]) == (8, 80)
    assert (seven_values["modes_2500"], seven_values["hq_percent_2500"]) == (7, 99)
    assert values["rkl_2500"] > seven_values["rkl_2500"]  # rKL alone would take the 7
    assert all_modes > seven


def test_headline_breaks_near_equal_hq_by_rkl_but_not_a_clear_hq_gap():
    skewed = [405, 305, 305, 305, 305, 305, 305]  # 2235 on 7 modes, the 8th filled below
    even, even_values = headline([304] * 6 + [303, 303])  # 2430: HQ 97.2%, rKL ~ 0
    close, close_values = headline([*skewed, 205])  # 2440: HQ 97.6%, rKL higher
    far, far_values = headline([*skewed, 230])  # 2465: HQ 98.6%, the same skew
    assert close_values["hq_percent_2500"] - even_values["hq_percent_2500"] < 1
    assert far_values["hq_percent_2500"] - even_values["hq_percent_2500"] > 1
    assert even_values["rkl_2500"] < close_values["rkl_2500"]
    assert even_values["rkl_2500"] < far_values["rkl_2500"]
    assert even > close  # within the 1-point tolerance: the lower rKL wins
    assert far > even  # more than a point of HQ: HQ wins, whatever rKL says


def test_a_collapsed_generator_loses_to_all_modes_at_90_percent():
    # Rewarding HQ% must not reward collapse: one mode at 100% HQ is the worst of these.
    collapsed, collapsed_values = headline([0, 0, 0, 2500, 0, 0, 0, 0])
    spread, spread_values = headline([282] * 2 + [281] * 6)  # 2250: HQ 90%
    two, _ = headline([1200, 0, 0, 0, 1200, 0, 0, 0])  # two modes at 96%
    assert collapsed_values["hq_percent_2500"] == 100 and spread_values["hq_percent_2500"] == 90
    assert spread > two > collapsed


def test_score_formula_and_name():
    from gan_runner.metrics.mixture import ModeStats, ranking_score

    def stats(modes: int, hq: float, rkl: float) -> ModeStats:
        return ModeStats(modes, hq / 100, rkl, tuple(int(i < modes) for i in range(8)))

    # 1000·modes + t·floor(HQ/t) + (t/2)(1 − rKL/ln 8), t = 1
    assert ranking_score(stats(8, 97.0, 0.0)) == pytest.approx(8097.5)
    assert ranking_score(stats(8, 97.96, math.log(8) / 2)) == pytest.approx(8097.25)
    assert ranking_score(stats(1, 100.0, math.log(8))) == pytest.approx(1100.0)
    assert ranking_score(stats(0, 0.0, math.log(8))) == 0.0
    # Bounds, whatever the other parts: the rKL part stays below one HQ bin, the HQ part below
    # one mode.
    assert ranking_score(stats(8, 96.99, 0.0)) < ranking_score(stats(8, 97.0, math.log(8)))
    assert ranking_score(stats(7, 100.0, 0.0)) < ranking_score(stats(8, 0.04, math.log(8)))
    # A wider tolerance makes 96.9 vs 97.9 a tie that rKL settles.
    assert ranking_score(stats(8, 97.9, 0.05), 2) < ranking_score(stats(8, 96.9, 0.01), 2)
    assert ranking_score(stats(8, 97.9, 0.05)) > ranking_score(stats(8, 96.9, 0.01))
    with pytest.raises(ValueError, match="hq_tolerance"):
        ranking_score(stats(8, 97.0, 0.0), 0)
    evaluation = MixtureEvaluation()
    assert evaluation.primary == "score_2500" and infer_mode(evaluation.primary) == "max"
    assert evaluation.names() == ["modes_2500", "hq_percent_2500", "rkl_2500", "score_2500"]
    assert MixtureEvaluation(500, n_std=2.0, hq_tolerance=0.5).primary == "score_500_2std_hqtol0.5"
