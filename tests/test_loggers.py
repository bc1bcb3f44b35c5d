"""Loggers: CSV, TensorBoard, W&B offline without credentials (one run per job, tagged with its
recipe, best metric in its summary), logger=none, and loggers that fail without ending training."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, ListConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gan_runner.loggers as loggers
import gan_runner.train
from conftest import compose_config
from gan_runner.train import train

# Short training through the real config; QUICK's logger=none is left out on purpose.
BASE = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "train.g_steps=2",
    "train.log_every=1",
]
# Only the sample-grid callback, so a run logs one image at its end.
SAMPLES_ONLY = [
    "~callbacks.ema",
    "~callbacks.metrics",
    "~callbacks.checkpoint",
    "~callbacks.loss_curve",
    "~callbacks.progress",
]


def isolate_wandb(mp: pytest.MonkeyPatch, home: Path) -> None:
    """No credentials, no WANDB_MODE, all W&B folders in `home`, and any login prompt fails."""
    for var in (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_BASE_URL",
        "NETRC",
    ):
        mp.delenv(var, raising=False)
    mp.setenv("HOME", str(home))
    for var, sub in (
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_DIR", "wandb_dir"),
    ):
        mp.setenv(var, str(home / sub))

    def no_prompt(*args, **kwargs):
        raise AssertionError("W&B tried to prompt (CI has no stdin)")

    # Test speed only: no system stats, machine info, git or requirements scan, console capture.
    for var in ("WANDB_X_DISABLE_STATS", "WANDB_X_DISABLE_MACHINE_INFO", "WANDB_DISABLE_GIT"):
        mp.setenv(var, "true")
    mp.setenv("WANDB_X_SAVE_REQUIREMENTS", "false")
    mp.setenv("WANDB_CONSOLE", "off")
    mp.setenv("WANDB_SILENT", "true")
    mp.setattr("builtins.input", no_prompt)
    mp.setattr("getpass.getpass", no_prompt)


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    isolate_wandb(monkeypatch, tmp_path / "home")
    return tmp_path / "home"


@pytest.fixture(scope="module", autouse=True)
def _stop_wandb_service():
    yield
    wandb.finish()
    wandb.teardown()  # stops wandb-core, so no background process outlives these tests


def offline_runs(save_dir: Path) -> list[Path]:
    return sorted((save_dir / "wandb").glob("offline-run-*"))


# --- mode decision ---------------------------------------------------------------------------


def write_netrc(home: Path, machine: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / ".netrc").write_text(f"machine {machine}\n  login user\n  password {'k' * 40}\n")
    (home / ".netrc").chmod(0o600)


def test_no_credentials_means_offline(no_credentials: Path) -> None:
    assert not loggers.has_wandb_credentials()
    assert loggers.wandb_mode() == "offline"


def test_api_key_means_online(no_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert loggers.wandb_mode() == "online"


def test_netrc_entry_for_the_wandb_host_means_online(no_credentials: Path, monkeypatch) -> None:
    write_netrc(no_credentials, "example.org")
    assert loggers.wandb_mode() == "offline"
    write_netrc(no_credentials, "api.wandb.ai")
    assert loggers.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert loggers.wandb_mode() == "offline"  # credentials for another server do not count


def test_explicit_wandb_mode_wins(no_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert loggers.wandb_mode() == "disabled"


# --- the logger itself -----------------------------------------------------------------------


def test_offline_run_without_credentials(no_credentials: Path, tmp_path: Path, caplog) -> None:
    save_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="gan_runner.loggers"):
        logger = loggers.wandb_logger(project="test", save_dir=str(save_dir))
    assert "wandb sync" in caplog.text and "offline" in caplog.text
    try:
        run = logger.experiment
        assert run.settings.mode == "offline" and run.offline
        assert [p.name for p in offline_runs(save_dir)] == [Path(run.dir).parent.name]
        assert run.id in Path(run.dir).parent.name
    finally:
        wandb.finish()
    assert "WANDB_MODE" not in os.environ  # the mode was not set process-wide


def test_name_group_tags_from_hydra_multirun(no_credentials: Path, tmp_path: Path) -> None:
    compose_config(
        [
            "hydra.mode=MULTIRUN",
            "hydra.sweep.dir=outputs/sweep_a",
            "hydra.job.num=3",
            "optimizer=sgd",
        ],
        tmp_path / "run",
    )
    logger = loggers.wandb_logger(
        project="test",
        save_dir=str(tmp_path / "run"),
        tags=ListConfig(["a", 1]),
        log_checkpoints=True,
    )
    init = logger._wandb_init  # what wandb.init will get; no run is started here
    assert init["name"] == "3:optimizer=sgd"
    assert init["group"] == "outputs/sweep_a"
    assert init["tags"][-2:] == ["a", "1"] and init["mode"] == "offline"
    assert logger._log_model is True
    explicit = loggers.wandb_logger(project="test", save_dir=str(tmp_path), group="g", name="n")
    assert (explicit._wandb_init["name"], explicit._wandb_init["group"]) == ("n", "g")


def test_single_run_is_named_after_its_overrides(no_credentials: Path, tmp_path: Path) -> None:
    compose_config(["optimizer=sgd"], tmp_path / "run")
    logger = loggers.wandb_logger(project="test", save_dir=str(tmp_path / "run"))
    assert logger._wandb_init["name"] == "optimizer=sgd"
    assert logger._wandb_init["group"] is None


def test_finish_uploads_checkpoint_only_when_asked(no_credentials: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"weights" * 100)
    staging = no_credentials / "data" / "artifacts" / "staging"
    for log_checkpoints in (False, True):
        logger = loggers.wandb_logger(
            project="test", save_dir=str(tmp_path / "run"), log_checkpoints=log_checkpoints
        )
        _ = logger.experiment
        loggers.finish_wandb([logger], checkpoint=checkpoint)
        assert wandb.run is None
        staged = [p for p in staging.rglob("*") if p.is_file()] if staging.exists() else []
        # Offline, W&B stages the artifact's copy for a later `wandb sync`.
        assert [p.read_bytes() for p in staged] == (
            [checkpoint.read_bytes()] if log_checkpoints else []
        )


# --- images ----------------------------------------------------------------------------------


class ImageSink:
    """A logger-like object with log_image, as WandbLogger has."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def log_image(self, key, images, step=None):
        self.calls.append({"key": key, "images": images, "step": step})


