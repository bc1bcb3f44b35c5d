"""StyleGAN2's game: lazy phases and their optimizer adjustment, path length, style mixing, R1 in
its own phase, exact resume, gan-sample's style modes, and a short run whose FD improves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import call_console, compose_config
from gan_runner import cli
from gan_runner.errors import UserError
from gan_runner.train import build_module, train
from helpers_quality import pixel_frechet, prepare, trace_of_covariance
from test_resume import straight_and_resumed

TINY = [
    "model=stylegan2",
    "data=digits",
    "data.resolution=8",
    "data.batch_size=8",
    "z_dim=16",
    "arch.generator.w_dim=16",
    "arch.generator.mapping_layers=2",
    "arch.generator.channel_base=64",
    "arch.generator.channel_max=16",
    "arch.discriminator.channel_base=64",
    "arch.discriminator.channel_max=16",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "callbacks.samples=null",
    "callbacks.loss_curve=null",
    "metrics=[]",
]


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def _adam_steps(checkpoint: dict, index: int) -> int:
    state = checkpoint["optimizer_states"][index]["state"]
    return int(next(iter(state.values()))["step"])


@pytest.fixture(scope="module")
def run32(tmp_path_factory) -> Path:
    """32 batches of the four phases (G first): Greg due 8 times, Dreg twice."""
    out = tmp_path_factory.mktemp("stylegan") / "run"
    train(compose_config([*TINY, "train.g_steps=32"], out))
    return out


def test_lazy_phases_run_on_their_interval_and_adjust_adam(run32) -> None:
    checkpoint = _last(run32)
    state = checkpoint["gan_runner"]
    assert state["phase_due"] == {
        "generator": 32, "generator_reg": 32, "discriminator": 32, "discriminator_reg": 32
    }  # fmt: skip
    players = list(state["config"]["game"]["players"])  # optimizer order: the players'
    g, d = players.index("generator"), players.index("discriminator")
    assert _adam_steps(checkpoint, g) == 32 + 8  # Gmain every batch, Greg at 0, 4, ..., 28
    assert _adam_steps(checkpoint, d) == 32 + 2  # Dmain every batch, Dreg at 0 and 16
    groups = {i: checkpoint["optimizer_states"][i]["param_groups"][0] for i in (g, d)}
    assert groups[g]["lr"] == pytest.approx(0.0025 * 4 / 5)  # 0.002
    assert groups[g]["betas"][1] == pytest.approx(0.99 ** (4 / 5))  # 0.991992
    assert groups[d]["lr"] == pytest.approx(0.0025 * 16 / 17)  # 0.0023529
    assert groups[d]["betas"][1] == pytest.approx(0.99 ** (16 / 17))  # 0.990585
    assert groups[g]["betas"][0] == 0.0


def test_pl_mean_and_w_avg_are_saved_and_move(run32) -> None:
    checkpoint = _last(run32)
    assert float(checkpoint["gan_runner"]["game"]["pl_mean"]) > 0
    w_avg = [v for k, v in checkpoint["state_dict"].items() if k.endswith("w_avg")]
    assert w_avg and all(float(v.abs().sum()) > 0 for v in w_avg)


def test_a_phase_without_terms_never_steps_and_adjusts_nothing(tmp_path) -> None:
    # The reference's cfg=cifar stepped an empty path-length phase and cut G's lr to 0.002.
    out = tmp_path / "run"
    train(compose_config([*TINY, "train.g_steps=8", "game.pl_weight=0"], out))
    checkpoint = _last(out)
    g = list(checkpoint["gan_runner"]["config"]["game"]["players"]).index("generator")
    assert _adam_steps(checkpoint, g) == 8
    group = checkpoint["optimizer_states"][g]["param_groups"][0]
    assert group["lr"] == 0.0025 and group["betas"][1] == 0.99


def test_resume_mid_interval_is_bit_exact(tmp_path) -> None:
    # Stopped at batch 9: between Dreg's runs (0, 16) and mid Greg's interval (8, 12).
    overrides = [*TINY, "train.g_steps=18", "callbacks.checkpoint.every=9"]
    a, b = straight_and_resumed(tmp_path, overrides, at=9)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for pa, pb in zip(opt_a["state"].values(), opt_b["state"].values(), strict=True):
            assert all(torch.equal(torch.as_tensor(pa[k]), torch.as_tensor(pb[k])) for k in pa)
    assert torch.equal(a["gan_runner"]["game"]["pl_mean"], b["gan_runner"]["game"]["pl_mean"])
    assert a["gan_runner"]["phase_due"] == b["gan_runner"]["phase_due"]


def _module(tmp_path, *extra: str):
    module = build_module(compose_config([*TINY, *extra], tmp_path / "run"))
    module.noise = torch.Generator().manual_seed(0)
    return module


def test_style_mixing_splits_the_layers_between_two_codes(tmp_path) -> None:
    module = _module(tmp_path, "game.style_mixing=1.0")
    game, generator = module.game, module.generator
    z = torch.randn(4, 16)
    before = generator.mapping.w_avg.clone()
    state = module.noise.get_state()
    mixed = game.mapped(module, z, None)
    generator.mapping.w_avg.copy_(before)
    module.noise.set_state(state)  # the same cutoff and second code, drawn by hand
    cutoff = int(torch.randint(1, generator.num_ws, [], generator=module.noise))
    torch.rand([], generator=module.noise)
    other = module.latent.sample(4, 16, module.noise)
    own = generator.mapping(z, None, update_w_avg=False)
    second = generator.mapping(other, None, update_w_avg=False)
    assert torch.allclose(mixed[:, :cutoff], own[:, :cutoff], atol=1e-6)
    assert torch.allclose(mixed[:, cutoff:], second[:, cutoff:], atol=1e-6)
    assert 1 <= cutoff < generator.num_ws
    # Never mixing gives the plain mapping.
    module.game.style_mixing = 0.0
    assert torch.allclose(game.mapped(module, z, None), generator.mapping(z, None), atol=1e-6)


def test_path_length_matches_a_per_sample_jacobian(tmp_path) -> None:
    module = _module(tmp_path, "game.style_mixing=0", "arch.generator.noise_mode=const")
    game, generator = module.game, module.generator
    generator.eval()  # no w_avg update: the two passes see the same network
    phase = next(p for p in game.phases if p.name == "generator_reg")
    state = module.noise.get_state()
    terms = game.terms(phase, {"samples": torch.zeros(8, 1, 8, 8)}, module, gain=4)
    module.noise.set_state(state)  # the same z (batch 8 / pl_batch_shrink 2) and y, by hand
    z, _ = module.draw_latent(4)
    y = torch.randn(4, 1, 8, 8, generator=module.noise) / math.sqrt(8 * 8)
    ws = generator.mapping(z, None).detach()
    lengths = []
    for i in range(4):  # one sample at a time: a batch-coupled Jacobian would differ
        w = ws[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad((generator.synthesis(w) * y[i : i + 1]).sum(), w)
        lengths.append(g.square().sum(2).mean(1).sqrt())
    lengths = torch.cat(lengths)
    expected_mean = 0.01 * lengths.mean()  # a from 0, decay 0.01
    assert float(game.pl_mean) == pytest.approx(float(expected_mean), rel=1e-4)
    expected = 4 * 2.0 * (lengths - expected_mean).square().mean()  # gain · w_pl · E(ℓ − a)²
    assert float(terms.losses["path_length"].detach()) == pytest.approx(float(expected), rel=1e-4)


def test_r1_runs_alone_in_the_lazy_critic_phase(tmp_path) -> None:
    module = _module(tmp_path)
    game = module.game
    real = torch.randn(8, 1, 8, 8)
    batch = {"samples": real}
    main = next(p for p in game.phases if p.name == "discriminator")
    reg = next(p for p in game.phases if p.name == "discriminator_reg")
    assert set(game.terms(main, batch, module, 1).losses) == {"adversarial"}
    losses = game.terms(reg, batch, module, 16).losses
    assert set(losses) == {"r1"}
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module.discriminator(x).sum(), x)
    gamma = 0.0002 * 8**2 / 8  # the recipe's γ = 0.0002·res²/batch
    expected = 16 * gamma / 2 * grad.flatten(1).square().sum(1).mean()
    assert float(losses["r1"]) == pytest.approx(float(expected), rel=1e-4)


def test_game_refuses_a_generator_without_w(tmp_path) -> None:
    with pytest.raises(UserError, match="has no mapping network; use arch=stylegan2"):
        overrides = ["model=stylegan2", "data=digits", "data.resolution=8", "arch=dcgan"]
        build_module(compose_config(overrides, tmp_path / "run"))


# ----------------------------------------------------------------- gan-sample
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stylegan_ckpt") / "run"
    train(compose_config([*TINY, "train.g_steps=40"], out))
    return out / "checkpoints" / "last.ckpt"


def _gan_sample(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    return call_console(cli.sample, "gan-sample", monkeypatch, capsys, *args)


def _tiles(path: Path, rows: int, cols: int, side: int = 8) -> list[list[np.ndarray]]:
    """The (rows × cols) images of a make_grid PNG (padding 2)."""
    picture = np.asarray(Image.open(path).convert("L"), dtype=np.int16)
    step = side + 2
    return [
        [picture[2 + r * step : 2 + r * step + side, 2 + c * step : 2 + c * step + side]
         for c in range(cols)]
        for r in range(rows)
    ]  # fmt: skip


def test_truncation_zero_gives_the_average_image_for_every_z(
    checkpoint, tmp_path, monkeypatch, capsys
) -> None:
    out = tmp_path / "psi0.png"
    args = [f"ckpt={checkpoint}", "n=8", "nrow=8", "truncation=0", f"out={out}"]
    code, _, err = _gan_sample(monkeypatch, capsys, *args)
    assert code == 0, err
    tiles = _tiles(out, 1, 8)[0]
    # Noise inputs still vary per sample: the trained noise strengths are tiny here, so the
    # images agree to within a grey level or two, where ψ = 1 gives different digits.
    spread = max(int(np.abs(t - tiles[0]).max()) for t in tiles)
    out1 = tmp_path / "psi1.png"
    _gan_sample(monkeypatch, capsys, *args[:3], "truncation=1", f"out={out1}")
    tiles1 = _tiles(out1, 1, 8)[0]
    spread1 = max(int(np.abs(t - tiles1[0]).max()) for t in tiles1)
    assert spread <= 0.1 * spread1, (spread, spread1)


def test_style_mixing_grid_keeps_each_rows_coarse_styles(
    checkpoint, tmp_path, monkeypatch, capsys
) -> None:
    out = tmp_path / "mixing.png"
    args = [f"ckpt={checkpoint}", "mode=style_mixing", "style_mixing.rows=2"]
    args += ["style_mixing.cols=3", "style_mixing.coarse_up_to=4", f"out={out}"]
    code, _, err = _gan_sample(monkeypatch, capsys, *args)
    assert code == 0, err
    tiles = _tiles(out, 3, 4)
    # Fine styles from every column: all four 8-px layers' styles but the 4x4 block's.
    assert not np.array_equal(tiles[1][1], tiles[1][2])  # columns differ within a row
    assert not np.array_equal(tiles[1][1], tiles[2][1])  # rows differ within a column


def test_truncation_sweep_and_the_bad_inputs(checkpoint, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "sweep.png"
    args = [f"ckpt={checkpoint}", "mode=truncation_sweep", "truncation_sweep.rows=2"]
    code, _, err = _gan_sample(monkeypatch, capsys, *args, f"out={out}")
    assert code == 0, err
    tiles = _tiles(out, 2, 5)
    assert np.array_equal(tiles[0][0], tiles[1][0])  # ψ = 0: both rows are the average image
    assert not np.array_equal(tiles[0][4], tiles[1][4])  # ψ = 1: two different samples
    code, _, err = _gan_sample(monkeypatch, capsys, f"ckpt={checkpoint}", "truncation=1.5")
    assert code == 2 and "truncation=1.5 is outside [0, 1]" in err and err.count("\n") <= 1


def test_mixing_refuses_a_generator_without_w(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    overrides = ["model=dcgan", "data=digits", "data.resolution=8", "train.g_steps=1"]
    train(compose_config([*overrides, "trainer.accelerator=cpu", "logger=none"], out))
    ckpt = out / "checkpoints" / "last.ckpt"
    code, _, err = _gan_sample(monkeypatch, capsys, f"ckpt={ckpt}", "mode=style_mixing")
    assert code == 2 and "has no mapping network to W" in err and err.count("\n") <= 1


# ----------------------------------------------------------------- training
STEPS = {"stylegan2": 300, "stylegan": 800}  # StyleGAN 1's lr is 0.001 to StyleGAN2's 0.0025


@pytest.mark.parametrize("model", ["stylegan2", "stylegan"])
def test_training_on_digits_improves_the_pixel_fd(tmp_path, model) -> None:
    overrides = [*TINY, f"model={model}", "data.batch_size=32", f"train.g_steps={STEPS[model]}"]
    run = prepare(compose_config([*overrides, "callbacks.checkpoint=null"], tmp_path / "run"))
    data = run.datamodule.data
    before = pixel_frechet(run.module, data)
    module = run.fit()
    after = pixel_frechet(module, data)
    summary = f"{model} 8 px, {STEPS[model]} steps: pixel FD {before:.2f} -> {after:.2f}"
    print(summary)
    assert after <= 0.5 * before and after < trace_of_covariance(data), summary
