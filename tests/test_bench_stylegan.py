"""`make bench`'s StyleGAN2 case: the plain four-phase loop does exactly gan-run's work."""

from __future__ import annotations

import pytest
import torch

from conftest import QUICK
from gan_runner.bench.timing import Variant, compose_run, train_variant

# 8×8 digits, 8 channels everywhere: a batch takes ~15 ms on one thread. 33 batches run the
# path-length phase 9 times and R1 3 times (batches 0, 16, 32), with a log at batch 30.
TINY_STYLEGAN2 = [
    "model=stylegan2",
    "data=digits",
    "data.resolution=8",
    "data.batch_size=16",
    "z_dim=16",
    "arch.generator.w_dim=16",
    "arch.generator.mapping_layers=2",
    "arch.generator.channel_base=64",
    "arch.generator.channel_max=8",
    "arch.discriminator.channel_base=64",
    "arch.discriminator.channel_max=8",
    "train.log_every=10",
]


def _train(tmp_path, side: str, batches: int):
    cfg = compose_run([*QUICK, "callbacks=none", "metrics=[]", *TINY_STYLEGAN2], tmp_path)
    return train_variant(Variant(side), cfg, 3, batches - 3, torch.device("cpu"))


def _state(module) -> dict[str, torch.Tensor]:
    return {**module.state_dict(), "pl_mean": module.game.pl_mean}


@pytest.fixture(scope="module")
def plain_33(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("plain"), "plain", 33)


def test_the_plain_stylegan2_loop_and_gan_run_train_to_identical_weights(plain_33, tmp_path):
    plain_window, plain = plain_33
    gan_window, gan_run = _train(tmp_path, "gan_run", 33)
    assert (plain_window.d_steps, plain_window.g_steps) == (gan_window.d_steps, gan_window.g_steps)
    assert gan_run.counters.d_steps == 33
    assert gan_run.phase_due == {
        "generator": 33,
        "generator_reg": 33,
        "discriminator": 33,
        "discriminator_reg": 33,
    }
    trained, expected = _state(gan_run), _state(plain)
    assert trained.keys() == expected.keys()
    assert "generator.mapping.w_avg" in trained and float(trained["pl_mean"]) > 0
    for name, value in expected.items():
        assert torch.equal(value, trained[name]), name


def test_one_batch_fewer_shows_up_in_the_weights_w_avg_and_pl_mean(plain_33, tmp_path):
    _, plain = plain_33
    _, gan_run = _train(tmp_path, "gan_run", 32)
    expected, trained = _state(plain), _state(gan_run)
    differ = {name for name, value in expected.items() if not torch.equal(value, trained[name])}
    assert {"generator.mapping.w_avg", "pl_mean"} <= differ
    assert any(name.startswith("discriminator.") for name in differ)
