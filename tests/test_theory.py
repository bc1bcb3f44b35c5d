"""gan-theory: Goodfellow et al. 2014's optimal critic and game value, f-GAN's bounds and the
Gaussian fit, each checked on 1D Gaussians by quadrature."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from gan_runner.data.toy import Mixture1D
from gan_runner.divergences import bound_on_grid, gaussian_divergence
from gan_runner.objectives import FDivergence, Minimax
from gan_runner.theory import (
    GRID,
    LOG4,
    PAIR,
    Normal,
    QuadraticCritic,
    Settings,
    Training,
    best_gaussian,
    check_f_bounds,
    check_gaussian_fit,
    game_value,
    jsd,
    main,
    on_grid,
    quadratic_family_optimum,
    tanh_critic,
    train_critic,
)


def test_the_command_passes_the_optimal_discriminator_checks_and_writes_its_report(tmp_path):
    out = tmp_path / "theory"
    assert main(["--checks", "optimal_discriminator", "--out", str(out)]) == 0
    results = {r["name"]: r for r in json.loads((out / "results.json").read_text())}
    gaps = [row["max |sigmoid(D) − D*|"] for row in results["optimal_discriminator"]["rows"]]
    assert max(gaps) <= 0.05 and results["optimal_discriminator"]["passed"]
    for row in results["game_value"]["rows"]:
        assert row["|V(D) − C(G)|"] <= row["tolerance"] and row["V(D) ≤ C(G)"]
    report = (out / "report.md").read_text()
    assert "Optimal discriminator (Goodfellow et al. 2014, Prop. 1): pass" in report
    assert "max \\|sigmoid(D) − D*\\|" in report  # bars escaped inside the table
    assert (out / "optimal_discriminator.png").stat().st_size > 10_000


def test_an_untrained_critic_fails_and_the_command_exits_non_zero(tmp_path):
    # One step leaves the critic far from D*: a check that cannot fail would pass it.
    assert main(["--checks", "optimal_discriminator", "--steps", "1", "--out", str(tmp_path)]) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert not results[0]["passed"]


def test_the_game_value_is_at_most_c_of_g_and_a_label_swap_breaks_it():
    data, model = Normal(0.0, 1.0), Normal(1.0, 1.5)
    p, q = data.pdf(GRID), model.pdf(GRID)
    optimum = 2 * jsd(p, q) - LOG4

    def trained(swap: bool) -> torch.Tensor:
        loss = Minimax().discriminator_loss
        critic = train_critic(
            QuadraticCritic,
            (lambda r, f: loss(f, r)) if swap else loss,
            lambda n, g: data.sample(n, g),
            lambda n, g: model.sample(n, g),
            Training(steps=400, batch=1024, lr=0.03),
            seed=0,
        )
        return on_grid(critic)

    right, swapped = game_value(trained(False), p, q), game_value(trained(True), p, q)
    assert right <= optimum + 1e-9 and abs(right - optimum) < 0.01
    assert swapped < optimum - 0.3  # the critic learned 1 − D*: its value is far below C(G)
    # C(G) is −log 4 + 2·JSD, and the f-GAN table's GAN row is the same number.
    assert optimum == pytest.approx(gaussian_divergence("gan", (0, 1), (1, 1.5)), abs=1e-6)


def test_the_quadratic_family_holds_kl_exactly_but_not_jeffrey():
    data, model = Normal(0.0, 1.0), Normal(1.0, 1.2)
    p, q = data.pdf(GRID), model.pdf(GRID)
    kl = gaussian_divergence("kl", (0, 1), (1, 1.2))
    assert quadratic_family_optimum("kl", p, q) == pytest.approx(kl, abs=1e-5)
    # Jeffrey's T* = f′(p/q) is not g_f of a quadratic: the family tops out near 92.5%.
    jeffrey = gaussian_divergence("jeffrey", (0, 1), (1, 1.2))
    assert 0.90 < quadratic_family_optimum("jeffrey", p, q) / jeffrey < 0.95


def test_the_best_gaussian_under_kl_matches_the_mixtures_moments():
    # KL(P‖N(μ, σ²)) is minimized by P's mean and standard deviation (moment matching).
    mixture = Mixture1D([0.3, 0.7], [-1.5, 1.5], [0.6, 0.6])
    mean = 0.3 * -1.5 + 0.7 * 1.5
    std = math.sqrt(0.36 + 1.5**2 - mean**2)
    assert best_gaussian("kl", mixture.pdf) == pytest.approx((mean, std), abs=1e-3)
    # Reverse KL seeks a mode: the heavier one, narrow.
    mu, sigma = best_gaussian("reverse_kl", mixture.pdf)
    assert mu > 1.2 and sigma < 0.8


def test_an_unknown_check_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from gan_runner.cli import theory; theory()", "--checks", "nope"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --checks nope: no check named nope; choose from optimal_discriminator, "
        "f_bounds, gaussian_fit"
    ]


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jensen_shannon"])
def test_a_shorter_mlp_critic_bound_reaches_the_divergence_and_never_exceeds_it(name):
    # check 3 in make test's budget: the full check (every divergence, 2,000 steps) is slow.
    data, model = PAIR
    p, q = data.pdf(GRID), model.pdf(GRID)
    critic = train_critic(
        tanh_critic,
        FDivergence(name).discriminator_loss,
        lambda n, g: data.sample(n, g),
        lambda n, g: model.sample(n, g),
        Training(steps=1000, batch=512),
        seed=0,
    )
    bound = bound_on_grid(name, on_grid(critic), p, q, GRID)
    true = gaussian_divergence(name, (data.mean, data.std), (model.mean, model.std))
    assert 0.95 * true <= bound <= true + 1e-3


@pytest.mark.slow
def test_every_f_divergence_bound_reaches_the_divergence_and_never_exceeds_it(tmp_path):
    check = check_f_bounds(Settings(), tmp_path)
    assert check.passed, check.rows
    assert len(check.rows) == 9


@pytest.mark.slow
def test_gan_runs_gaussian_fit_lands_where_direct_minimization_does(tmp_path):
    check = check_gaussian_fit(Settings(), tmp_path)
    assert check.passed, check.rows
