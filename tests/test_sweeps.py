"""Sweeps and clusters: the optuna and SLURM configs, failed jobs in a multirun, submitit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import QUICK, call_console
from gan_runner import cli, sweeps
from gan_runner.config import check_launch
from gan_runner.errors import UserError

TINY = [*QUICK, "train.g_steps=20", "callbacks.checkpoint.every=10"]


def compose_multirun(*overrides: str, mode: RunMode = RunMode.MULTIRUN) -> DictConfig:
    """conf/train.yaml with its hydra node, as a job of `gan-run -m` sees it."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="gan_runner.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = mode
    HydraConfig.instance().set_config(cfg)
    return cfg


def gan_run(monkeypatch, capsys, sweep_dir: Path, *args: str) -> tuple[int, str, str]:
    monkeypatch.chdir(sweep_dir.parent)
    return call_console(
        cli.run, "gan-run", monkeypatch, capsys, "-m", *args, f"hydra.sweep.dir={sweep_dir}"
    )


def status(job: Path) -> dict:
    return json.loads((job / sweeps.STATUS_FILE).read_text())


@pytest.mark.parametrize(
    ("metric", "direction"),
    [("val/rkl_2500", "minimize"), ("val/modes_2500", "maximize"), ("best/fid_x", "minimize")],
)
def test_optuna_config_follows_the_optimized_metric(metric: str, direction: str) -> None:
    cfg = compose_multirun("sweep=optuna", f"optimized_metric={metric}")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == direction
    assert sweeper.study_name == metric
    assert sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"
    assert sweeper.storage.startswith("sqlite:///outputs/multirun/")
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    assert sweeper.max_failure_rate == 1.0  # a diverged trial does not end the study
    assert set(sweeper.params) == {
        "optimizer.generator.lr",
        "optimizer.discriminator.lr",
        "n_critic",
    }


@pytest.mark.parametrize(
    ("metric", "fix"), [(None, "optimized_metric=val/rkl_2500"), ("train/g_loss", "direction=")]
)
def test_optuna_refuses_a_metric_without_a_direction(metric, fix: str) -> None:
    cfg = compose_multirun("sweep=optuna", f"optimized_metric={metric or 'null'}")
    with pytest.raises(Exception) as raised:
        _ = cfg.hydra.sweeper.direction
    # Hydra sees the resolver's UserError wrapped; the CLI reports the UserError alone.
    reported = sweeps.sweep_error(raised.value)
    assert isinstance(reported, UserError) and fix in str(reported)


def test_slurm_config_takes_its_tasks_from_the_trainer() -> None:
    cfg = compose_multirun("cluster=slurm", "trainer.devices=4", "trainer.num_nodes=2")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.signal_delay_s > 0 and launcher.max_num_timeout > 0
    assert (cfg.trainer.accelerator, cfg.trainer.strategy, cfg.resume) == ("gpu", "ddp", "auto")


def test_slurm_config_refuses_devices_that_are_not_a_gpu_count() -> None:
    cfg = compose_multirun("cluster=slurm", "trainer.devices=auto")
    with pytest.raises(Exception) as raised:
        _ = cfg.hydra.launcher.gpus_per_node
    reported = sweeps.sweep_error(raised.value)
    assert isinstance(reported, UserError) and "trainer.devices=4" in str(reported)


def test_a_slurm_multirun_with_ddp_is_not_refused() -> None:
    # One SLURM task per GPU: Lightning re-runs nothing, unlike its subprocess DDP.
    check_launch(compose_multirun("cluster=slurm", "trainer.devices=2"))
    with pytest.raises(UserError, match="every DDP rank"):
        check_launch(compose_multirun("trainer.devices=2", "trainer.strategy=ddp"))


def test_a_sweep_value_must_be_a_finite_logged_metric() -> None:
    cfg = compose_multirun("optimized_metric=val/rkl_2500")
    assert sweeps.sweep_value(cfg, {"val/rkl_2500": 0.25}) == 0.25
    with pytest.raises(UserError, match="diverged"):
        sweeps.sweep_value(cfg, {"val/rkl_2500": math.nan})
    with pytest.raises(UserError, match=r"not logged by this run \(logged: val/modes_2500\)"):
        sweeps.sweep_value(cfg, {"val/modes_2500": 3.0, "train/g_loss": 0.7})
    cfg = compose_multirun("optimized_metric=val/rkl_2500", mode=RunMode.RUN)
    assert sweeps.sweep_value(cfg, {}) is None  # a single run just reports its metrics


