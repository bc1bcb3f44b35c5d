"""1D data: exact densities, the Gaussian generator (trainable and frozen), the density1d metric
against closed forms and quadrature, the 1D sample plot's optimal discriminator, short trainings
that lower the JSD, and the refusals.

Closed forms between 1D Gaussians are zoo-games.md §5.3's: for N(0, 1) and N(1, 1.5²),
KL = 0.34991, reverse KL = 0.71953, 2·JSD = 0.19858.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import integrate, stats

from conftest import QUICK, call_console, compose_config
from gan_runner import cli
from gan_runner.callbacks.samples import SampleGrid, density_view
from gan_runner.data.module import GANDataModule
from gan_runner.data.toy import Gaussian1D, GaussianRing, Mixture1D
from gan_runner.errors import UserError
from gan_runner.games.base import prior_latent
from gan_runner.latent import Normal, Uniform
from gan_runner.metrics.density1d import Density1D, divergences, optimal_discriminator
from gan_runner.nets.gaussian import GaussianGenerator
from gan_runner.nets.mlp import MLPDiscriminator
from gan_runner.objectives import NonSaturating, Wasserstein
from gan_runner.plots import density_1d
from helpers_quality import prepare

MIXTURE = ([0.3, 0.7], [-2.0, 2.0], [0.5, 0.5])  # conf/data/mixture1d.yaml


def gaussian_kl(m1: float, s1: float, m2: float, s2: float) -> float:
    """KL(N(m1, s1²) ‖ N(m2, s2²))."""
    return math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def quad_jsd(p, q) -> float:
    """JSD by scipy's adaptive quadrature, from two scipy densities."""

    def term(x: float) -> float:
        a, b = p.pdf(x), q.pdf(x)
        m = 0.5 * (a + b)
        return 0.5 * (a * math.log(a / m) if a > 0 else 0) + 0.5 * (
            b * math.log(b / m) if b > 0 else 0
        )

    return integrate.quad(term, -30, 30, limit=400, points=[0.0, 1.0])[0]


def grid(low: float = -15.0, high: float = 15.0, n: int = 30_001) -> torch.Tensor:
    return torch.linspace(low, high, n, dtype=torch.float64)


# ----------------------------------------------------------------------------- data
@pytest.mark.parametrize(
    ("source", "mean", "std"),
    [(Gaussian1D(0.5, 2.0), 0.5, 2.0), (Mixture1D(*MIXTURE), 0.8, 1.9)],
    ids=["gauss", "mixture"],
)
def test_pdf_integrates_to_one_and_matches_the_samples_moments(source, mean, std) -> None:
    x = grid()
    p = source.pdf(x)
    assert p.dtype == torch.float64 and p.shape == x.shape
    assert torch.trapezoid(p, x).item() == pytest.approx(1.0, abs=1e-9)
    assert torch.trapezoid(x * p, x).item() == pytest.approx(mean, abs=1e-9)
    assert torch.trapezoid((x - mean) ** 2 * p, x).item() == pytest.approx(std**2, abs=1e-8)
    assert (source.mean, source.std) == pytest.approx((mean, std), abs=1e-12)
    data = source.load()
    assert data.samples.shape == (100_000, 1) and data.labels is None
    assert data.samples.dtype == torch.float32
    # 100k draws: the mean's standard error is std/316; 5 of them is a seeded margin.
    assert data.samples.double().mean().item() == pytest.approx(mean, abs=5 * std / 316)
    assert data.samples.double().std().item() == pytest.approx(std, rel=0.02)
    assert torch.allclose(source.log_prob(x).exp(), p)
    points, components = source.sample(7, torch.Generator().manual_seed(1))
    assert points.shape == (7, 1) and components.shape == (7,)