@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "fail_soft"])
def test_log_image_reaches_tensorboard_and_log_image_loggers(tmp_path: Path, wrap: bool) -> None:
    image = torch.randint(0, 256, (3, 10, 14), dtype=torch.uint8)
    tensorboard = TensorBoardLogger(tmp_path, name="tb", version="")
    sink = ImageSink()
    targets = [CSVLogger(tmp_path, name="csv"), tensorboard, sink]
    # Wrapped as train() wraps them: dispatch still finds TensorBoard and log_image loggers.
    loggers.log_image(loggers.fail_soft(targets) if wrap else targets, "samples", image, 7)
    tensorboard.experiment.flush()
    (call,) = sink.calls
    (array,) = call["images"]
    assert (call["key"], call["step"]) == ("samples", 7)
    assert array.dtype == np.uint8 and array.shape == (10, 14, 3)
    assert np.array_equal(array, image.permute(1, 2, 0).numpy())
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    (logged,) = events.Images("samples")
    assert (logged.step, logged.width, logged.height) == (7, 14, 10)
    assert not (tmp_path / "csv").exists()  # CSVLogger takes no images and wrote nothing


# --- training through the real config --------------------------------------------------------


@pytest.fixture(scope="module")
def two_wandb_trainings(tmp_path_factory: pytest.TempPathFactory):
    """Two sequential logger=wandb trainings in this process, as a multirun runs its jobs."""
    root = tmp_path_factory.mktemp("wandb_jobs")
    made: list[WandbLogger] = []
    logged: list[np.ndarray] = []
    steps: list[int | None] = []
    with pytest.MonkeyPatch.context() as mp:
        isolate_wandb(mp, root / "home")
        factory = loggers.wandb_logger

        def recording_factory(*args, **kwargs):
            made.append(factory(*args, **kwargs))
            return made[-1]

        log_image = WandbLogger.log_image

        def recording_log_image(self, key, images, step=None, **kwargs):
            logged.extend(images)
            steps.append(step)
            return log_image(self, key, images, step, **kwargs)

        mp.setattr(loggers, "wandb_logger", recording_factory)
        mp.setattr(WandbLogger, "log_image", recording_log_image)
        cfgs = []
        for job in range(2):
            cfg = compose_config([*BASE, *SAMPLES_ONLY, "logger=wandb"], root / f"job{job}")
            train(cfg)
            cfgs.append(cfg)
            assert wandb.run is None  # train() ended the job's run
    return cfgs, made, logged, steps