def test_only_the_first_task_of_a_job_writes_its_status(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert not sweeps._is_rank_zero()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert sweeps._is_rank_zero()


def test_a_failed_job_is_reported_and_the_others_finish(monkeypatch, capsys, tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    code, out, err = gan_run(monkeypatch, capsys, sweep_dir, "n_critic=0,1", *TINY)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    report = sweep_dir / "failures.txt"
    assert line == (
        f"error: 1 of 2 jobs failed ({report}): #0 (n_critic=0): n_critic=0 is out of range: "
        "it must be >= 1"
    )
    assert "Traceback" not in err
    assert report.read_text() == "#0 (n_critic=0): n_critic=0 is out of range: it must be >= 1\n"
    failed, finished = sweep_dir / "0", sweep_dir / "1"
    assert status(failed)["status"] == "failed" and "UserError" in status(failed)["traceback"]
    assert not (failed / "checkpoints").exists()
    assert status(finished)["status"] == "completed"
    assert (finished / "checkpoints" / "last.ckpt").is_file()


def test_a_multirun_without_failures_exits_cleanly(monkeypatch, capsys, tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    code, _, err = gan_run(
        monkeypatch, capsys, sweep_dir, "seed=3", *TINY, "callbacks.metrics=null"
    )
    assert code == 0, err
    assert status(sweep_dir / "0")["status"] == "completed"
    assert not (sweep_dir / "failures.txt").exists()


def trials(sweep_dir: Path, metric: str) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{sweep_dir}/optuna.db"
    return optuna.load_study(study_name=metric, storage=storage).trials


def final_metric(job: Path, metric: str) -> float:
    lines = (job / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["values"][metric]


def test_optuna_sweep_stores_its_trials_in_sqlite(monkeypatch, capsys, tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    metric = "val/rkl_2500"
    args = ["sweep=optuna", f"optimized_metric={metric}", "hydra.sweeper.n_trials=2", *TINY]
    code, _, err = gan_run(monkeypatch, capsys, sweep_dir, *args)
    assert code == 0, err
    stored = trials(sweep_dir, metric)
    assert [t.state for t in stored] == [optuna.trial.TrialState.COMPLETE] * 2
    assert stored[0].params != stored[1].params
    for number, trial in enumerate(stored):  # the value returned is the run's logged metric
        assert trial.value == pytest.approx(final_metric(sweep_dir / str(number), metric))
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(t.value for t in stored))


def test_optuna_study_goes_on_after_failed_trials(monkeypatch, capsys, tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    metric = "val/modes_2500"
    args = ["sweep=optuna", f"optimized_metric={metric}", "hydra.sweeper.n_trials=3"]
    space = "hydra.sweeper.params={n_critic: 'choice(0, 1)'}"
    code, _, err = gan_run(monkeypatch, capsys, sweep_dir, *args, space, *TINY)
    stored = trials(sweep_dir, metric)
    assert len(stored) == 3
    failed = [t.number for t in stored if t.state == optuna.trial.TrialState.FAIL]
    assert failed == [t.number for t in stored if t.params["n_critic"] == 0]
    assert 0 < len(failed) < 3, "seed 0 draws both values of n_critic"
    assert code == 2
    assert f"{len(failed)} of 3 jobs failed" in err.strip().splitlines()[-1]
    assert (sweep_dir / "optimization_results.yaml").is_file()  # the study still finished


@pytest.mark.slow
def test_submitit_local_launcher_runs_each_job_in_its_own_process(
    monkeypatch, capsys, tmp_path
) -> None:
    sweep_dir = tmp_path / "sweep"
    args = ["hydra/launcher=submitit_local", "seed=1,2", *TINY, "callbacks.metrics=null"]
    code, _, err = gan_run(monkeypatch, capsys, sweep_dir, *args)
    assert code == 0, err
    for job in ("0", "1"):
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").is_file()
        assert status(sweep_dir / job)["status"] == "completed"  # written by the job's process
    assert len(list(sweep_dir.glob(".submitit/*/*_0_log.out"))) == 2
