"""Exact resume and preemption: a resumed run is the run that was never stopped."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import gan_runner.train as train_py
from conftest import QUICK, TINY_DIGITS, call_console, compose_config
from gan_runner import cli
from gan_runner.errors import UserError
from gan_runner.train import train

# n_critic=2, EMA on, a learning-rate schedule, and an epoch of 15 batches, so the resume point
# (40 batches in) lies mid-epoch and the run crosses epoch boundaries on both sides of it.
EXACT = (
    *QUICK,
    "n_critic=2",
    "optimizer=adam",  # lr 2e-4 for both players, which the refusal and rollback tests name
    "schedule=linear_decay",
    "data.source.n_samples=1000",
    "data.batch_size=64",
    "arch.generator.hidden=[32,32]",
    "arch.discriminator.hidden=[32,32]",
    "z_dim=8",
    "train.log_every=5",
    "callbacks.samples=null",
    "callbacks.metrics=null",
    "callbacks.loss_curve=null",
    "callbacks.progress=null",
    "callbacks.checkpoint.every=20",
)


def _run(folder: Path, *overrides: str) -> Path:
    train(compose_config([*EXACT, *overrides], folder))
    return folder / "checkpoints"


def straight_and_resumed(tmp_path: Path, overrides: list[str], at: int) -> tuple[dict, dict]:
    """The last checkpoints of a run trained straight and of the same run resumed from its
    g<at> checkpoint: what every game's bit-exact resume test compares."""
    train(compose_config(overrides, tmp_path / "straight"))
    halfway = tmp_path / "straight" / "checkpoints" / f"g{at:07d}.ckpt"
    train(compose_config([*overrides, f"resume='{halfway}'"], tmp_path / "resumed"))
    a, b = (
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)
        for run in ("straight", "resumed")
    )
    return a, b


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for pa, pb in zip(opt_a["state"].values(), opt_b["state"].values(), strict=True):
            for name in pa:
                assert torch.equal(torch.as_tensor(pa[name]), torch.as_tensor(pb[name])), name
    assert a["lr_schedulers"] == b["lr_schedulers"]
    state_a, state_b = a["gan_runner"], b["gan_runner"]
    assert state_a["counters"] == state_b["counters"]
    for rank_a, rank_b in zip(state_a["ranks"], state_b["ranks"], strict=True):
        assert torch.equal(rank_a["noise"], rank_b["noise"])
        assert torch.equal(rank_a["rng"]["torch"], rank_b["rng"]["torch"])


def test_training_2n_equals_n_then_resume_then_n_bit_for_bit(tmp_path):
    straight = _run(tmp_path / "straight", "train.g_steps=40")
    halfway = straight / "g0000020.ckpt"
    assert halfway.is_file()
    resumed = _run(tmp_path / "resumed", "train.g_steps=40", f"resume='{halfway}'")
    a = torch.load(straight / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "last.ckpt", weights_only=True)
    assert a["gan_runner"]["counters"]["g_steps"] == 40
    _assert_same_state(a, b)


# Each embedded data set at its default size (2D: 100k points in batches of 1,024; digits: 28
# batches of 64 per epoch), with EMA and its own metrics, so the run's end lies mid-epoch.
CONTINUED = {
    "ring8": ("data=ring8",),
    "grid25": ("data=grid25",),
    "digits": ("model=dcgan", *TINY_DIGITS, "metrics=[]"),
}
CONTINUED_COMMON = (
    *QUICK,
    "schedule=constant",  # so the longer run's config is the same trajectory
    "seed=3",
    "callbacks.samples=null",
    "callbacks.loss_curve=null",
    "callbacks.progress=null",
    "callbacks.metrics.every=0",  # evaluates only at the end: the end's save follows it
    "metrics.mixture.scatter_dir=null",
)


def _continued(folder: Path, data: str, *overrides: str) -> Path:
    common = [o for o in CONTINUED_COMMON if data != "digits" or "mixture" not in o]
    train(compose_config([*common, *CONTINUED[data], *overrides], folder))
    return folder / "checkpoints"


