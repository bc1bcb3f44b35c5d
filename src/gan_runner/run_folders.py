"""Run folders read back: config and group choices (.hydra/), metrics.jsonl, csv/metrics.csv.

What `gan-report` compares; it needs nothing but the folders a run wrote.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gan_runner.config import flat_keys
from gan_runner.errors import UserError

MISSING = "—"  # a key one run's config lacks


@dataclass
class Run:
    """One run folder read back: flat config, group choices, evaluations and final losses."""

    path: Path
    config: dict[str, Any]
    choices: dict[str, Any]
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    logged_g_steps: int | None = None

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def g_steps(self) -> int | None:
        steps = [int(e["g_steps"]) for e in self.evaluations if "g_steps" in e]
        steps += [] if self.logged_g_steps is None else [self.logged_g_steps]
        return max(steps) if steps else None

    def setting(self, key: str) -> Any:
        """A config key's value, or a group's chosen option (`model`), or MISSING."""
        return self.config.get(key, self.choices.get(key, MISSING))

    def curve(self, metric: str) -> list[tuple[int, float]]:
        return [
            (int(e["g_steps"]), float(e["values"][metric]))
            for e in self.evaluations
            if metric in e.get("values", {}) and "g_steps" in e
        ]

    def stats(self, metrics: Sequence[str]) -> dict[str, float]:
        """final:<metric> (last evaluation), best:<metric> with best_at:<metric> (its g_steps,
        by the metric's direction), and final:<loss>."""
        last = self.evaluations[-1].get("values", {}) if self.evaluations else {}
        stats = {f"final:{m}": float(last[m]) for m in metrics if m in last}
        for metric in metrics:
            points = [(v, s) for s, v in self.curve(metric) if math.isfinite(v)]
            mode = direction(metric)
            if mode and points:
                pick = min if mode == "min" else max  # a tie: the earliest, as the callback
                best = pick(points, key=lambda point: point[0])
                stats[f"best:{metric}"], stats[f"best_at:{metric}"] = best
        stats.update({f"final:{k}": v for k, v in sorted(self.losses.items())})
        return stats


def direction(metric: str) -> str | None:
    """'min' or 'max' for a logged metric (`val/rkl_2500`: min), None when the name won't tell."""
    from gan_runner.callbacks.metrics import infer_mode

    try:
        return infer_mode(metric.split("/")[-1])
    except UserError:
        return None


def find_runs(folders: Sequence[Path]) -> list[Path]:
    """Every run folder (holding .hydra/config.yaml) at or under `folders`, in natural order."""
    runs: set[Path] = set()
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; pass run folders or a multirun folder")
        runs.update(p.parent.parent for p in folder.rglob(".hydra/config.yaml"))
    if not runs:
        raise UserError(
            f"no run folders (with .hydra/config.yaml) under {', '.join(map(str, folders))}; "
            "pass a run folder (outputs/<date>/<time>) or a multirun folder"
        )
    return sorted(
        runs, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]
    )


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = " ".join(str(error).split()[:12]) or type(error).__name__
        raise UserError(f"{path} is not readable YAML ({reason}); restore or delete it") from None


def read_run(path: Path) -> Run:
    """A run folder's config and group choices (.hydra/), metrics.jsonl and csv/metrics.csv."""
    config = _load_yaml(path / ".hydra" / "config.yaml")
    if not isinstance(config, dict):
        raise UserError(f"{path / '.hydra' / 'config.yaml'} holds no config; restore or delete it")
    hydra_yaml = path / ".hydra" / "hydra.yaml"
    hydra = (_load_yaml(hydra_yaml) if hydra_yaml.is_file() else None) or {}
    choices = ((hydra.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    run = Run(path, flat_keys(config), {k: v for k, v in choices.items() if v is not None})
    run.evaluations = _read_jsonl(path / "metrics.jsonl")
    run.losses, run.logged_g_steps = _read_losses(path / "csv" / "metrics.csv")
    return run


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # a run killed mid-write leaves a partial last line: report what came before
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(
                f"{path}:{number} is not JSON ({error}); fix or delete the line"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("values", {}), dict):
            raise UserError(f"{path}:{number} is not an evaluation record; fix or delete the line")
        records.append(record)
    return records


def _read_losses(path: Path) -> tuple[dict[str, float], int | None]:
    """The last logged value of each train/*loss column, and the last train/g_steps."""
    if not path.is_file():
        return {}, None
    last: dict[str, float] = {}
    try:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                for key, value in row.items():
                    wanted = key and (key.endswith("loss") or key == "train/g_steps")
                    if wanted and key.startswith("train/") and value not in (None, ""):
                        last[key] = float(value)
    except (ValueError, csv.Error, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not a readable metrics CSV ({error}); delete it") from None
    g_steps = last.pop("train/g_steps", None)
    return last, None if g_steps is None else int(g_steps)
