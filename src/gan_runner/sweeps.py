"""Multirun support: the sweeper's direction, the value a job returns, and failed-job reports.

Every job of `gan-run -m` writes `<job folder>/job_status.json` when it ends (in the job's own
process, so it works for submitit launchers too). A multirun whose jobs failed ends with one
line, "2 of 6 jobs failed ...", and `<sweep folder>/failures.txt`, one line per failed job.
"""

from __future__ import annotations

import json
import logging
import math
import os
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gan_runner.errors import UserError

log = logging.getLogger(__name__)

STATUS_FILE = "job_status.json"
FAILURES_FILE = "failures.txt"
# The sweep folder of the multirun running in this process; the CLI's error handler reads it.
_active: dict[str, Path] = {}


def direction(metric: str | None) -> str:
    """`${gan_runner.direction:${optimized_metric}}`: Optuna's direction for a metric name."""
    from gan_runner.callbacks.metrics import infer_mode, metric_name

    if not metric:
        raise UserError(
            "sweep=optuna optimizes optimized_metric, which is null; set it to a metric the "
            "run logs, e.g. optimized_metric=val/rkl_2500"
        )
    name = metric_name(metric)
    try:
        mode = infer_mode(name) if name else None
    except UserError:
        mode = None
    if mode is None:
        raise UserError(
            f"cannot tell whether optimized_metric={metric} is better low or high; set "
            "hydra.sweeper.direction=minimize or maximize"
        )
    return "minimize" if mode == "min" else "maximize"


def devices_per_node(devices: Any) -> int:
    """`${gan_runner.devices_per_node:${trainer.devices}}`: SLURM tasks and GPUs per node."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    raise UserError(
        f"cluster=slurm starts one task per GPU, so trainer.devices must be a number of GPUs "
        f"per node, not {devices!r}; set e.g. trainer.devices=4"
    )


for _name, _resolver in (
    ("gan_runner.direction", direction),
    ("gan_runner.devices_per_node", devices_per_node),
):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


def sweep_value(cfg: DictConfig, metrics: Mapping[str, float]) -> float | None:
    """The value `gan-run` returns to a sweeper: `metrics[optimized_metric]`, or None.

    In a multirun a missing or non-finite value fails the job instead: hydra-optuna-sweeper
    1.3.0 crashes the whole study on a NaN (optuna 2.10 refuses it twice), while a failed job
    becomes a FAIL trial that the study skips.
    """
    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = metrics.get(name)
    if not in_multirun():
        return value
    if value is None:
        logged = ", ".join(sorted(k for k in metrics if k.startswith(("val/", "best/"))))
        raise UserError(
            f"optimized_metric={name} was not logged by this run (logged: {logged or 'none'}); "
            "set optimized_metric to one of them"
        )
    if not math.isfinite(value):
        raise UserError(f"{name}={value} is not finite (the run diverged): the job fails")
    return float(value)


def in_multirun() -> bool:
    """Whether this process runs a job of `gan-run -m`."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def one_line(error: BaseException) -> str:
    """An exception as one line: the CLI's wording for config errors, else type and message."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from gan_runner.cli import describe_error

    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        return describe_error(error)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _is_rank_zero() -> bool:
    # A SLURM job runs one task per GPU, and each runs the Hydra job: one writes its status.
    for variable in ("SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID", "RANK"):
        if variable in os.environ:
            return os.environ[variable] == "0"
    return True


class FailureReport(Callback):
    """Hydra callback recording how each multirun job ended, and writing failures.txt."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _active.clear()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _active.clear()
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():  # a sweep folder used again: report this multirun's jobs only
            for status in sweep_dir.rglob(STATUS_FILE):
                status.unlink()
        _active["sweep_dir"] = sweep_dir
        storage = str(OmegaConf.select(config, "hydra.sweeper.storage", default="") or "")
        if storage.startswith("sqlite:///"):  # optuna creates the file, not its folder
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not _is_rank_zero():
            return
        record: dict[str, Any] = {
            "job": int(config.hydra.job.num),
            "overrides": list(job_return.overrides or []),
            "status": job_return.status.name.lower(),
        }
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            record["error"] = one_line(error)
            record["traceback"] = "".join(traceback.format_exception(error))
            log.error("job #%d failed: %s", record["job"], record["error"])
        folder = Path(config.hydra.runtime.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATUS_FILE).write_text(json.dumps(record, indent=1) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning: the CLI ends the multirun
        # with the summary (raise_failed_jobs), this writes failures.txt for other callers.
        failure_summary()


def failure_summary() -> str | None:
    """One line naming the failed jobs of the multirun in this process; writes failures.txt."""
    sweep_dir = _active.get("sweep_dir")
    if sweep_dir is None or not sweep_dir.is_dir():
        return None
    records = sorted(
        (json.loads(path.read_text()) for path in sweep_dir.rglob(STATUS_FILE)),
        key=lambda record: record["job"],
    )
    failed = [r for r in records if r["status"] == "failed"]
    if not failed:
        return None
    shared = set.intersection(*(set(r["overrides"]) for r in records))
    lines = [f"#{r['job']} {_label(r, shared)}: {r['error']}" for r in failed]
    report = sweep_dir / FAILURES_FILE
    report.write_text("\n".join(lines) + "\n")
    shown = "; ".join(lines[:3]) + ("; ..." if len(lines) > 3 else "")
    return f"{len(failed)} of {len(records)} jobs failed ({report}): {shown}"


def raise_failed_jobs() -> None:
    """After a multirun that ran to its end: a UserError naming its failed jobs, if any."""
    summary = failure_summary()
    _active.clear()
    if summary:
        raise UserError(summary)


def sweep_error(error: Exception) -> Exception:
    """The error to report in one line for `error`, raised by a run or a multirun.

    Hydra's basic sweeper runs every job, then re-raises the first failure: this returns a
    summary of the failed jobs instead. A UserError from one of the resolvers above reaches
    Hydra wrapped in an InterpolationResolutionError: this returns the UserError.
    """
    summary = failure_summary()
    _active.clear()
    if summary:
        return UserError(summary)
    cause: BaseException | None = error
    for _ in range(8):
        if cause is None or isinstance(cause, UserError):
            break
        cause = cause.__cause__ or cause.__context__
    return cause if isinstance(cause, UserError) else error


def _label(record: Mapping[str, Any], shared: set[str]) -> str:
    # The overrides that tell this job from the others (all of them when they are alike).
    own = [o for o in record["overrides"] if o not in shared] or record["overrides"]
    return f"({' '.join(own)})" if own else "(no overrides)"