def test_each_training_gets_its_own_finished_run(two_wandb_trainings) -> None:
    cfgs, made, *_ = two_wandb_trainings
    runs = [offline_runs(Path(cfg.paths.output_dir)) for cfg in cfgs]
    assert [len(r) for r in runs] == [1, 1]
    ids = [logger.experiment.id for logger in made]
    assert len(set(ids)) == 2
    assert [r[0].name.rsplit("-", 1)[1] for r in runs] == ids


def test_config_is_logged_as_flat_plain_values(two_wandb_trainings) -> None:
    cfgs, made, *_ = two_wandb_trainings
    config = {k: v for k, v in made[0].experiment.config.items() if not k.startswith("_")}
    assert config["optimizer.generator.lr"] == pytest.approx(cfgs[0].optimizer.generator.lr)
    assert isinstance(config["optimizer.generator.lr"], float)
    assert config["train.g_steps"] == 2 and config["logger.wandb.project"] == "gan_runner"
    for key, value in config.items():
        assert isinstance(value, (str, int, float, bool, type(None))), (key, type(value))
        assert not isinstance(value, (DictConfig, ListConfig))


def test_samples_are_logged_as_uint8_images(two_wandb_trainings) -> None:
    cfgs, _, images, steps = two_wandb_trainings
    assert len(images) == 2  # one grid at the end of each job
    assert steps == [2, 2]  # at step = generator steps, so grids line up across runs
    for image in images:
        image = np.asarray(image)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    for cfg in cfgs:
        (run,) = offline_runs(Path(cfg.paths.output_dir))
        assert list((run / "files" / "media" / "images").glob("samples_2_*.png"))


def test_trainings_are_tagged_with_their_recipe_as_train_jobs(two_wandb_trainings) -> None:
    _, made, *_ = two_wandb_trainings
    run = made[0].experiment
    assert run.job_type == "train"
    assert list(run.tags) == ["data=ring8", "objective=non_saturating", "arch=mlp_2d"]


# --- recipe tags and the best metric ---------------------------------------------------------


def test_tags_are_the_recipe_then_the_users(no_credentials: Path, tmp_path: Path) -> None:
    compose_config(["model=wgan_gp", "arch=dcgan", "data=digits"], tmp_path / "run")
    logger = loggers.wandb_logger(
        project="test", save_dir=str(tmp_path / "run"), tags=ListConfig(["mine", 1, "arch=dcgan"])
    )
    init = logger._wandb_init
    recipe = ["model=wgan_gp", "data=digits", "objective=wasserstein", "arch=dcgan"]
    assert init["tags"] == [*recipe, "mine", "1"]  # a user tag equal to a recipe tag: once
    assert init["job_type"] == "train"


def test_record_best_goes_to_the_wandb_summary_only(no_credentials: Path, tmp_path: Path) -> None:
    logger = loggers.wandb_logger(project="test", save_dir=str(tmp_path / "run"))
    others = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    try:
        loggers.record_best([*others, logger], "rkl_2500", 0.5, 100)
        wrapped = loggers.fail_soft([*others, logger])
        loggers.record_best(wrapped, "rkl_2500", 0.25, 300)  # a later improvement
        summary = logger.experiment.summary
        assert (summary["best/rkl_2500"], summary["best/rkl_2500_g_steps"]) == (0.25, 300)
    finally:
        loggers.finish_wandb([logger])
    assert len(offline_runs(tmp_path / "run")) == 1
    assert not (tmp_path / "csv").exists() and not (tmp_path / "tb").exists()