@pytest.mark.parametrize("data", list(CONTINUED))
@pytest.mark.parametrize("resume_from", ["end_of_run", "periodic"])
def test_a_finished_or_saved_run_continued_equals_the_run_trained_straight(
    tmp_path, data, resume_from
):
    straight = _continued(tmp_path / "straight", data, "train.g_steps=40")
    if resume_from == "end_of_run":  # extend a finished run in its own folder
        _continued(tmp_path / "short", data, "train.g_steps=20")
        resumed = _continued(tmp_path / "short", data, "train.g_steps=40", "resume=auto")
    else:  # a periodic save taken mid-run, continued into a new folder
        saved = _continued(
            tmp_path / "saved", data, "train.g_steps=30", "callbacks.checkpoint.every=20"
        )
        ckpt = saved / "g0000020.ckpt"
        resumed = _continued(tmp_path / "resumed", data, "train.g_steps=40", f"resume='{ckpt}'")
    a = torch.load(straight / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "last.ckpt", weights_only=True)
    assert a["gan_runner"]["counters"]["g_steps"] == 40
    assert a["epoch"] == b["epoch"]
    _assert_same_state(a, b)


# --------------------------------------------------------------------- signals
def _signal_at(monkeypatch, g_steps: int, signum: int) -> None:
    """Make train() send `signum` to this process once the run reaches `g_steps`."""

    class SendSignal(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            if pl_module.counters.g_steps == g_steps and pl_module.last_batch.generator_stepped:
                os.kill(os.getpid(), signum)

    build_trainer = train_py.build_trainer
    monkeypatch.setattr(
        train_py,
        "build_trainer",
        lambda cfg, callbacks, loggers: build_trainer(cfg, [SendSignal(), *callbacks], loggers),
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_after_the_batch_exits_and_resume_auto_continues_exactly(
    tmp_path, monkeypatch, capsys, signum
):
    straight = _run(tmp_path / "straight", "train.g_steps=40")
    _signal_at(monkeypatch, 23, signum)
    with pytest.raises(SystemExit) as stopped:
        _run(tmp_path / "stopped", "train.g_steps=40")
    assert stopped.value.code == 128 + signum
    err = capsys.readouterr().err
    assert f"stopped by {signal.Signals(signum).name} at g_steps=23" in err
    assert signal.getsignal(signum) is not None  # handlers restored after the fit
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["gan_runner"]["counters"]["g_steps"] == 23
    monkeypatch.undo()
    resumed = _run(tmp_path / "stopped", "train.g_steps=40", "resume=auto")
    a = torch.load(straight / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "last.ckpt", weights_only=True)
    _assert_same_state(a, b)


# --------------------------------------------------------------------- refusals
def test_resume_with_a_different_config_is_refused_naming_the_keys_unless_forced(tmp_path):
    halfway = _run(tmp_path / "first", "train.g_steps=40") / "g0000020.ckpt"
    resume = ("train.g_steps=40", f"resume='{halfway}'")
    changed = (*resume, "n_critic=3", "optimizer.generator.lr=1e-3")
    with pytest.raises(UserError) as refused:
        _run(tmp_path / "second", *changed)
    message = str(refused.value)
    assert "n_critic: 2 -> 3" in message and "optimizer.generator.lr: 0.0002 -> 0.001" in message
    assert "resume_force=true" in message and "\n" not in message
    # Keys outside the trajectory (logging, checkpoints, where outputs go) may change freely.
    _run(tmp_path / "free", *resume, "train.log_every=3", "callbacks.checkpoint.every=10")
    forced = _run(tmp_path / "forced", *changed, "resume_force=true")
    state = torch.load(forced / "last.ckpt", weights_only=True)["gan_runner"]
    assert state["counters"]["g_steps"] == 40 and state["config"]["n_critic"] == 3


def test_a_fresh_run_never_overwrites_a_run_folder_with_checkpoints(tmp_path):
    _run(tmp_path / "run", "train.g_steps=20")
    with pytest.raises(UserError, match="already holds a run.*resume=auto"):
        _run(tmp_path / "run", "train.g_steps=20")


class _Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_tampered_checkpoint_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    last = _run(tmp_path / "run", "train.g_steps=20") / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["gan_runner"]["config"]["note"] = _Payload()
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    code, out, err = call_console(
        cli.run,
        "gan-run",
        monkeypatch,
        capsys,
        *EXACT,
        f"resume={tampered}",
        f"hydra.run.dir={tmp_path / 'resumed'}",
    )
    assert code == 2 and "this ran" not in out + err
    assert err.count("\n") == 1 and "holds pickled Python code" in err and "resume=" in err


# --------------------------------------------------------------------- divergence guard
def _nan_loss_at(monkeypatch, d_step: int) -> None:
    """One injected NaN: the critic's loss at one discriminator step (its update poisons D)."""
    build_module = train_py.build_module
    injected = []

    def build(cfg):
        module = build_module(cfg)
        loss = module.game.objective.discriminator_loss

        def poisoned(real, fake):
            value = loss(real, fake)
            if module.counters.d_steps == d_step and not injected:
                injected.append(d_step)
                return value * float("nan")
            return value

        module.game.objective.discriminator_loss = poisoned
        return module

    monkeypatch.setattr(train_py, "build_module", build)


GUARDED = ("schedule=constant", "callbacks.guard.every=5", "callbacks.checkpoint.every=10")


def test_guard_stops_naming_the_loss_and_steps_and_keeps_the_good_checkpoint(
    tmp_path, monkeypatch
):
    _nan_loss_at(monkeypatch, d_step=25)  # during g_steps 12..13
    with pytest.raises(UserError) as stopped:
        _run(tmp_path / "run", *GUARDED, "train.g_steps=40")
    message = str(stopped.value)
    # The first term that went non-finite, by phase.
    assert "train/discriminator/adversarial became non-finite between g_steps=10 and 15" in message
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["gan_runner"]["counters"]["g_steps"] == 10
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_guard_rolls_back_to_the_last_checkpoint_with_lower_learning_rates(
    tmp_path, monkeypatch, caplog
):
    _nan_loss_at(monkeypatch, d_step=25)
    rollback = (*GUARDED, "callbacks.guard.action=rollback", "callbacks.guard.lr_factor=0.25")
    last = _run(tmp_path / "run", *rollback, "train.g_steps=40") / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["gan_runner"]["counters"]["g_steps"] == 40
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    for optimizer in state["optimizer_states"]:
        assert optimizer["param_groups"][0]["lr"] == pytest.approx(2e-4 * 0.25)
    guard_state = next(v for k, v in state["callbacks"].items() if "DivergenceGuard" in k)
    assert guard_state["rollbacks"] == 1
    assert "rolled back to g_steps=10" in caplog.text


def test_resume_auto_continues_the_newest_run_of_the_same_overrides_in_its_folder(
    tmp_path, monkeypatch, capsys
):
    runs = tmp_path / "runs"
    common = (*EXACT, "logger=csv", "schedule=constant", f"paths.runs_dir={runs}")

    def gan_run(folder: str, *overrides: str) -> int:
        args = (*common, *overrides, f"hydra.run.dir={runs / folder}")
        return call_console(cli.run, "gan-run", monkeypatch, capsys, *args)[0]

    assert gan_run("other", "train.g_steps=20", "seed=1") == 0  # another run: never picked
    assert gan_run("first", "train.g_steps=20") == 0
    assert gan_run("later", "train.g_steps=40", "resume=auto") == 0
    state = torch.load(runs / "first" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["gan_runner"]["counters"]["g_steps"] == 40
    assert not (runs / "later" / "checkpoints").exists()
    with (runs / "first" / "csv" / "metrics.csv").open() as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row["train/d_loss"]]
    assert steps == list(range(5, 41, 5))  # both parts of the run, each step once


def test_a_cluster_handler_installed_before_training_runs_after_the_save(tmp_path, monkeypatch):
    calls = []

    def requeue(signum, frame):  # what submitit does on SIGUSR2: requeue, then exit
        saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
        calls.append((signum, saved["gan_runner"]["counters"]["g_steps"]))

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        _signal_at(monkeypatch, 7, signal.SIGUSR2)
        with pytest.raises(SystemExit):
            _run(tmp_path / "run", "train.g_steps=40")
        assert calls == [(signal.SIGUSR2, 7)]
        assert signal.getsignal(signal.SIGUSR2) is requeue  # handed back after training
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_keys_added_since_a_checkpoint_at_their_defaults_are_no_change():
    from gan_runner.resume import config_differences

    saved = {"n_critic": 5, "data": {"batch_size": 64}}
    current = {
        "n_critic": 5,
        "accumulate": 1,
        "data": {"batch_size": 64, "fraction": None},
        "regularizer": {"spectral_norm": {"networks": ["discriminator"]}},
    }
    assert config_differences(saved, current) == []
    current["data"]["fraction"] = 0.1  # an added key set to train differently is a change
    current["accumulate"] = 4
    assert config_differences(saved, current) == [
        "accumulate: <unset> -> 4",
        "data.fraction: <unset> -> 0.1",
    ]
