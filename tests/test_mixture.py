"""The 2D mode protocol (PacGAN, Lin et al. 2018) on sample sets whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gan_runner.data.module import GANDataModule
from gan_runner.data.toy import GaussianGrid, GaussianRing
from gan_runner.latent import Normal
from gan_runner.metrics.mixture import evaluate_mixture, mode_statistics
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
        generator=MLPGenerator(8, [2], hidden=[16], bounded=False),
        discriminator=MLPDiscriminator([2], hidden=[16]),
        objective=NonSaturating(),
        latent=Normal(),
        z_dim=8,
        generator_optimizer=torch.optim.Adam,
        discriminator_optimizer=torch.optim.Adam,
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
