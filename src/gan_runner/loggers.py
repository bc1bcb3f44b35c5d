"""Loggers: W&B that never asks for a login (offline without credentials); images to all."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from torch import Tensor

log = logging.getLogger(__name__)


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


def wandb_logger(
    project: str,
    save_dir: str,
    group: str | None = None,
    tags: Sequence[str] = (),
    log_checkpoints: bool = False,
    name: str | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """A WandbLogger for this job, named after its overrides and grouped by its sweep."""
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
        tags=[str(tag) for tag in tags] or None,
        mode=mode,
        **kwargs,
    )


def log_image(loggers: Iterable[Logger], key: str, image: Tensor, step: int) -> None:
    """Log a (3, H, W) uint8 image to each logger that takes images (W&B, TensorBoard)."""
    image = image.detach().cpu()
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=step)
        elif hasattr(logger, "log_image"):
            # uint8 HWC: W&B rescales float images by their own range.
            logger.log_image(key=key, images=[image.permute(1, 2, 0).numpy()], step=step)


def finish_wandb(
    loggers: Iterable[Logger], checkpoint: Path | None = None, exit_code: int = 0
) -> None:
    """End the job's W&B run, first uploading `checkpoint` where log_checkpoints asked for it."""
    wandb_loggers = [logger for logger in loggers if isinstance(logger, WandbLogger)]
    if not wandb_loggers:
        return
    import wandb

    for logger in wandb_loggers:
        # Lightning's log_model only sees ModelCheckpoint; the G-step checkpoint is uploaded here.
        if getattr(logger, "_log_model", False) and checkpoint and Path(checkpoint).is_file():
            run = logger.experiment
            run.log_model(path=str(checkpoint), name=f"model-{run.id}")
    # WandbLogger.finalize does not end the run: without finish(), the next job of a
    # multirun in this process would log into this one.
    wandb.finish(exit_code=exit_code)
