"""`gan-run` end to end: outputs of a run, a multirun, Hydra's own flags, and bad input."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from conftest import call_console, options
from gan_runner import cli
from gan_runner.config import unused_additions

GAN_RUN = str(Path(sys.executable).with_name("gan-run"))
FAST = ["trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]


def gan_run(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [GAN_RUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    return call_console(cli.run, "gan-run", monkeypatch, capsys, *args)


def only_run_folder(root: Path) -> Path:
    folders = [p.parent for p in root.glob("outputs/*/*/.hydra")]
    assert len(folders) == 1, folders
    return folders[0]


def test_default_run_writes_every_artefact_and_says_where(tmp_path: Path) -> None:
    result = gan_run(tmp_path, "train.g_steps=120", "train.log_every=20", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run_folder(tmp_path)
    assert f"Run folder: {run.resolve()}" in result.stdout
    assert "Trained 120 generator steps (120 discriminator steps" in result.stdout
    assert "Samples: " in result.stdout and "Checkpoint: " in result.stdout
    for name in ["config.yaml", "overrides.yaml"]:
        assert (run / ".hydra" / name).is_file()
    assert (run / "samples" / "g0000120.png").stat().st_size > 1000
    assert (run / "loss_curve.png").stat().st_size > 1000
    with open(run / "csv" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/g_steps")]
    assert [float(r["train/g_steps"]) for r in rows] == [20, 40, 60, 80, 100, 120]
    assert all(float(r["train/d_loss"]) > 0 for r in rows)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state = checkpoint["gan_runner"]
    assert state["counters"]["g_steps"] == 120 and state["counters"]["d_steps"] == 120
    assert state["config"]["train"]["g_steps"] == 120  # the resolved config travels along
    assert any(k.startswith("generator_ema.") for k in checkpoint["state_dict"])
    assert not list(run.glob("checkpoints/.*.tmp"))  # atomic writes leave no temporaries


def test_multirun_of_two_jobs_writes_two_run_folders(tmp_path: Path) -> None:
    result = gan_run(
        tmp_path,
        "-m",
        "seed=1,2",
        "train.g_steps=10",
        "train.log_every=5",
        *FAST,
        "callbacks=none",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(tmp_path.glob("outputs/multirun/*/*/[0-9]"))
    assert [job.name for job in jobs] == ["0", "1"]
    for job, seed in zip(jobs, (1, 2)):
        assert f"seed: {seed}" in (job / ".hydra" / "config.yaml").read_text()
        assert (job / "csv" / "metrics.csv").is_file()
    assert result.stdout.count("Trained 10 generator steps") == 2


def test_bad_input_from_the_real_console_script_is_one_line(tmp_path: Path) -> None:
    result = gan_run(tmp_path, "model=wgangp")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], (
        "expected exactly one line on stderr"
    )
    assert "unknown option model=wgangp; did you mean model=wgan_gp?" in result.stderr
    assert not (tmp_path / "outputs").exists() or not list(tmp_path.glob("outputs/*/*/csv"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["model=wgangp"], "unknown option model=wgangp; did you mean model=wgan_gp?"),
        (["objective=hinj"], "unknown option objective=hinj; did you mean objective=hinge?"),
        (["n_critc=3"], "unknown key 'n_critc'"),
        (["optimizer.generator.lrr=0.1"], "unknown key 'optimizer.generator.lrr'"),
        (["n_critic=abc"], "n_critic='abc' has the wrong type"),
        (["objective.real_label=abc"], "objective.real_label='abc' has the wrong type"),
        (["n_critic=0"], "n_critic=0 is out of range: it must be >= 1"),
        (["train.g_steps=-5"], "train.g_steps=-5 is out of range"),
        (["regularizer.gradient_penalty.weight=-1", "model=wgan_gp"], "weight must be >= 0"),
        (
            ["model=wgan_gp", "arch.discriminator.norm=batch"],
            "regularizer=gradient_penalty penalizes per-sample gradients",
        ),
        (["regularizer=[r1]", "arch.discriminator.norm=batch"], "regularizer=r1 penalizes"),
        (["+arch.generator.hiden=[8]"], "did you mean 'arch.generator.hidden'?"),
        (["num_classes=10"], "num_classes=10 but data=ring8 has no labels"),
        (["data.batch_size=0"], "batch_size must be >= 1"),
    ],
)
def test_bad_input_ends_with_one_line_naming_key_and_fix(
    monkeypatch, capsys, tmp_path, args: list[str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_in_process(monkeypatch, capsys, *FAST, "train.g_steps=1", *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err


def test_weight_clip_with_a_non_wasserstein_objective_warns_and_trains(
    monkeypatch, capsys, tmp_path
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_in_process(
        monkeypatch, capsys, "regularizer=[weight_clip]", "train.g_steps=2", *FAST
    )
    assert code == 0, err
    assert "use objective=wasserstein or drop weight_clip" in out + err
    assert "Trained 2 generator steps" in out


def test_cfg_job_prints_the_composed_recipe_without_training(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_in_process(
        monkeypatch, capsys, "model=wgan_gp", "objective=hinge", "--cfg", "job"
    )
    assert code == 0
    assert "_target_: gan_runner.objectives.Hinge" in out  # the command line beats the recipe
    assert "_target_: gan_runner.regularizers.GradientPenalty" in out
    assert "n_critic: 5" in out
    assert not (tmp_path / "outputs").exists()


def test_info_defaults_tree_and_help_are_hydras_own(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_in_process(monkeypatch, capsys, "model=sngan", "--info", "defaults-tree")
    assert code == 0 and "model: sngan" in out and "objective: hinge" in out
    code, out, _ = run_in_process(monkeypatch, capsys, "--help")
    assert code == 0 and f"model: {', '.join(options('model'))}" in out  # every recipe
    assert {"dcgan", "gan", "lsgan", "nsgan", "sngan", "wgan", "wgan_gp"} <= set(options("model"))


def test_shell_completion_script_is_available(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_in_process(monkeypatch, capsys, "-sc", "install=bash")
    assert code == 0 and "complete" in out and "gan-run" in out


def test_gan_list_prints_every_option_with_its_description(capsys) -> None:
    cli.list_options()
    out = capsys.readouterr().out
    conf = Path(__file__).resolve().parents[1] / "conf"
    for path in conf.glob("*/*.yaml"):  # _folders are included by configs, not chosen
        if path.parent.name in ("hydra", "paths") or path.parent.name.startswith("_"):
            continue
        assert f"  {path.stem}" in out, path
    assert "wgan_gp" in out and "Gulrajani et al. 2017" in out


@pytest.mark.parametrize("strategy", ["ddp", "auto", "ddp_find_unused_parameters_true"])
def test_multirun_with_a_relaunching_ddp_is_refused_before_training(
    monkeypatch, capsys, tmp_path, strategy
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["-m", "seed=1,2", "trainer.devices=2", f"trainer.strategy={strategy}", *FAST]
    code, out, err = run_in_process(monkeypatch, capsys, *args)
    assert code == 2, (out, err)
    line = err.strip().splitlines()[-1]
    assert "would re-run the whole sweep in every DDP rank" in line
    assert "trainer.strategy=ddp_spawn" in line
    assert not list(tmp_path.glob("outputs/multirun/*/*/*/checkpoints"))  # nothing trained


def test_a_single_device_multirun_is_not_refused(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_in_process(
        monkeypatch, capsys, "-m", "seed=1", "trainer.devices=1", "train.g_steps=2",
        "callbacks=none", *FAST,
    )  # fmt: skip
    assert code == 0, err
    assert "Trained 2 generator steps" in out


def unused(*overrides: str) -> list[str]:
    """unused_additions for conf/train.yaml composed with overrides, as inside a gan-run job."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="gan_runner.conf", version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            with open_dict(cfg):
                del cfg["hydra"]
            return unused_additions(cfg)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+anything=1", "+anything=1: no part of the run reads 'anything', so it changes nothing"),
        ("+trian.g_steps=5", "did you mean 'train.g_steps'?"),
        ("++trian.g_steps=5", "did you mean 'train.g_steps'?"),
        ("+sed=3", "did you mean 'seed'?"),
        (
            "+optimizer.lr=0.1",
            "did you mean 'optimizer.generator.lr' or 'optimizer.discriminator.lr'?",
        ),
        ("+arch.width=8", "no part of the run reads 'arch.width'"),  # arch.generator.* is read
        ("+paths.extra=1", "no part of the run reads 'paths.extra'"),
    ],
)
def test_an_added_key_that_nothing_reads_is_named_in_one_warning(override, expected) -> None:
    lines = unused(override, "train.g_steps=2")
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith(f"{override}: ") and expected in lines[0], lines[0]
    assert lines[0].endswith("training goes on without it"), lines[0]


