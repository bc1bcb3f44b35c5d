"""Progressive growing as a game: stage and α from images seen, reals faded like G's output, Adam
reset at each fade's ends, metrics only at the data's resolution, exact resume mid-fade."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from conftest import compose_config
from gan_runner.errors import UserError
from gan_runner.nets.progressive import fade_reals
from gan_runner.objectives import Wasserstein
from gan_runner.train import build_module, train
from helpers_quality import pixel_frechet, prepare, trace_of_covariance
from test_resume import straight_and_resumed

# 16 px from 4 px; 64 images (8 batches of 8) per stable and per fade phase: 4 stable for batches
# 0-7, fade to 8 over 8-15, 8 stable 16-23, fade to 16 over 24-31, then 16 px.
TINY = [
    "model=pggan",
    "data=digits",
    "data.resolution=16",
    "data.batch_size=8",
    "z_dim=16",
    "arch.generator.channel_base=64",
    "arch.generator.channel_max=16",
    "game.stable_kimg=0.064",
    "game.fade_kimg=0.064",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "callbacks.samples=null",
    "callbacks.loss_curve=null",
    "metrics=[]",
]


def test_drift_adds_epsilon_times_the_squared_real_score() -> None:
    real, fake = torch.full((4,), 3.0), torch.full((4,), -1.0)
    plain = Wasserstein().discriminator_loss(real, fake)
    drifted = Wasserstein(drift=0.001).discriminator_loss(real, fake)
    assert float(drifted - plain) == pytest.approx(0.001 * 9.0, rel=1e-5)  # ε·D(x)², D(x) ≡ 3


def test_the_stage_follows_images_seen_and_reals_fade_with_it(tmp_path) -> None:
    module = build_module(compose_config(TINY, tmp_path / "run"))
    game = module.game
    seen_by_critic = []
    module.discriminator.register_forward_pre_hook(
        lambda net, args: seen_by_critic.append(tuple(args[0].shape[-2:]))
    )
    module.noise = torch.Generator().manual_seed(0)
    real = torch.rand(8, 1, 16, 16) * 2 - 1
    phase = next(p for p in game.phases if p.name == "discriminator")
    for images_seen, resolution, alpha in ((0, 4, 1.0), (96, 8, 0.5), (200, 16, 0.125)):
        module.counters.images_seen = images_seen
        game.stage = game.schedule.at(images_seen)  # what rollout sets each batch
        for name in ("generator", "discriminator"):
            getattr(module, name).set_stage(game.stage.resolution, game.stage.alpha)
        assert (game.stage.resolution, game.stage.alpha) == (resolution, pytest.approx(alpha))
        seen_by_critic.clear()
        game.terms(phase, {"samples": real}, module, 1)
        assert set(seen_by_critic) == {(resolution, resolution)}  # reals and fakes alike
    expected = fade_reals(real, 16, 0.125)
    assert not torch.equal(expected, real)  # mid-fade: the reals are blended too


def test_adam_restarts_at_every_fade_start_and_end(tmp_path) -> None:
    out = tmp_path / "run"
    train(compose_config([*TINY, "train.g_steps=28"], out))
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    # lod leaves a whole number at batch 9 (72 images: the fade to 8 px has begun), is whole
    # again at batch 16 and leaves it at 25: the last restart was 3 steps (25, 26, 27) ago.
    for optimizer in checkpoint["optimizer_states"]:
        steps = {int(s["step"]) for s in optimizer["state"].values()}
        assert steps == {3}
    resolutions = {
        k: int(v) for k, v in checkpoint["state_dict"].items() if k.endswith("resolution")
    }
    assert set(resolutions.values()) == {16}


def test_resume_mid_fade_is_bit_exact(tmp_path) -> None:
    # Stopped at batch 12: halfway through the fade to 8 px (α = 0.5).
    overrides = [*TINY, "train.g_steps=20", "callbacks.checkpoint.every=12"]
    a, b = straight_and_resumed(tmp_path, overrides, at=12)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for pa, pb in zip(opt_a["state"].values(), opt_b["state"].values(), strict=True):
            assert all(torch.equal(torch.as_tensor(pa[k]), torch.as_tensor(pb[k])) for k in pa)
    assert a["gan_runner"]["counters"] == b["gan_runner"]["counters"]


def test_a_resolution_the_schedule_cannot_reach_is_refused(tmp_path) -> None:
    with pytest.raises(UserError, match="initial_resolution"):
        build_module(
            compose_config([*TINY, "arch.generator.initial_resolution=32"], tmp_path / "r")
        )


def test_growing_from_4_to_8_px_improves_the_pixel_fd_and_metrics_wait(tmp_path, caplog) -> None:
    overrides = [
        *TINY,
        "data.resolution=8",
        "data.batch_size=32",
        "game.stable_kimg=2",
        "game.fade_kimg=2",  # 4 px to batch 62 (2 kimg), fading to batch 125, then 8 px
        "train.g_steps=300",
        "callbacks.ema.half_life_kimg=0.5",
        "metrics=[classifier]",
        "metrics.classifier.extractor.steps=50",
        "metrics.classifier.n_fake=200",
        "metrics.classifier.show_progress=false",
        "callbacks.metrics.every=100",
    ]
    run = prepare(compose_config(overrides, tmp_path / "run"))
    data = run.datamodule.data
    before = pixel_frechet(run.module, data)  # the full-resolution networks, untrained
    with caplog.at_level(logging.INFO, logger="gan_runner.callbacks.metrics"):
        module = run.fit()
    after = pixel_frechet(module, data)
    summary = f"pggan 4->8 px, 300 steps: pixel FD {before:.2f} -> {after:.2f}"
    print(summary)
    assert after <= 0.5 * before and after < trace_of_covariance(data), summary
    skipped = [r.getMessage() for r in caplog.records if "still growing" in r.getMessage()]
    assert len(skipped) == 1 and "8×8 at α=0.584 of 8×8" in skipped[0]  # g_steps 100: fading
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["g_steps"] for row in rows] == [200, 300]