def test_training_puts_the_best_metric_and_its_step_in_the_summary(no_credentials, make_cfg):
    made: list[WandbLogger] = []
    summaries: list[dict] = []
    factory, finish = loggers.wandb_logger, gan_runner.train.finish_wandb

    def finish_after_a_look(*args, **kwargs):  # W&B empties the run's summary object at finish
        summaries.append(dict(made[0].experiment.summary))
        finish(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loggers, "wandb_logger", lambda **kw: made.append(factory(**kw)) or made[-1])
        mp.setattr(gan_runner.train, "finish_wandb", finish_after_a_look)
        only_metrics = [c for c in SAMPLES_ONLY if c != "~callbacks.metrics"]
        only_metrics.append("~callbacks.samples")
        cfg = make_cfg(
            *BASE, *only_metrics, "metrics=[mixture]", "callbacks.metrics.every=1", "logger=wandb",
            quick=False,
        )  # fmt: skip
        train(cfg)
    lines = (Path(cfg.paths.output_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    best = records[-1]["best"]
    assert [r["g_steps"] for r in records] == [1, 2] and best["metric"] == "score_2500"
    (summary,) = summaries
    assert summary["best/score_2500"] == pytest.approx(best["value"])
    assert summary["best/score_2500_g_steps"] == best["g_steps"]


# --- loggers that fail -----------------------------------------------------------------------


class BrokenLogger(Logger):
    """A logger whose service goes away after `works` calls, as W&B does when unreachable."""

    def __init__(self, works: int) -> None:
        self.works, self.calls = works, []

    @property
    def name(self) -> str:
        return "broken"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        if len(self.calls) >= self.works:
            raise ConnectionError("api.example.org unreachable\nretrying in 10 s")
        self.calls.append((metrics, step))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.log_metrics(params)


def failure_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "logging failed" in r.getMessage()]


def test_a_failing_logger_warns_once_and_is_switched_off(caplog) -> None:
    broken = BrokenLogger(works=1)
    (wrapped,) = loggers.fail_soft([broken])
    with caplog.at_level(logging.WARNING, logger="gan_runner.loggers"):
        for step in range(4):
            wrapped.log_metrics({"a": float(step)}, step)
        wrapped.log_hyperparams({"lr": 0.1})
        wrapped.experiment.add_image("x", None)  # a failed logger's experiment takes anything
    assert broken.calls == [({"a": 0.0}, 0)]  # nothing reaches it after the failure
    assert failure_lines(caplog) == [
        "BrokenLogger logging failed (ConnectionError: api.example.org unreachable); "
        "training continues without it"
    ]
    assert wrapped.failed and (wrapped.name, wrapped.version) == ("broken", 0)
    assert loggers.fail_soft([wrapped]) == [wrapped] and loggers.unwrap(wrapped) is broken


def test_training_goes_on_when_wandb_cannot_start(no_credentials, make_cfg, monkeypatch, caplog):
    def unreachable(**kwargs):
        raise ConnectionError("W&B unreachable")

    monkeypatch.setattr(wandb, "init", unreachable)
    cfg = make_cfg(*BASE, *SAMPLES_ONLY, "logger=wandb", quick=False)
    with caplog.at_level(logging.WARNING):
        metrics = train(cfg)
    assert metrics["train/g_steps"] == 2
    assert failure_lines(caplog) == [
        "W&B logging failed (ConnectionError: W&B unreachable); training continues without it"
    ]
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["train/g_steps"]) for row in rows] == [1.0, 2.0]
    assert all(row["train/g_loss"] for row in rows)
    assert wandb.run is None


def test_tensorboard_writes_events_in_the_run_folder(make_cfg) -> None:
    cfg = make_cfg(*BASE, "callbacks=none", "logger=tensorboard", quick=False)
    train(cfg)
    folder = Path(cfg.paths.output_dir) / "tensorboard"
    assert list(folder.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(folder))
    events.Reload()
    assert [e.value for e in events.Scalars("train/g_steps")] == [1.0, 2.0]
    assert {"train/d_loss", "train/g_loss"} <= set(events.Tags()["scalars"])
    assert (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").is_file()


def test_tensorboard_gets_the_sample_grid(make_cfg) -> None:
    cfg = make_cfg(*BASE, *SAMPLES_ONLY, "logger=tensorboard", quick=False)
    train(cfg)
    events = EventAccumulator(
        str(Path(cfg.paths.output_dir) / "tensorboard"), size_guidance={"images": 0}
    )
    events.Reload()
    assert [image.step for image in events.Images("samples")] == [2]


def test_csv_has_losses_per_logged_g_step(make_cfg) -> None:
    cfg = make_cfg(*BASE, "callbacks=none", "logger=csv", quick=False)
    train(cfg)
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"train/d_loss", "train/g_loss"} <= set(rows[0])
    assert [float(row["train/g_steps"]) for row in rows] == [1.0, 2.0]
    assert all(row["train/g_loss"] and row["train/d_loss"] for row in rows)


def test_logger_none_trains_and_writes_no_logs(make_cfg) -> None:
    cfg = make_cfg(*BASE, "callbacks=none", "logger=none", quick=False)
    metrics = train(cfg)
    assert metrics["train/g_steps"] == 2
    out = Path(cfg.paths.output_dir)
    assert not any((out / name).exists() for name in ("csv", "tensorboard", "wandb"))