def test_mixture_density_is_the_weighted_sum_and_weights_are_normalized() -> None:
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    by_hand = 0.3 * stats.norm.pdf(x, -2, 0.5) + 0.7 * stats.norm.pdf(x, 2, 0.5)
    for weights in ([0.3, 0.7], [3.0, 7.0]):
        source = Mixture1D(weights, [-2.0, 2.0], [0.5, 0.5])
        assert np.allclose(source.pdf(x).numpy(), by_hand, rtol=1e-12)
    # Far in a tail the density underflows; its log does not.
    assert source.log_prob(torch.tensor([60.0], dtype=torch.float64)).item() == pytest.approx(
        math.log(0.7) + stats.norm.logpdf(60, 2, 0.5)
    )


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: Gaussian1D(0.0, 0.0), "std must be > 0, got 0.0"),
        (lambda: Mixture1D([1.0], [0.0, 1.0], [1.0, 1.0]), "equal lengths, got 1, 2 and 2"),
        (lambda: Mixture1D([0.5, -0.5], [0.0, 1.0], [1.0, 1.0]), "weights must all be > 0"),
        (lambda: Mixture1D([1.0, 1.0], [0.0, 1.0], [1.0, -1.0]), "stds must all be > 0"),
        (lambda: Density1D(bandwidth=0.0), "bandwidth must be > 0, or null for Scott's rule"),
        (lambda: Density1D(model_density="exact"), "model_density='exact': choose auto"),
    ],
)
def test_bad_parameters_are_one_line_value_errors(make, words: str) -> None:
    with pytest.raises(ValueError, match=words) as error:
        make()
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- generator
def test_gaussian_generator_samples_follow_its_pdf_and_train() -> None:
    net = GaussianGenerator(z_dim=4, data_shape=[1], mean=1.0, std=1.5)
    z = torch.randn(100_000, 4, generator=torch.Generator().manual_seed(0))
    x = net(z).detach()
    assert x.shape == (100_000, 1)
    assert x.double().mean().item() == pytest.approx(1.0, abs=5 * 1.5 / 316)
    assert x.double().std().item() == pytest.approx(1.5, rel=0.02)
    points = torch.linspace(-5, 7, 13, dtype=torch.float64)
    assert np.allclose(net.log_prob(points).numpy(), stats.norm.logpdf(points, 1.0, 1.5))
    assert np.allclose(net.pdf(points).numpy(), stats.norm.pdf(points, 1.0, 1.5))
    # A KS test of the samples against the pdf's distribution (seeded).
    assert stats.kstest(x[:5000, 0].numpy(), stats.norm(1.0, 1.5).cdf).pvalue > 0.01
    net(z[:8]).sum().backward()
    assert net.mean.grad is not None and net.log_std.grad is not None


def test_gaussian_generator_refuses_what_it_cannot_be() -> None:
    with pytest.raises(ValueError, match="z_dim=1 is smaller than the data's 2 dimensions"):
        GaussianGenerator(z_dim=1, data_shape=[2])
    with pytest.raises(ValueError, match="std must be > 0"):
        GaussianGenerator(z_dim=1, data_shape=[1], std=0.0)
    with pytest.raises(ValueError, match="no class input; set num_classes=0"):
        GaussianGenerator(z_dim=1, data_shape=[1], num_classes=3)


def test_frozen_generator_has_no_trainable_parameter_and_training_leaves_it(tmp_path) -> None:
    cfg = compose_config(
        [*QUICK, "data=gauss1d", "arch=gaussian_1d", "arch.generator.trainable=false",
         "arch.generator.mean=1.0", "train.g_steps=30", "callbacks=none"],
        tmp_path,
    )  # fmt: skip
    run = prepare(cfg)
    generator, critic = run.module.generator, run.module.discriminator
    assert not any(p.requires_grad for p in generator.parameters())
    assert run.module.frozen_players == {"generator"}
    frozen = {k: v.clone() for k, v in generator.state_dict().items()}
    critic_before = [p.detach().clone() for p in critic.parameters()]
    run.fit()
    assert run.module.counters.g_steps == 30
    assert all(torch.equal(frozen[k], v) for k, v in generator.state_dict().items())
    assert not all(torch.equal(a, b) for a, b in zip(critic_before, critic.parameters()))
    # The exact-density path of the metric: N(1, 1) against N(0, 1), KL = 0.5 both ways.
    metric = Density1D(n_samples=2000)
    values = metric.evaluate(run.module, run.datamodule, torch.Generator().manual_seed(0))
    assert values["kl_data_model_2k"] == pytest.approx(0.5, abs=1e-6)
    assert values["kl_model_data_2k"] == pytest.approx(0.5, abs=1e-6)
    assert values["jsd_2k"] == pytest.approx(0.11142, abs=1e-5)  # zoo-games.md §5.2
    assert metric.provenance()["model_density"].startswith("the generator's exact pdf")


