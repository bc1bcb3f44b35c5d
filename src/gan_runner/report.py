"""`gan-report <runs or sweep folders>`: compare runs from their folders alone (no W&B needed).

Writes report.md, report.csv (one row per run), report_grouped.csv (seeds aggregated as
mean ± standard error per configuration) and curves_<metric>.png (metric vs generator steps).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gan_runner.errors import UserError
from gan_runner.run_folders import MISSING, Run, direction, find_runs, read_run

# Keys that differ between runs without being part of the experiment: where files go, how the
# run is watched, and the seed (seeds are what a configuration is aggregated over).
IGNORED_PREFIXES = ("hydra.", "paths.", "logger.", "callbacks.progress.")
IGNORED_KEYS = {"seed", "resume", "trainer.enable_progress_bar"}
PATH_LIKE = re.compile(r"(^|[._])(dir|dirpath|path|root|file|filename)$|_(dir|path)$")
IGNORED_GROUPS = ("hydra", "paths", "logger")


# ----------------------------------------------------------------- comparing
def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Group choices, then flattened config keys, whose values are not the same in every run."""

    def varies(key: str) -> bool:
        return len({json.dumps(r.setting(key), sort_keys=True, default=str) for r in runs}) > 1

    groups = sorted({g for r in runs for g in r.choices})
    groups = [g for g in groups if "/" not in g and g not in IGNORED_GROUPS and varies(g)]
    keys = sorted({k for r in runs for k in r.config}, key=lambda k: (k.count("."), k))
    keys = [
        k
        for k in keys
        if not (k in IGNORED_KEYS or k.startswith(IGNORED_PREFIXES) or PATH_LIKE.search(k))
        and varies(k)
    ]
    return groups + keys


def identifying_keys(runs: Sequence[Run], keys: Sequence[str]) -> list[str]:
    """The fewest of `keys`, in their order, that tell the same configurations apart.

    A key is kept only when it splits runs that the keys kept before it leave together, so the
    settings a recipe or data set brings along with a swept choice (`model=wgan` sets n_critic,
    the optimizer, ...) do not crowd the tables and legends; the runs group exactly as by all
    of `keys`, and report.csv still lists every one.
    """

    def configurations(chosen: Sequence[str]) -> int:
        return len({json.dumps([r.setting(k) for k in chosen], default=str) for r in runs})

    kept: list[str] = []
    count = 1
    for key in keys:
        split = configurations([*kept, key])
        if split > count:
            kept.append(key)
            count = split
    return kept


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[tuple[str, list[Run]]]:
    """Runs with the same values of `keys` (the config without the seed), labelled `k=v, ...`."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        label = ", ".join(f"{k}={_text(run.setting(k))}" for k in keys) or "all runs"
        groups.setdefault(label, []).append(run)
    return list(groups.items())


def mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error std(ddof=1)/sqrt(n); no error for a single value."""
    array = np.asarray(values, dtype=float)
    if len(array) < 2:
        return float(array.mean()), None
    return float(array.mean()), float(array.std(ddof=1) / math.sqrt(len(array)))


