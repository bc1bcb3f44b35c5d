"""Every paper recipe learns: a brief run through the real config beats its untrained generator.

Recipes are found by globbing conf/model/*.yaml. Each trains with its own objective, penalties,
optimizer, learning rates, n_critic, critic boost and batch size; only the data, the run length
and the network widths shrink, so that the file runs in a few CPU minutes.

- Recipes with MLP players train on ring8, scored by the PacGAN mode protocol (BENCHMARKS.md).
- Every recipe trains on scikit-learn's 8x8 digits, scored by a Fréchet distance in pixel space.

Thresholds come from measured runs (seed 0; seeds 1 and 2 pass too) with a 1.6-2x margin or
more. Each test prints its numbers: a failure shows them, and `pytest -s` shows them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from conftest import game_of_recipe, options
from gan_runner.bench.quality import drs_scores
from gan_runner.metrics.mixture import ModeStats, evaluate_mixture
from helpers_quality import (
    Run,
    generated,
    pixel_frechet,
    prepare,
    sliced_wasserstein,
    trace_of_covariance,
)

# Translation recipes map images to images, not noise to samples: tests/test_cyclegan.py and
# test_pix2pix.py train them on the embedded digit pairs.
RECIPES = [r for r in options("model") if game_of_recipe(r).domains == 1]


def _generator_targets() -> dict[str, str]:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="gan_runner.conf", version_base="1.3"):
        targets = {
            recipe: str(compose("train", overrides=[f"model={recipe}"]).arch.generator._target_)
            for recipe in RECIPES
        }
    GlobalHydra.instance().clear()
    return targets


# An MLP models 2D points; convolutional families need images (and refuse ring8).
MLP_RECIPES = [r for r, target in _generator_targets().items() if target.endswith("MLPGenerator")]


def small_players(cfg: DictConfig) -> list[str]:
    """Narrow networks of whatever family the recipe selects, found by their config keys."""
    overrides = []
    for side in ("generator", "discriminator"):
        if "hidden" in cfg.arch[side]:
            overrides.append(f"arch.{side}.hidden=[128,128,128]")
        if "width" in cfg.arch[side]:  # SNGAN's ResNet (DCGAN at 8x8 is small already)
            overrides.append(f"arch.{side}.width=32")
    if "hidden" in cfg.arch.generator:
        # PacGAN's 2D generator is a BatchNorm MLP. Without it, no recipe leaves the centre of
        # ring8 in a brief run (nsgan's default: 0/8 modes after 1.5k G steps at width 512),
        # and flattened digits stay at FD ~34 instead of ~5.
        overrides.append("arch.generator.norm=batch")
    return overrides


def recipe_cfg(make_cfg, recipe: str, steady_d_steps: int, *overrides: str) -> DictConfig:
    """The recipe, narrowed, for `steady_d_steps // n_critic` G steps (plus any critic boost)."""
    probe = make_cfg(f"model={recipe}", *overrides)
    g_steps = max(1, steady_d_steps // probe.n_critic)
    ours = {o.split("=")[0] for o in overrides}
    narrow = [o for o in small_players(probe) if o.split("=")[0] not in ours]
    cfg = make_cfg(f"model={recipe}", *overrides, *narrow, f"train.g_steps={g_steps}")
    with open_dict(cfg):  # keep only the generator EMA: no files, plots or progress bars
        for name in cfg.callbacks:
            if name != "ema":
                cfg.callbacks[name] = None
    return cfg


def steps(run: Run) -> str:
    return f"{run.module.counters.g_steps} G / {run.module.counters.d_steps} D steps"


# ----------------------------------------------------------------------------- ring8
@dataclass(frozen=True)
class Ring8:
    """How a recipe is held to ring8: the bar, its run length and any extra overrides."""

    steady_d_steps: int = 1000
    modes_bar: bool = True  # False: only the sliced distance to the data must halve
    overrides: tuple[str, ...] = ()
    marks: tuple[Any, ...] = ()


SGD_ON_RING8 = (
    "SGD lr 0.1, momentum 0.5 (the 2014 paper's MNIST settings) does not fit ring8's std-0.01 "
    "modes: after 1k G steps nsgan's samples collapse to one point (0/8 modes) and gan's fly "
    "apart (sliced W1 0.63 -> 0.98); lr 0.01 and 0.003 fail too. Both learn digits below."
)
# The default bar is the mode protocol. Recipes that cannot reach it in a CPU-brief run are
# listed with what was measured; a new recipe is held to the default until shown otherwise.
RING8 = {
    "gan": Ring8(marks=(pytest.mark.slow, pytest.mark.xfail(strict=True, reason=SGD_ON_RING8))),
    "nsgan": Ring8(marks=(pytest.mark.slow, pytest.mark.xfail(strict=True, reason=SGD_ON_RING8))),
    # Clipped critics spread G over the ring long before they sharpen it: 5/8 modes but HQ 0.3%
    # at 200 G steps, and HQ 0.4% still at 2.5k (sliced W1 0.62 -> 0.20 -> 0.18).
    "wgan": Ring8(modes_bar=False),
    # As wgan, and slower: 4/8 modes, HQ 0.3% at 1k G steps; 8/8 but HQ 1.8% at 2.5k. Its own
    # toy generator has no BatchNorm (Gulrajani et al.'s gan_toy.py); with one, the samples
    # swing in and out (sliced W1 0.62 -> 0.86 at 200 G steps).
    # The semi-supervised GAN needs labelled images for its K+1 critic; its own test (and the
    # digits case below) holds it to a bar.
    "ssgan": Ring8(marks=(pytest.mark.skip(reason="needs labelled images (data=digits)"),)),
    # tests/test_f_divergence.py trains it on digits in make test; measured here (kl): 8/8
    # modes, HQ 12.8%, sliced W1 0.63 -> 0.07 at 1k G steps (18 s).
    "fgan": Ring8(marks=(pytest.mark.slow,)),
    # tests/test_ebgan.py trains it on ring8 in make test; measured here: 8/8 modes, HQ 18.1%,
    # sliced W1 0.62 -> 0.11 at 1k G steps.
    "ebgan": Ring8(marks=(pytest.mark.slow,)),
    # tests/test_bigan.py holds BiGAN's encoder to the official reconstruction ratio on digits;
    # its generator on ring8 is not measured yet.
    "bigan": Ring8(marks=(pytest.mark.slow,)),
    "ali": Ring8(marks=(pytest.mark.slow,)),
    # tests/test_aae.py holds it to q(z) ~ p(z) and samples on digits. On ring8 the recipe's
    # 8-D code cannot be filled by 2-D data (4/8 modes, sliced W1 0.62 -> 0.47); with z_dim=2:
    # 8/8 modes, HQ 4.4%, sliced W1 0.62 -> 0.18 at 1k G steps.
    "aae": Ring8(modes_bar=False, overrides=("z_dim=2",), marks=(pytest.mark.slow,)),
    # Conditional: the mixture labels each point by its mode (8/8 modes, HQ 24.7% at 1k G steps).
    "cgan": Ring8(overrides=("data.num_classes=8",), marks=(pytest.mark.slow,)),
    "wgan_gp": Ring8(
        steady_d_steps=5000,
        marks=(
            pytest.mark.slow,
        ),  # 5,000 critic steps (~27 s); test_recipe_learns_digits keeps it
        modes_bar=False,
        # Measured with the base config's N(0, I) latent of 64 dimensions and constant LR. With
        # ring8's 2D recipe (z_dim 2, LR decay over this brief run) it moved less: sliced W1
        # 0.62 -> 0.55 (decay) and 0.36 (constant), against the bar of 0.31; with the recipe's
        # island latent at z_dim 64, 0.46.
        overrides=("arch.generator.norm=none", "schedule=constant", "z_dim=64", "latent=normal"),
    ),
}


def ring8_scores(run: Run, real: torch.Tensor) -> tuple[ModeStats, float]:
    stats = evaluate_mixture(run.module, run.datamodule.source, n=2500, seed=0)
    return stats, sliced_wasserstein(generated(run.module, len(real), seed=1), real)


@pytest.mark.parametrize(
    "recipe", [pytest.param(r, marks=RING8.get(r, Ring8()).marks) for r in MLP_RECIPES]
)
def test_recipe_covers_ring8_modes(make_cfg, recipe: str) -> None:
    case = RING8.get(recipe, Ring8())
    cfg = recipe_cfg(make_cfg, recipe, case.steady_d_steps, "data=ring8", *case.overrides)
    run = prepare(cfg)
    real, _ = run.datamodule.source.sample(2500, torch.Generator().manual_seed(2))
    before, distance_before = ring8_scores(run, real)
    run.fit()
    after, distance_after = ring8_scores(run, real)
    summary = (
        f"{recipe} on ring8, {steps(run)}: untrained {before}, sliced W1 {distance_before:.3f} "
        f"-> trained {after}, sliced W1 {distance_after:.3f}"
    )
    print(summary)
    # The untrained generator is a blob off the ring: the bars below are all learned.
    assert before.modes <= 2 and before.hq_fraction <= 0.01, summary
    assert distance_after <= 0.5 * distance_before, summary
    if case.modes_bar:  # measured for lsgan: 8/8 modes, HQ 10.3%, rKL 0.48
        assert after.modes >= 6 and after.hq_fraction >= 0.05, summary


# ----------------------------------------------------------------------------- default 2D recipe
# (min modes, min HQ fraction, max reverse KL) after DEFAULT_2D_STEPS G steps, seed 0. Measured:
# ring8 8/8 modes, HQ 74.6%, rKL 0.016; grid25 25/25, HQ 76.9%, rKL 0.041 (untrained 0/8, 1/25).
# The old recipe (no penalty, Adam 1e-3/2e-3) left ring8 uneven (rKL 0.248): the bar fails it.
DEFAULT_2D_STEPS = 2000
DEFAULT_2D_BARS = {"ring8": (8, 0.60, 0.05), "grid25": (24, 0.60, 0.15)}
_trained_2d: dict[tuple[str, ...], tuple[Run, ModeStats, ModeStats]] = {}


def train_default_2d(make_cfg, data: str, *overrides: str) -> tuple[Run, ModeStats, ModeStats]:
    """The 2D recipe ring8 and grid25 bring without model=..., cut to DEFAULT_2D_STEPS.

    Trained once per module: the recipe's grid25 run is both a test and the other test's baseline.
    """
    key = (data, *overrides)
    if key not in _trained_2d:
        _trained_2d[key] = _train_default_2d(make_cfg, data, *overrides)
    return _trained_2d[key]


def _train_default_2d(make_cfg, data: str, *overrides: str) -> tuple[Run, ModeStats, ModeStats]:
    cfg = make_cfg(f"data={data}", f"train.g_steps={DEFAULT_2D_STEPS}", *overrides)
    with open_dict(cfg):
        for name in cfg.callbacks:
            if name != "ema":
                cfg.callbacks[name] = None
    run = prepare(cfg)
    before = evaluate_mixture(run.module, run.datamodule.source, n=2500, seed=0)
    run.fit()
    return run, before, evaluate_mixture(run.module, run.datamodule.source, n=2500, seed=0)


@pytest.mark.parametrize(
    "data",
    # grid25's run (~40 s) in test-all: make test keeps ring8, the default data set's, and
    # `make bench-quality` scores both over 10 seeds.
    [pytest.param(d, marks=[pytest.mark.slow] if d == "grid25" else []) for d in DEFAULT_2D_BARS],
)
def test_default_2d_recipe_covers_every_mode(make_cfg, data: str) -> None:
    # conf/_mixture2d/recipe.yaml cut to 2k of its 13k G steps (the linear LR decay shortens with
    # it); `make bench-quality` runs it in full.
    cfg = make_cfg(f"data={data}")
    assert (cfg.z_dim, cfg.data.batch_size, cfg.optimizer.discriminator.lr) == (4, 1024, 4e-3)
    assert cfg.latent._target_.endswith("GaussianMixture") and cfg.latent.components == 100
    assert list(cfg.regularizer) == ["zero_gp"] and cfg.regularizer.zero_gp.target == 0
    run, before, after = train_default_2d(make_cfg, data)
    summary = f"default 2D recipe on {data}, {steps(run)}: untrained {before} -> trained {after}"
    print(summary)
    modes, hq, rkl = DEFAULT_2D_BARS[data]
    # An untrained blob: on grid25 it sits on the centre mode (1/25 modes, yet HQ ~95%), so the
    # untrained bar is on modes and the trained bars are all learned.
    assert before.modes <= 2, summary
    assert after.modes >= modes and after.hq_fraction >= hq and after.reverse_kl <= rkl, summary


@pytest.mark.slow  # two 2k-step grid25 runs (~70 s); the README's numbers come from bench-quality
def test_islands_leave_less_between_modes_than_a_connected_latent(make_cfg) -> None:
    # The recipe's reason for latent=gaussian_mixture: a continuous generator fed N(0, I) must
    # put mass on paths between grid25's modes (the recipe before the islands: same players,
    # z_dim 4). Measured at 2k steps: HQ 61.1% with N(0, I), 76.9% with the islands.
    _, _, connected = train_default_2d(make_cfg, "grid25", "latent=normal")
    _, _, islands = train_default_2d(make_cfg, "grid25")
    summary = f"grid25 at {DEFAULT_2D_STEPS} G steps: N(0, I) {connected}; islands {islands}"
    print(summary)
    assert connected.modes >= 24 and islands.hq_fraction >= connected.hq_fraction + 0.08, summary


@pytest.mark.slow  # a 2k-step ring8 run of its own (~35 s)
def test_drs_filters_the_bridges_of_a_connected_latent(make_cfg) -> None:
    # Discriminator rejection sampling (what `make bench-quality` reports as its own row): its
    # critic must lift HQ and keep every mode. It has most to filter where a generator fed
    # N(0, I) leaves mass between modes (ring8's recipe before the islands, z_dim 2).
    # Measured at 2k steps: ring8 70.5% -> 76.4%; a random filter moves it by noise (s.d. ~1.4).
    run, _, after = train_default_2d(make_cfg, "ring8", "latent=normal", "z_dim=2")
    drs = drs_scores(run.module, run.datamodule.source, seed=0)
    print(f"ring8, N(0, I) latent, {steps(run)}: {after}; with DRS: {drs}")
    assert drs["drs_modes"] == 8 and drs["drs_hq_percent"] >= 100 * after.hq_fraction + 3, drs


# ----------------------------------------------------------------------------- digits
def digits_budget(recipe: str) -> int:
    # Convolutional critic steps cost ~5-10x an MLP's on 8x8 images; all converge well within.
    return 1500 if recipe in MLP_RECIPES else 400


# Recipes whose paper schedule does not fit a brief run, and what they train with here instead.
DIGITS_OVERRIDES = {
    # Its LR decays to 0 within the brief run: pixel FD 73.8 -> 21.3, above the mean image (18.8);
    # with a constant LR 8.89.
    "sngan_projection": ("schedule=constant",),
}


# Zoo recipes whose own family test trains them on embedded data against their own metric
# (tests/test_conditional.py, test_infogan.py, test_semi_supervised.py, test_f_divergence.py,
# test_ebgan.py, test_sagan.py, test_biggan.py, test_stylegan.py, test_progressive.py): here
# only in test-all, to keep `make test` under 15 minutes. The style-based and progressive
# recipes at their paper widths take minutes (and gigabytes) here; their own tests run tiny.
# (test_bigan.py holds bigan and ali's encoder to the reconstruction ratio, not their samples.)
FAMILY_TESTED = {
    "aae",
    "sagan",
    "biggan",
    "cgan",
    "acgan",
    "sngan_projection",
    "infogan",
    "ssgan",
    "fgan",
    "ebgan",
    "bigan",
    "ali",
    "stylegan",
    "stylegan2",
    "pggan",
}


@pytest.mark.parametrize(
    "recipe",
    [pytest.param(r, marks=[pytest.mark.slow] if r in FAMILY_TESTED else []) for r in RECIPES],
)
def test_recipe_learns_digits(make_cfg, recipe: str) -> None:
    extra = DIGITS_OVERRIDES.get(recipe, ())
    cfg = recipe_cfg(
        make_cfg, recipe, digits_budget(recipe), "data=digits", "data.resolution=8", *extra
    )
    run = prepare(cfg)
    data = run.datamodule.data
    before = pixel_frechet(run.module, data)
    run.fit()
    after = pixel_frechet(run.module, data)
    # The best constant image (the data mean) scores the data's total variance.
    constant = trace_of_covariance(data)
    summary = (
        f"{recipe} on digits, {steps(run)}: pixel FD untrained {before:.2f} -> trained "
        f"{after:.2f} (constant mean image: {constant:.2f})"
    )
    print(summary)
    assert after <= 0.5 * before, summary
    # Below the mean image: the generator has learned how digits vary, not only their average.
    assert after < constant, summary
