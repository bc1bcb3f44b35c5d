"""aug=ada in a run: the critic's real scores move p, p is logged, checkpointed and resumed, and
games whose critic scores are not logits of "real" refuse it in one line."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_config
from gan_runner.errors import UserError
from gan_runner.train import build_module, train
from test_resume import straight_and_resumed

DCGAN_ADA = [
    "model=dcgan",
    "data=digits",
    "data.resolution=8",
    "data.batch_size=16",
    "arch.generator.base_width=8",
    "arch.discriminator.base_width=8",
    "aug=ada",
    "aug.speed_kimg=0.5",  # p moves by 16·4/500 = 0.128 per adjustment: visible in 12 steps
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "callbacks.samples=null",
    "callbacks.loss_curve=null",
    "metrics=[]",
    "train.log_every=1",
]


def test_p_follows_the_critics_real_scores_and_is_logged_and_resumed(tmp_path) -> None:
    a, b = straight_and_resumed(
        tmp_path, [*DCGAN_ADA, "train.g_steps=12", "callbacks.checkpoint.every=6"], at=6
    )
    p_key = "discriminator.augment.p"
    assert torch.equal(a["state_dict"][p_key], b["state_dict"][p_key])
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    # Real scores above the target (r_t > 0.6) at each of the 3 adjustments (critic steps 4, 8,
    # 12): p rose by 16·4/(0.5·1000) = 0.128 each time, from 0.
    assert float(a["state_dict"][p_key]) == pytest.approx(3 * 0.128)
    assert float(a["state_dict"]["discriminator.augment.r_t"]) > 0.6


def test_p_and_r_t_are_logged(tmp_path) -> None:
    values = train(compose_config([*DCGAN_ADA, "train.g_steps=4"], tmp_path / "run"))
    assert values["train/aug_p"] == pytest.approx(0.128)
    assert values["train/aug_r_t"] > 0.6


@pytest.mark.parametrize("model", ["bigan", "ebgan"])
def test_games_without_real_logits_refuse_ada(tmp_path, model) -> None:
    cfg = compose_config(
        [f"model={model}", "data=digits", "data.resolution=8", "aug=ada"], tmp_path / "run"
    )
    with pytest.raises(UserError, match="aug=ada adapts its strength"):
        build_module(cfg)


def test_a_target_outside_zero_one_is_one_line(tmp_path) -> None:
    with pytest.raises(UserError, match=r"aug.target=1.5 must be in \(0, 1\)") as refused:
        train(compose_config([*DCGAN_ADA, "aug.target=1.5"], tmp_path / "run"))
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything trained
