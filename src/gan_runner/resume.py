"""Continuing a run: which checkpoint, which folder, and whether its config still matches.

`resume=auto` continues this config's own run: the job's output folder when it already holds
`checkpoints/last.ckpt` (a requeued SLURM job, a fixed `hydra.run.dir`), else the newest run
folder under `paths.runs_dir` started with the same command-line overrides. That run goes on
in its own folder, so its metrics, samples and logs stay in one place. `resume=<checkpoint>`
continues the given checkpoint into this job's new folder.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gan_runner.checkpoints import load_checkpoint, stored_config
from gan_runner.config import flat_keys
from gan_runner.errors import UserError
from gan_runner.module import CHECKPOINT_KEY

log = logging.getLogger(__name__)

# Keys that change where results go, how often they are recorded or for how long the run
# goes on, but not the trajectory the weights follow: they may differ on resume.
OUTSIDE_THE_TRAJECTORY = (
    "resume",
    "resume_force",
    "paths",
    "train.g_steps",
    "train.log_every",
    "train.batches_per_step",  # batches per Lightning step: the same batches, the same run
    "logger",
    "metrics",
    "optimized_metric",
    "guard",
    "speed",
    "callbacks.samples",
    "callbacks.metrics",
    "callbacks.checkpoint",
    "callbacks.loss_curve",
    "callbacks.progress",
    "callbacks.preemption",
    "callbacks.guard",
    "trainer.enable_progress_bar",
    "trainer.default_root_dir",
)
# Overrides that select how to continue rather than what to train.
NOT_PART_OF_THE_RUN = ("resume", "resume_force", "hydra.", "hydra/")


@dataclass(frozen=True)
class ResumePlan:
    """The checkpoint a fit continues from and the run folder it goes on in (None: a new one)."""

    checkpoint: Path
    folder: Path | None
    g_steps: int


def plan_resume(cfg: DictConfig) -> ResumePlan | None:
    """Resolve `resume` (null, auto or a path) and refuse a checkpoint of a different run."""
    choice = cfg.get("resume")
    if not choice:
        return None
    if str(choice) == "auto":
        found = find_auto(cfg)
        if found is None:
            log.info("resume=auto: no earlier run of this config has a checkpoint; starting fresh")
            return None
        path, folder = found
    else:
        path, folder = Path(os.path.expanduser(str(choice))), None
    checkpoint = load_checkpoint(path, key="resume")
    state = checkpoint[CHECKPOINT_KEY]
    if not cfg.get("resume_force", False):
        current = OmegaConf.to_container(cfg, resolve=True)
        differences = config_differences(stored_config(state), current)
        if differences:
            shown = "; ".join(differences[:6]) + ("; ..." if len(differences) > 6 else "")
            raise UserError(
                f"resume={path} was trained with a different config ({shown}); resume with the "
                "same settings, or add resume_force=true to continue with the new ones"
            )
    return ResumePlan(path, folder, int(state["counters"]["g_steps"]))


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: saved -> current' for every flattened key that changes the training trajectory."""
    before, after = flat_keys(saved), flat_keys(current)
    lines = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key, "<unset>"), after.get(key, "<unset>")
        if _outside_trajectory(key) or old == new or _added_at_its_default(key, old, new):
            continue
        lines.append(f"{key}: {old} -> {new}")
    return lines


# Keys added to the config since earlier checkpoints, at the value that trains as before.
ADDED_KEY_DEFAULTS = {
    "accumulate": 1,
    "callbacks.ema.start_g_steps": 0,
    "data.fraction": None,
    "objective.drift": 0.0,
    "regularizer.spectral_norm.networks": "['discriminator']",
}


def _added_at_its_default(key: str, old: Any, new: Any) -> bool:
    return old == "<unset>" and key in ADDED_KEY_DEFAULTS and new == ADDED_KEY_DEFAULTS[key]


def _outside_trajectory(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in OUTSIDE_THE_TRAJECTORY)


def find_auto(cfg: DictConfig) -> tuple[Path, Path] | None:
    """(last.ckpt, its run folder) for resume=auto, or None when this config never ran."""
    here = Path(cfg.paths.output_dir)
    if (here / "checkpoints" / "last.ckpt").is_file():
        return here / "checkpoints" / "last.ckpt", here
    wanted = _run_overrides(_job_overrides())
    runs_dir = Path(cfg.paths.get("runs_dir") or here.parent)
    candidates = []
    for overrides_file in runs_dir.glob("**/.hydra/overrides.yaml"):
        folder = overrides_file.parent.parent
        last = folder / "checkpoints" / "last.ckpt"
        if folder == here or not last.is_file():
            continue
        if _run_overrides(list(OmegaConf.load(overrides_file))) == wanted:
            candidates.append((last.stat().st_mtime, last, folder))
    if not candidates:
        return None
    _, last, folder = max(candidates)
    return last, folder


def _job_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _run_overrides(overrides: list[Any]) -> list[str]:
    """The overrides that define a run: not how to continue it, where it writes or how long."""
    kept = (str(o).lstrip("+~") for o in overrides)
    return sorted(
        o
        for o in kept
        if not o.startswith(NOT_PART_OF_THE_RUN) and not _outside_trajectory(o.split("=")[0])
    )


def trim_history(folder: Path, g_steps: int) -> None:
    """Drop records a crashed run wrote after its last checkpoint: they are trained again."""
    jsonl = folder / "metrics.jsonl"
    if jsonl.is_file():
        lines = jsonl.read_text().splitlines()
        kept = [line for line in lines if _jsonl_step(line) <= g_steps]
        _replace(jsonl, "".join(f"{line}\n" for line in kept))
    for table in folder.glob("csv/metrics.csv"):
        with table.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header, rows = reader.fieldnames or [], list(reader)
        kept_rows = [row for row in rows if _csv_step(row) <= g_steps]
        if len(kept_rows) != len(rows):
            tmp = table.with_suffix(".csv.tmp")
            with tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=header)
                writer.writeheader()
                writer.writerows(kept_rows)
            os.replace(tmp, table)


def _jsonl_step(line: str) -> float:
    try:
        return float(json.loads(line).get("g_steps", 0))
    except (ValueError, AttributeError):
        return 0.0  # keep what cannot be read: never delete a user's record on a guess


def _csv_step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
