"""Parzen-window log-likelihood (Goodfellow et al. 2014): exact kernels, convergence to a known
Gaussian's log-likelihood, held-out splits, and the Theis et al. 2016 warning."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gan_runner.data.module import TensorData
from gan_runner.errors import UserError
from gan_runner.games.base import prior_latent
from gan_runner.latent import Normal
from gan_runner.metrics.parzen import ParzenWindow, held_out, log_densities, select_sigma


def gaussian_entropy(std: torch.Tensor) -> float:
    """-E[log p(x)] of N(0, diag(std²)) in nats: the true test log-likelihood, negated."""
    return float(0.5 * len(std) * math.log(2 * math.pi * math.e) + std.log().sum())


def test_one_kernel_is_an_isotropic_gaussian_density():
    centre, points = torch.tensor([[0.5, -1.0, 2.0]]), torch.randn(7, 3)
    sigmas = torch.tensor([0.3, 1.0, 2.5])
    got = log_densities(points, centre, sigmas, batch_size=3)
    for row, sigma in zip(got, sigmas):
        expected = torch.distributions.Normal(centre[0].double(), sigma).log_prob(points.double())
        torch.testing.assert_close(row, expected.sum(1))


def test_mixture_of_kernels_averages_their_densities():
    centres, point = torch.tensor([[0.0], [2.0]]), torch.tensor([[0.5]])
    normal = torch.distributions.Normal(torch.tensor([0.0, 2.0], dtype=torch.float64), 0.7)
    expected = normal.log_prob(torch.tensor(0.5, dtype=torch.float64)).exp().mean().log()
    got = log_densities(point, centres, torch.tensor([0.7]))
    torch.testing.assert_close(got[0, 0], expected)


@pytest.mark.parametrize("std", [[1.0], [0.5, 2.0]], ids=["1d", "2d"])
def test_estimate_approaches_the_true_log_likelihood_with_many_samples(std):
    std = torch.tensor(std)
    draw = torch.Generator().manual_seed(0)
    fake, validation, test = (
        torch.randn(n, len(std), generator=draw) * std for n in (5000, 1000, 2000)
    )
    sigmas = torch.logspace(-2, 0, 11, dtype=torch.float64)
    sigma = select_sigma(validation, fake, sigmas)
    estimate = log_densities(test, fake, torch.tensor([sigma])).mean()
    truth = -gaussian_entropy(std)
    assert 0.01 < sigma < 1.0  # an interior optimum, not an edge of the grid
    # KDE bias (kernel width) plus test-sample noise (std of log p / sqrt(2000): ~0.016/dim)
    assert abs(float(estimate) - truth) < 0.05 * len(std), (float(estimate), truth)


class Identity(nn.Module):
    """A 'generator' whose samples are its latent codes: exactly N(0, I)."""

    def forward(self, z, labels=None):
        return z


def standard_normal_run(z_dim: int = 2) -> tuple[SimpleNamespace, SimpleNamespace]:
    net = Identity()
    module = SimpleNamespace(
        sampling_generator=net,
        generator=net,
        latent=Normal(),
        z_dim=z_dim,
        num_classes=0,
        game=SimpleNamespace(draw_latent=prior_latent),
        global_rank=0,
        device=torch.device("cpu"),
    )
    source = SimpleNamespace(sample=lambda n, g: (torch.randn(n, z_dim, generator=g), None))
    return module, SimpleNamespace(source=source)


def test_evaluation_scores_a_perfect_generator_near_the_truth_and_warns(caplog):
    module, datamodule = standard_normal_run()
    parzen = ParzenWindow(
        n_samples=4000, n_validation=1000, n_test=2000, log10_sigma_min=-2, n_sigmas=11
    )
    with caplog.at_level(logging.WARNING, logger="gan_runner.metrics.parzen"):
        values = parzen.evaluate(module, datamodule, torch.Generator().manual_seed(0))
        parzen.evaluate(module, datamodule, torch.Generator().manual_seed(0))
    assert (
        list(values)
        == parzen.names()
        == [
            "parzen_4k_test",
            "parzen_4k_test_stderr",
            "parzen_4k_test_sigma",
        ]
    )
    assert abs(values["parzen_4k_test"] + gaussian_entropy(torch.ones(2))) < 0.1
    assert 0 < values["parzen_4k_test_stderr"] < 0.1
    theis = [r for r in caplog.records if "Theis et al. 2016" in r.getMessage()]
    assert len(theis) == 1 and theis[0].levelno == logging.WARNING  # once per run, not per eval
    provenance = parzen.provenance()
    assert provenance["n_generated"] == 4000 and provenance["n_test"] == 2000
    assert "fresh draws" in provenance["test"] and "Theis" in provenance["caveat"]


class SplitSource:
    """A stand-in for the torchvision-backed sources: uint8 images per split."""

    splits = ("train", "test")

    def __init__(self, split: str = "train") -> None:
        self.split = split

    def load(self, resolution=None) -> TensorData:
        value = 0 if self.split == "train" else 255
        images = torch.full((50, 1, 4, 4), value, dtype=torch.uint8)
        images[:, 0, 0, 0] = torch.arange(50, dtype=torch.uint8)
        return TensorData(images)


def test_image_sets_use_the_test_split_and_the_last_training_images():
    train = SplitSource().load()
    datamodule = SimpleNamespace(source=SplitSource(), data=train, shape=[1, 4, 4])
    validation, test, where = held_out(datamodule, n_validation=10, n_test=20)
    assert test.shape == (20, 1, 4, 4) and validation.shape == (10, 1, 4, 4)
    assert (test[:, :, 1:, 1:] == 1.0).all() and (validation[:, :, 1:, 1:] == -1.0).all()
    torch.testing.assert_close(validation[:, 0, 0, 0], torch.arange(40, 50) / 127.5 - 1)
    assert datamodule.source.split == "train"  # the training source is left alone
    assert "test split" in where["test"] and "last 10 training" in where["validation"]
    scaled = ParzenWindow(n_test=20)._scaled(test)
    assert scaled.shape == (20, 16) and scaled.max() == 1.0  # pixels in [0, 1], as in the paper


def test_a_source_without_held_out_data_is_a_one_line_error():
    datamodule = SimpleNamespace(source=SimpleNamespace(), data=None, shape=[1, 8, 8])
    with pytest.raises(UserError, match="needs held-out data"):
        held_out(datamodule, 10, 10)