def run_rows(
    runs: Sequence[Run], names: Sequence[str], keys: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per run: name, seed, the differing settings, g_steps and its statistics."""
    return [
        {
            "run": name,
            "seed": run.seed,
            **{k: run.setting(k) for k in keys},
            "g_steps": MISSING if run.g_steps is None else run.g_steps,
            **run.stats(metrics),
        }
        for run, name in zip(runs, names)
    ]


def group_rows(
    groups: Sequence[tuple[str, list[Run]]],
    keys: Sequence[str],
    metrics: Sequence[str],
    stats: Sequence[str],
) -> list[dict[str, Any]]:
    """One row per configuration: n seeds and each statistic's mean, s.e. and n over them."""
    rows = []
    for _, runs in groups:
        steps = sorted({r.g_steps for r in runs if r.g_steps is not None})
        row = {k: runs[0].setting(k) for k in keys}
        row.update(n=len(runs), seeds=" ".join(_text(r.seed) for r in runs))
        row["g_steps"] = "/".join(map(str, steps)) or MISSING
        per_run = [r.stats(metrics) for r in runs]
        for stat in stats:
            values = [s[stat] for s in per_run if stat in s]
            if values:
                mean, se = mean_se(values)
                row.update({f"{stat}:mean": mean, f"{stat}:se": se, f"{stat}:n": len(values)})
        rows.append(row)
    return rows


# ----------------------------------------------------------------- output
def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "null" if value is None else str(value)


def _cell(row: dict[str, Any], column: str) -> str:
    if f"{column}:mean" in row:  # a grouped statistic
        mean, se, n = (row[f"{column}:{part}"] for part in ("mean", "se", "n"))
        text = _text(mean) if se is None else f"{_text(mean)} ± {se:.2g}"
        return text if n == row["n"] else f"{text} (n={n})"
    at = row.get(f"best_at:{column.removeprefix('best:')}")
    if column.startswith("best:") and at is not None:
        return f"{_text(row[column])} @ {int(at)}"
    return _text(row.get(column, MISSING))


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def title(column: str) -> str:  # final:val/rkl_2500 -> final val/rkl_2500; best adds (min)
        kind, _, name = column.partition(":")
        return f"{kind} {name} ({direction(name)})" if kind == "best" else column.replace(":", " ")

    lines = ["| " + " | ".join(map(title, columns)) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, c).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        # A key missing from a run's config is an empty cell, like a statistic it lacks.
        writer.writerows({k: "" if v is MISSING else v for k, v in row.items()} for row in rows)


def plot_curves(groups: Sequence[tuple[str, list[Run]]], metric: str, path: Path) -> None:
    """`metric` against generator steps: each configuration's mean over seeds, s.e. shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, runs in groups:
        by_step: dict[int, list[float]] = {}
        for run in runs:
            for step, value in run.curve(metric):
                by_step.setdefault(step, []).append(value)
        if not by_step:
            continue
        steps = sorted(by_step)
        mean, se = (np.array(v, dtype=float) for v in zip(*(mean_se(by_step[s]) for s in steps)))
        se = np.nan_to_num(se)  # one seed at a step: no band
        (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=f"{label} (n={len(runs)})")
        ax.fill_between(steps, mean - se, mean + se, color=line.get_color(), alpha=0.2, lw=0)
    ax.set(xlabel="generator steps", ylabel=metric)
    ax.grid(alpha=0.3)
    # Beside the axes: configuration labels grow with the number of differing keys.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------- the report
def make_report(folders: Sequence[Path], out: Path | None = None) -> Path:
    """Read every run under `folders`, write the report into `out`, and return report.md."""
    folders = [Path(f) for f in folders]
    paths = find_runs(folders)
    runs = [read_run(p) for p in paths]
    out = Path(out) if out is not None else folders[0] / "report"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    keys, metrics = differing_keys(runs), _metric_names(runs)
    shown = identifying_keys(runs, keys)  # the same configurations as by all the keys
    groups = group_runs(runs, shown)
    losses = sorted({f"final:{k}" for r in runs for k in r.losses})
    best = [f"best:{m}" for m in metrics if direction(m)]
    stats = [f"final:{m}" for m in metrics] + best + losses
    per_run = run_rows(runs, _names(paths), keys, metrics)
    run_columns = ["run", "seed", *keys, "g_steps"]
    grouped = group_rows(groups, keys, metrics, stats)
    group_columns = [*keys, "n", "seeds", "g_steps"]
    write_csv(out / "report.csv", per_run, run_columns + _keys_after(per_run, run_columns))
    stat_columns = [f"{s}:{part}" for s in stats for part in ("mean", "se", "n")]
    write_csv(out / "report_grouped.csv", grouped, group_columns + stat_columns)
    group_columns = [*shown, "n", "seeds", "g_steps"]  # the Markdown tables: what tells apart
    run_columns = ["run", "seed", *shown, "g_steps"]
    plots = [(m, f"curves_{re.sub(r'[^A-Za-z0-9_.-]+', '_', m)}.png") for m in metrics]
    for metric, name in plots:
        plot_curves(groups, metric, out / name)
    tables = (
        markdown_table(grouped, group_columns + stats),
        markdown_table(per_run, run_columns + stats),
    )
    hidden = len(keys) - len(shown)
    text = _markdown(folders, len(runs), groups, shown, hidden, tables, plots)
    (out / "report.md").write_text(text)
    return out / "report.md"


def _metric_names(runs: Iterable[Run]) -> list[str]:
    names = (k for r in runs for e in r.evaluations for k in e.get("values", {}))
    return list(dict.fromkeys(names))


def _keys_after(rows: Iterable[dict[str, Any]], first: Sequence[str]) -> list[str]:
    return [k for k in dict.fromkeys(k for row in rows for k in row) if k not in first]


def _names(paths: Sequence[Path]) -> list[str]:
    """Run names: paths relative to the runs' common folder (a lone run: its folder name)."""
    if len(paths) == 1:
        return [paths[0].resolve().name]
    resolved = [p.resolve() for p in paths]
    common = Path(
        *[a for a, *rest in zip(*(p.parts for p in resolved)) if all(b == a for b in rest)]
    )
    return [str(p.relative_to(common)) for p in resolved]


def _markdown(folders, n_runs, groups, keys, hidden, tables, plots) -> str:
    differ = ", ".join(f"`{k}`" for k in keys) or "nothing but the seed"
    if hidden:
        differ += f" (and {hidden} settings that follow from these; report.csv lists them all)"
    lines = [
        "# Run comparison",
        "",
        f"{n_runs} runs in {len(groups)} configurations from "
        f"{', '.join(f'`{f}`' for f in folders)}; the configurations differ in {differ}.",
        "final: the last evaluation; best: the best evaluation by the metric's direction, @ its "
        "generator step. Seeds are aggregated as mean ± standard error (std/√n).",
        "",
        "## By configuration",
        "",
        tables[0],
        "",
        "## Every run",
        "",
        tables[1],
    ]
    if plots:
        lines += ["", "## Curves", ""] + [f"![{m}]({file})" for m, file in plots]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """`gan-report <run or multirun folders> [--out DIR]`: compare runs, write the report."""
    parser = argparse.ArgumentParser(prog="gan-report", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders or folders of runs")
    parser.add_argument("--out", type=Path, help="report folder (default: <first>/report)")
    args = parser.parse_args(argv)
    try:
        path = make_report(args.folders, args.out)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    table = path.read_text().split("## By configuration\n\n", 1)[1].split("\n\n", 1)[0]
    print(f"{table}\n\nReport: {path.resolve()}")
