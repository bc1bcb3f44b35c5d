"""Loggers: CSV, TensorBoard, W&B offline without credentials (one run per job), logger=none."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, ListConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gan_runner.loggers as loggers
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
    assert init["tags"] == ["a", "1"] and init["mode"] == "offline"
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


def test_log_image_reaches_tensorboard_and_log_image_loggers(tmp_path: Path) -> None:
    image = torch.randint(0, 256, (3, 10, 14), dtype=torch.uint8)
    tensorboard = TensorBoardLogger(tmp_path, name="tb", version="")
    sink = ImageSink()
    loggers.log_image([CSVLogger(tmp_path, name="csv"), tensorboard, sink], "samples", image, 7)
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
    with pytest.MonkeyPatch.context() as mp:
        isolate_wandb(mp, root / "home")
        factory = loggers.wandb_logger

        def recording_factory(*args, **kwargs):
            made.append(factory(*args, **kwargs))
            return made[-1]

        log_image = WandbLogger.log_image

        def recording_log_image(self, key, images, step=None, **kwargs):
            logged.extend(images)
            return log_image(self, key, images, step, **kwargs)

        mp.setattr(loggers, "wandb_logger", recording_factory)
        mp.setattr(WandbLogger, "log_image", recording_log_image)
        cfgs = []
        for job in range(2):
            cfg = compose_config([*BASE, *SAMPLES_ONLY, "logger=wandb"], root / f"job{job}")
            train(cfg)
            cfgs.append(cfg)
            assert wandb.run is None  # train() ended the job's run
    return cfgs, made, logged


def test_each_training_gets_its_own_finished_run(two_wandb_trainings) -> None:
    cfgs, made, _ = two_wandb_trainings
    runs = [offline_runs(Path(cfg.paths.output_dir)) for cfg in cfgs]
    assert [len(r) for r in runs] == [1, 1]
    ids = [logger.experiment.id for logger in made]
    assert len(set(ids)) == 2
    assert [r[0].name.rsplit("-", 1)[1] for r in runs] == ids


def test_config_is_logged_as_flat_plain_values(two_wandb_trainings) -> None:
    cfgs, made, _ = two_wandb_trainings
    config = {k: v for k, v in made[0].experiment.config.items() if not k.startswith("_")}
    assert config["optimizer.generator.lr"] == pytest.approx(cfgs[0].optimizer.generator.lr)
    assert isinstance(config["optimizer.generator.lr"], float)
    assert config["train.g_steps"] == 2 and config["logger.wandb.project"] == "gan_runner"
    for key, value in config.items():
        assert isinstance(value, (str, int, float, bool, type(None))), (key, type(value))
        assert not isinstance(value, (DictConfig, ListConfig))


def test_samples_are_logged_as_uint8_images(two_wandb_trainings) -> None:
    cfgs, _, images = two_wandb_trainings
    assert len(images) == 2  # one grid at the end of each job
    for image in images:
        image = np.asarray(image)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    for cfg in cfgs:
        (run,) = offline_runs(Path(cfg.paths.output_dir))
        assert list((run / "files" / "media" / "images").glob("samples_2_*.png"))


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