# ----------------------------------------------------------------------------- metric
def stand_in(generator: torch.nn.Module, latent=None, live: torch.nn.Module | None = None):
    """What evaluations and the sample plot read of a GANModule, around given networks."""
    module = SimpleNamespace(
        generator=live or generator, sampling_generator=generator, latent=latent or Normal(),
        z_dim=2, num_classes=0, device=torch.device("cpu"), global_rank=0,
    )  # fmt: skip
    module.game = SimpleNamespace(draw_latent=lambda m, n, g: prior_latent(m, n, g))
    return module


def gauss_data(mean: float = 0.0, std: float = 1.0) -> GANDataModule:
    return GANDataModule(Gaussian1D(mean, std, n_samples=20_000), 256, [1], bounded=False)


def test_metric_is_near_zero_for_the_datas_own_distribution() -> None:
    data, noise = gauss_data(), torch.Generator().manual_seed(0)
    module = stand_in(GaussianGenerator(2, [1], mean=0.0, std=1.0))
    exact = Density1D(10_000).evaluate(module, data, noise)
    assert exact["jsd_10k"] < 1e-12 and abs(exact["kl_data_model_10k"]) < 1e-9
    kde = Density1D(10_000, model_density="kde")
    values = kde.evaluate(module, data, noise)
    # A KDE of 10k draws: Scott's bandwidth widens N(0,1) to σ 1.013 and sampling noise adds.
    assert 0 < values["jsd_10k"] < 1e-3 and 0 < values["kl_data_model_10k"] < 5e-3
    # The grid ends a quarter of the 20k samples' range beyond them: ±6σ.
    assert values["mean_data"] == pytest.approx(0.0, abs=1e-9)
    assert values["std_data"] == pytest.approx(1.0, abs=1e-6)
    assert values["std_10k"] == pytest.approx(1.0, abs=0.03)
    assert kde.provenance()["model_density"].endswith("(Scott's rule)")
    assert set(values) == set(kde.names()) and kde.primary == "jsd_10k"
    fixed = Density1D(10_000, model_density="kde", bandwidth=0.05)
    narrow = fixed.evaluate(module, data, torch.Generator().manual_seed(0))
    assert fixed.provenance()["model_density"].endswith("bandwidth 0.05 (fixed)")
    assert narrow["jsd_10k"] != values["jsd_10k"] and narrow["jsd_10k"] < 2e-3


def test_metric_matches_closed_forms_and_quadrature_for_a_known_gaussian_pair() -> None:
    module = stand_in(GaussianGenerator(2, [1], mean=1.0, std=1.5))
    values = Density1D(1000).evaluate(module, gauss_data(), torch.Generator().manual_seed(0))
    assert values["kl_data_model_1k"] == pytest.approx(gaussian_kl(0, 1, 1, 1.5), abs=1e-6)
    assert values["kl_model_data_1k"] == pytest.approx(gaussian_kl(1, 1.5, 0, 1), abs=1e-6)
    expected_jsd = quad_jsd(stats.norm(0, 1), stats.norm(1, 1.5))
    assert expected_jsd == pytest.approx(0.19858 / 2, abs=1e-5)  # zoo-games.md §5.3
    assert values["jsd_1k"] == pytest.approx(expected_jsd, abs=1e-6)
    # Under a uniform latent the Gaussian's pdf no longer describes the samples: a KDE.
    uniform = stand_in(GaussianGenerator(2, [1], mean=1.0, std=1.5), latent=Uniform())
    metric = Density1D(1000)
    metric.evaluate(uniform, gauss_data(), torch.Generator().manual_seed(0))
    assert metric.provenance()["model_density"].startswith("Gaussian KDE")