@pytest.mark.parametrize(
    "overrides",
    [
        ["+trainer.detect_anomaly=true"],  # passed to lightning's Trainer
        ["+data.source.foo=1"],  # refused by check_targets before anything is built
        ["+train.foo=1"],  # refused by check_run_settings
        ["+optimized_metric=val/rkl_2500"],  # a null key: + sets it
        ["++seed=4"],  # ++ on an existing key: a plain override
        ["+paths.extra=5", "seed=${paths.extra}"],  # read through an interpolation
        ["+latent.foo=1"],  # under a _target_ node: its constructor's keys are checked
    ],
)
def test_added_keys_that_the_run_reads_are_not_warned(overrides) -> None:
    assert unused(*overrides) == []


def test_gan_run_warns_about_unused_added_keys_and_trains(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["+anything=1", "+trian.g_steps=5", "train.g_steps=2", "callbacks=none", *FAST]
    code, out, err = run_in_process(monkeypatch, capsys, *args)
    assert code == 0, err
    warnings = [line for line in (out + err).splitlines() if "no part of the run reads" in line]
    assert len(warnings) == 2, out + err
    assert (
        "[WARNING]" in warnings[0]
        and "+anything=1: no part of the run reads 'anything'" in (warnings[0])
    )
    assert "+trian.g_steps=5: no part of the run reads 'trian.g_steps'" in warnings[1]
    assert "did you mean 'train.g_steps'?" in warnings[1]
    assert "Trained 2 generator steps" in out  # the run went on, with the default g_steps=2
    log = only_run_folder(tmp_path) / "train.log"
    assert "did you mean 'train.g_steps'?" in log.read_text()  # and the log file keeps it


def test_no_root_log_handler_outlives_the_in_process_runs_above() -> None:
    """Runs after this file's in-process gan-run calls (one xdist worker runs a file in order)."""
    closed = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is not None
              and h.stream.closed]  # fmt: skip
    assert not closed, f"root-logger handlers left writing to closed streams: {closed}"
