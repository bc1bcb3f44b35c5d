"""train.batches_per_step: k batches fetched as one and trained in one Lightning step are the run
trained one batch per step: weights, EMA, optimizers, counters, random state, checkpoints,
sample grids, exact resume and preemption inside a group."""

from __future__ import annotations

import signal

import pytest
import torch

from conftest import QUICK, compose_config
from gan_runner.errors import UserError
from gan_runner.train import train
from test_resume import _assert_same_state, _run, _signal_at


@pytest.mark.parametrize("k", [4, 7])
def test_k_batches_per_step_train_the_run_of_one_batch_per_step(tmp_path, k) -> None:
    # 80 batches over epochs of 15 (n_critic 2): groups end mid-epoch and epochs mid-group.
    one = _run(tmp_path / "one", "train.g_steps=40", "train.batches_per_step=1")
    grouped = _run(tmp_path / "grouped", "train.g_steps=40", f"train.batches_per_step={k}")
    assert {p.name for p in one.iterdir()} == {p.name for p in grouped.iterdir()}
    for name in ("g0000020.ckpt", "last.ckpt"):  # g20: batch 40, inside a group of 7
        a, b = (torch.load(run / name, weights_only=True) for run in (one, grouped))
        _assert_same_state(a, b)
        assert (
            a["loops"]["fit_loop"]["state_dict"]["combined_loader"]
            == b["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        )  # the loader's place in its epoch, in batches


def test_a_checkpoint_inside_a_group_resumes_exactly_with_any_k(tmp_path) -> None:
    straight = _run(tmp_path / "straight", "train.g_steps=40", "train.batches_per_step=1")
    # g20 is batch 40: the 5th of the 6th group of 7; the resume takes them 3 at a time.
    saved = _run(tmp_path / "saved", "train.g_steps=40", "train.batches_per_step=7")
    resumed = _run(
        tmp_path / "resumed",
        "train.g_steps=40",
        "train.batches_per_step=3",
        f"resume='{saved / 'g0000020.ckpt'}'",
    )
    a, b = (torch.load(run / "last.ckpt", weights_only=True) for run in (straight, resumed))
    _assert_same_state(a, b)


def test_a_signal_inside_a_group_saves_there_and_resumes_exactly(tmp_path, monkeypatch) -> None:
    straight = _run(tmp_path / "straight", "train.g_steps=40", "train.batches_per_step=1")
    _signal_at(monkeypatch, 23, signal.SIGTERM)  # batch 46: inside a group of 4
    with pytest.raises(SystemExit):
        _run(tmp_path / "stopped", "train.g_steps=40", "train.batches_per_step=4")
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["gan_runner"]["counters"]["g_steps"] == 23
    monkeypatch.undo()
    resumed = _run(tmp_path / "stopped", "train.g_steps=40", "resume=auto")
    a, b = (torch.load(run / "last.ckpt", weights_only=True) for run in (straight, resumed))
    _assert_same_state(a, b)


def test_sample_grids_and_evaluations_fall_on_the_same_steps(tmp_path) -> None:
    common = [
        *QUICK,
        "data=ring8",
        "data.source.n_samples=2048",
        "arch.generator.hidden=[16]",
        "arch.discriminator.hidden=[16]",
        "train.g_steps=10",
        "callbacks.samples.every=3",
        "callbacks.metrics.every=4",
        "metrics.mixture.n_samples=200",
        "metrics.mixture.scatter_dir=null",
        "callbacks.loss_curve=null",
    ]
    for k in (1, "null"):  # null: the default, 16 batches a step here
        train(compose_config([*common, f"train.batches_per_step={k}"], tmp_path / f"k{k}"))
    runs = [tmp_path / f"k{k}" for k in (1, "null")]
    grids = [sorted(p.name for p in (run / "samples").iterdir()) for run in runs]
    assert grids[0] == grids[1] and "g0000003.png" in grids[0]
    lines = [(run / "metrics.jsonl").read_text().splitlines() for run in runs]
    assert len(lines[0]) == len(lines[1]) == 3  # g 4, 8 and the end (10)
    for a, b in zip(*lines):  # the same values at the same steps (times and paths aside)
        assert a.split('"values"')[1].split("}")[0] == b.split('"values"')[1].split("}")[0]


def test_data_that_cannot_be_fetched_k_at_a_time_is_refused_in_one_line(tmp_path) -> None:
    cfg = compose_config(
        [*QUICK, "model=cyclegan", "data=digits_unpaired", "train.batches_per_step=2"],
        tmp_path / "run",
    )
    with pytest.raises(
        UserError, match=r"train.batches_per_step=2 .*use train.batches_per_step=1"
    ):
        train(cfg)
    with pytest.raises(UserError, match="train.batches_per_step"):
        train(compose_config([*QUICK, "train.batches_per_step=0"], tmp_path / "zero"))