def test_divergences_by_hand_on_a_coarse_grid() -> None:
    x = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    p = torch.tensor([0.2, 0.6, 0.2], dtype=torch.float64)
    q = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    values = divergences(x, p.log(), q.log())
    trapezoid = lambda f: 0.5 * f[0] + f[1] + 0.5 * f[2]  # noqa: E731
    m = (p + q) / 2
    assert values["kl_pq"] == pytest.approx(trapezoid(p * (p / q).log()).item(), rel=1e-12)
    assert values["kl_qp"] == pytest.approx(trapezoid(q * (q / p).log()).item(), rel=1e-12)
    jsd = 0.5 * trapezoid(p * (p / m).log()) + 0.5 * trapezoid(q * (q / m).log())
    assert values["jsd"] == pytest.approx(jsd.item(), rel=1e-12)


def test_metric_refuses_data_without_a_density() -> None:
    ring = GANDataModule(GaussianRing(n_samples=512), 64, [2], bounded=False)
    with pytest.raises(UserError, match=r"needs 1D data with a known density, but data.shape"):
        Density1D().prepare(ring)


# ----------------------------------------------------------------------------- the 1D plot
class ExactLogRatio(torch.nn.Module):
    """A critic whose score is log N(x; 0, 1) − log N(x; 1, 1.5²): the optimal logit."""

    def forward(self, x: torch.Tensor, labels=None) -> torch.Tensor:
        x = x.double().flatten()
        log_p = torch.distributions.Normal(0.0, 1.0).log_prob(x)
        return (log_p - torch.distributions.Normal(1.0, 1.5).log_prob(x)).float()


def test_optimal_discriminator_is_p_over_p_plus_q() -> None:
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    p, q = stats.norm.pdf(x, 0, 1), stats.norm.pdf(x, 1, 1.5)
    d_star = optimal_discriminator(torch.from_numpy(np.log(p)), torch.from_numpy(np.log(q)))
    assert np.allclose(d_star.numpy(), p / (p + q), rtol=1e-12)
    # Far out both densities underflow to 0 in the linear domain; the log domain still says
    # which one dominates: N(1, 1.5²)'s wider tail, so D* → 0.
    far = optimal_discriminator(
        torch.tensor([stats.norm.logpdf(60, 0, 1)]), torch.tensor([stats.norm.logpdf(60, 1, 1.5)])
    )
    assert far.item() < 1e-100


def test_density_view_draws_d_star_against_the_live_generator(tmp_path: Path) -> None:
    live = GaussianGenerator(2, [1], mean=1.0, std=1.5)
    ema = GaussianGenerator(2, [1], mean=3.0, std=0.5)  # what samples are drawn from
    module = stand_in(ema, live=live)
    module.discriminator = ExactLogRatio()
    module.game.objective = NonSaturating()
    data = Gaussian1D()
    view = density_view(module, data, data.load().samples, 2000, torch.Generator().manual_seed(0))
    x = view.x.numpy()
    p, q = stats.norm.pdf(x, 0, 1), stats.norm.pdf(x, 1, 1.5)
    assert np.allclose(view.d_star.numpy(), p / (p + q), rtol=1e-6)
    assert np.allclose(view.p_data.numpy(), p, rtol=1e-6)
    assert np.allclose(view.p_model.numpy(), stats.norm.pdf(x, 3, 0.5), rtol=1e-6)
    assert view.fake.mean().item() == pytest.approx(3.0, abs=0.05)
    # The logistic game's D = σ(score); this critic's score is the optimal logit, so D = D*.
    assert view.logistic and np.allclose(view.d_critic.numpy(), view.d_star.numpy(), atol=1e-6)
    path = tmp_path / "g0000001.png"
    image = density_1d(view, path, title="test")
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    with Image.open(path) as png:
        assert png.size == (image.shape[2], image.shape[1])
    # Samples given (what rejection sampling kept): their KDE is drawn, D* stays the live one's.
    solo = stand_in(live)
    solo.discriminator, solo.game.objective = ExactLogRatio(), NonSaturating()
    kept = torch.full((50, 1), 2.0) + 0.1 * torch.randn(50, 1)
    view = density_view(solo, data, data.load().samples, 500, torch.Generator(), fake=kept)
    p, q = stats.norm.pdf(view.x.numpy(), 0, 1), stats.norm.pdf(view.x.numpy(), 1, 1.5)
    assert view.model_kind == "kde" and len(view.fake) == 50
    assert np.allclose(view.d_star.numpy(), p / (p + q), rtol=1e-6)
    # A Wasserstein critic encodes no density ratio: its raw output is drawn, no σ(D).
    module.game.objective = Wasserstein()
    module.discriminator = MLPDiscriminator([1], hidden=[8], activation="tanh")
    view = density_view(module, data, data.load().samples, 500, torch.Generator().manual_seed(0))
    assert view.d_critic is None and not view.logistic and view.scores.shape == view.x.shape
    density_1d(view, tmp_path / "wasserstein.png")


