"""Loggers: W&B that never asks for a login (offline without credentials), images to all, and
a fail-soft wrapper: a logger that breaks (W&B unreachable) warns once and training goes on."""

from __future__ import annotations

import logging
import netrc
import os
from argparse import Namespace
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.logger import DummyExperiment
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

log = logging.getLogger(__name__)
T = TypeVar("T")

# Config groups whose chosen option tags a W&B run (`model=wgan_gp`), so recipes filter in the UI.
RECIPE_GROUPS = ("model", "data", "objective", "arch", "experiment")


def has_wandb_credentials() -> bool:
    """Whether W&B finds an API key without prompting: env vars or a .netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    # The file W&B itself reads; netrc, unlike wandb.login, never prompts.
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_mode() -> str:
    """WANDB_MODE when set; otherwise online with credentials and offline without."""
    return os.environ.get("WANDB_MODE") or ("online" if has_wandb_credentials() else "offline")


def _hydra_name_and_group() -> tuple[str | None, str | None]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hydra = HydraConfig.get()
    name = hydra.job.get("override_dirname") or None
    if hydra.mode != RunMode.MULTIRUN:
        return name, None
    # The job number names the job's folder inside the sweep; seed is not in override_dirname.
    number = hydra.job.get("num")
    name = f"{number}:{name}" if name else str(number)
    return name, str(hydra.sweep.dir)


def recipe_tags() -> list[str]:
    """`model=wgan_gp`, `data=ring8`, ...: the job's option in each of RECIPE_GROUPS (Hydra's)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    choices = HydraConfig.get().runtime.choices
    return [f"{g}={choices[g]}" for g in RECIPE_GROUPS if choices.get(g) not in (None, "null")]


def wandb_logger(
    project: str,
    save_dir: str,
    group: str | None = None,
    tags: Sequence[str] = (),
    log_checkpoints: bool = False,
    name: str | None = None,
    job_type: str | None = "train",
    **kwargs: Any,
) -> WandbLogger:
    """A WandbLogger for this job: named after its overrides, grouped by its sweep, tagged with
    its recipe (model, data, objective, arch choices) and then `tags`."""
    mode = wandb_mode()
    if mode in ("offline", "dryrun"):
        reason = f"WANDB_MODE={mode}" if os.environ.get("WANDB_MODE") else "no credentials"
        log.info(
            "W&B logs offline (%s); upload later with `wandb sync %s`",
            reason,
            Path(save_dir) / "wandb" / "offline-run-*",
        )
    hydra_name, hydra_group = _hydra_name_and_group()
    Path(save_dir).mkdir(parents=True, exist_ok=True)  # else W&B falls back to a temp folder
    # mode goes to wandb.init: WandbLogger(offline=True) would set WANDB_MODE process-wide.
    return WandbLogger(
        name=name or hydra_name,
        save_dir=save_dir,
        project=project,
        log_model=log_checkpoints,
        group=group or hydra_group,
        tags=list(dict.fromkeys([*recipe_tags(), *map(str, tags)])) or None,
        job_type=job_type,
        mode=mode,
        **kwargs,
    )