# ----------------------------------------------------------------------------- training
# Seeds 0-4 at 200 G steps, the data sets' defaults (conf/data/*1d.yaml): gauss1d JSD
# 0.46-0.50 -> 0.004-0.017; mixture1d 0.69 -> 0.12-0.27 (the light mode mostly dropped).
@pytest.mark.parametrize(("data", "bar"), [("gauss1d", 0.05), ("mixture1d", 0.35)])
def test_short_training_lowers_the_jsd(tmp_path: Path, data: str, bar: float) -> None:
    cfg = compose_config([*QUICK, f"data={data}", "train.g_steps=200", "callbacks=none"], tmp_path)
    run = prepare(cfg)
    assert type(run.module.game.objective).__name__ == "NonSaturating"
    metric = Density1D(n_samples=5000)
    metric.prepare(run.datamodule)
    before = metric.evaluate(run.module, run.datamodule, torch.Generator().manual_seed(0))
    run.fit()
    after = metric.evaluate(run.module, run.datamodule, torch.Generator().manual_seed(0))
    assert before["jsd_5k"] > 0.45 and after["jsd_5k"] < bar, (before, after)


def test_sample_grid_draws_the_1d_plot_and_the_games_views(tmp_path: Path, monkeypatch) -> None:
    cfg = compose_config(
        [
            *QUICK,
            "data=gauss1d",
            "train.g_steps=3",
            "callbacks=none",
            "data.source.n_samples=4096",
        ],
        tmp_path,
    )
    run = prepare(cfg)
    view = torch.zeros(3, 5, 7, dtype=torch.uint8)
    monkeypatch.setattr(type(run.module.game), "sample_views", lambda self, m, s: {"energy": view})
    grid = SampleGrid(str(tmp_path / "samples"), every=2, n_density=500)
    run.trainer.callbacks.append(grid)
    run.fit()
    for name in ("g0000002.png", "g0000003.png", "g0000003_energy.png"):
        assert (tmp_path / "samples" / name).is_file(), name
    with Image.open(tmp_path / "samples" / "g0000003_energy.png") as png:
        assert png.size == (7, 5)
    assert grid.last_path == tmp_path / "samples" / "g0000003.png"


def test_the_aae_on_1d_data_draws_its_densities_without_a_critic_on_x(tmp_path: Path) -> None:
    """The AAE's critic scores codes z (z_dim 8), so the 1D plot must not feed it points x."""
    overrides = [*QUICK, "model=aae", "data=gauss1d", "train.g_steps=2", "callbacks=none"]
    run = prepare(compose_config([*overrides, "data.source.n_samples=4096"], tmp_path))
    grid = SampleGrid(str(tmp_path / "samples"), every=2, n_density=500)
    run.trainer.callbacks.append(grid)
    run.fit()
    assert (tmp_path / "samples" / "g0000002.png").is_file()
    data = run.datamodule.source
    view = density_view(run.module, data, data.load().samples, 500, torch.Generator())
    assert view.scores is None and view.d_critic is None
    assert torch.isfinite(view.p_model).all() and torch.isfinite(view.d_star).all()


# ----------------------------------------------------------------------------- refusals
def test_an_image_architecture_on_1d_data_is_one_line(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["trainer.accelerator=cpu", "data=gauss1d", "arch=dcgan", "train.g_steps=1"]
    code, out, err = call_console(cli.run, "gan-run", monkeypatch, capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "needs image data (data.shape [C, H, W]), got [1]" in lines[0]
    assert "use arch=mlp_1d or arch=gaussian_1d for 1D data" in lines[0]