class FailSoftLogger(Logger):
    """A logger wrapper: the first exception warns once, names the logger, and switches it off."""

    def __init__(self, logger: Logger) -> None:
        super().__init__()
        self.wrapped = logger
        self.failed = False

    @property
    def label(self) -> str:
        known = {WandbLogger: "W&B", TensorBoardLogger: "TensorBoard", CSVLogger: "CSV"}
        kind = next((v for k, v in known.items() if isinstance(self.wrapped, k)), None)
        return kind or type(self.wrapped).__name__

    def attempt(self, action: Callable[[Logger], T], even_if_failed: bool = False) -> T | None:
        """`action(wrapped)`, or None once this logger has failed; a failure warns once."""
        if self.failed and not even_if_failed:
            return None
        try:
            return action(self.wrapped)
        except Exception as error:  # noqa: BLE001 - any logging failure must not end training
            if not self.failed:
                self.failed = True
                lines = str(error).strip().splitlines()
                reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
                log.warning(
                    "%s logging failed (%s); training continues without it", self.label, reason
                )
            return None

    @property
    def experiment(self) -> Any:
        # A failed logger's experiment swallows every call, as on ranks other than 0.
        experiment = self.attempt(lambda logger: logger.experiment)
        return DummyExperiment() if experiment is None else experiment

    @property
    def name(self) -> str | None:
        return self.attempt(lambda logger: logger.name, even_if_failed=True)

    @property
    def version(self) -> int | str | None:
        return self.attempt(lambda logger: logger.version, even_if_failed=True)

    @property
    def root_dir(self) -> str | None:
        return self.attempt(lambda logger: logger.root_dir, even_if_failed=True)

    @property
    def log_dir(self) -> str | None:
        return self.attempt(lambda logger: logger.log_dir, even_if_failed=True)

    @property
    def save_dir(self) -> str | None:
        return self.attempt(lambda logger: logger.save_dir, even_if_failed=True)

    @property
    def group_separator(self) -> str:
        return self.wrapped.group_separator

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.attempt(lambda logger: logger.log_metrics(metrics, step))

    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        self.attempt(lambda logger: logger.log_hyperparams(params, *args, **kwargs))

    def log_graph(self, model: Any, input_array: Tensor | None = None) -> None:
        self.attempt(lambda logger: logger.log_graph(model, input_array))

    def save(self) -> None:
        self.attempt(lambda logger: logger.save())

    def finalize(self, status: str) -> None:
        self.attempt(lambda logger: logger.finalize(status))

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.attempt(lambda logger: logger.after_save_checkpoint(checkpoint_callback))


def fail_soft(loggers: Iterable[Logger]) -> list[Logger]:
    """Each logger wrapped in a FailSoftLogger (once), for the Trainer and train()'s own calls."""
    return [lg if isinstance(lg, FailSoftLogger) else FailSoftLogger(lg) for lg in loggers]


def unwrap(logger: Any) -> Any:
    """The logger inside a FailSoftLogger (for isinstance checks), or the logger itself."""
    return logger.wrapped if isinstance(logger, FailSoftLogger) else logger


def _attempt(logger: Any, action: Callable[[Any], T], even_if_failed: bool = False) -> T | None:
    if isinstance(logger, FailSoftLogger):
        return logger.attempt(action, even_if_failed)
    return action(logger)


def log_image(loggers: Iterable[Logger], key: str, image: Tensor, step: int) -> None:
    """Log a (3, H, W) uint8 image to each logger that takes images (W&B, TensorBoard)."""
    image = image.detach().cpu()
    for logger in loggers:
        inner = unwrap(logger)
        if isinstance(inner, TensorBoardLogger):
            _attempt(logger, lambda lg: lg.experiment.add_image(key, image, global_step=step))
        elif hasattr(inner, "log_image"):
            # uint8 HWC: W&B rescales float images by their own range.
            array = image.permute(1, 2, 0).numpy()
            _attempt(logger, lambda lg, a=array: lg.log_image(key=key, images=[a], step=step))


@rank_zero_only
def record_best(loggers: Iterable[Logger], name: str, value: float, g_steps: int) -> None:
    """Put `best/<name>` and `best/<name>_g_steps` in each W&B run's summary (others: nothing)."""
    summary = {f"best/{name}": value, f"best/{name}_g_steps": g_steps}
    for logger in loggers:
        if isinstance(unwrap(logger), WandbLogger):
            _attempt(logger, lambda lg: lg.experiment.summary.update(summary))


def finish_wandb(
    loggers: Iterable[Logger], checkpoint: Path | None = None, exit_code: int = 0
) -> None:
    """End the job's W&B run, first uploading `checkpoint` where log_checkpoints asked for it."""
    wandb_loggers = [logger for logger in loggers if isinstance(unwrap(logger), WandbLogger)]
    if not wandb_loggers:
        return
    import wandb

    for logger in wandb_loggers:
        # Lightning's log_model only sees ModelCheckpoint; the G-step checkpoint is uploaded here.
        if getattr(unwrap(logger), "_log_model", False) and checkpoint and checkpoint.is_file():
            _attempt(logger, lambda lg: _upload(lg.experiment, checkpoint))
    # WandbLogger.finalize does not end the run: without finish(), the next job of a
    # multirun in this process would log into this one. Even after a failure: a half-started
    # run must not be reused.
    _attempt(wandb_loggers[0], lambda _: wandb.finish(exit_code=exit_code), even_if_failed=True)


def _upload(run: Any, checkpoint: Path) -> None:
    run.log_model(path=str(checkpoint), name=f"model-{run.id}")
