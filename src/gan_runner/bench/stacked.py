"""`make bench-stacked`: the stacked-digits recipe over seeds, beside PacGAN's Stacked MNIST.

Each seed trains exactly what `gan-run experiment=stacked_digits seed=<seed>` trains (through
`gan_runner.train.assemble`), without sample grids, checkpoints, loggers or progress bar, and its
EMA generator is scored off the clock as gan-run's final evaluation scores it: the Stacked MNIST
protocol (26,000 samples, 1,000 modes, KL to uniform; `metrics.stacked_modes`). The report holds
modes and KL per seed and as mean ± standard error, minutes per seed, the machine, the real
data's own score (the floor at this n) and PacGAN's published rows (Lin et al. 2018, Table 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from gan_runner.bench.quality import compose_run as compose_quiet
from gan_runner.bench.seeds import (
    machine,
    mean_se,
    seed_parser,
    seeds_of,
    stat_cell,
    threads_per_seed,
    train_all,
)
from gan_runner.errors import UserError
from gan_runner.train import assemble, build_trainer

RECIPE = "experiment=stacked_digits"
# The goal: every mode, KL ≤ 0.05, on every seed, within 10 CPU-minutes of training per seed.
TARGET_MODES, TARGET_KL, TARGET_MINUTES = 1000, 0.05, 10.0
# Lin et al. 2018, Table 2 (Stacked MNIST, 26,000 samples, averaged over 10 runs): modes, KL.
PACGAN_TABLE2 = {
    "DCGAN": (99.0, 3.40),
    "ALI": (16.0, 5.40),
    "Unrolled GAN": (48.7, 4.32),
    "VEEGAN": (150.0, 2.95),
    "PacDCGAN2": (1000.0, 0.06),
    "PacDCGAN3": (1000.0, 0.06),
    "PacDCGAN4": (1000.0, 0.07),
}


@dataclass(frozen=True)
class SeedRow:
    """One seed's training time and Stacked MNIST scores."""

    seed: int
    modes: int
    kl_modes: float
    minutes: float  # wall-clock training time
    cpu_minutes: float  # CPU time of the process while training (all its threads)
    g_steps: int
    load_average_1m: float  # at the end of its training: the other work sharing the CPUs


def compose_run(seed: int, overrides: list[str], output_dir: Path) -> DictConfig:
    """gan-run's config for `experiment=stacked_digits seed=<seed> <overrides>`; EMA only."""
    return compose_quiet("stacked_digits", seed, [RECIPE, *overrides], output_dir)


def train_seed(seed: int, overrides: list[str], workdir: Path) -> tuple[SeedRow, dict]:
    """Train one seed of the recipe; score its EMA generator as gan-run's last evaluation."""
    cfg = compose_run(seed, overrides, workdir / f"seed{seed}")
    evaluation = instantiate(cfg.metrics.stacked_modes)
    started, cpu_started = time.perf_counter(), time.process_time()
    run = assemble(cfg)
    trainer = build_trainer(cfg, run.callbacks, [])  # QUIET: assemble left out the bar
    trainer.fit(run.module, datamodule=run.datamodule)
    minutes = (time.perf_counter() - started) / 60
    cpu_minutes = (time.process_time() - cpu_started) / 60
    load = os.getloadavg()[0]
    # The metrics callback's first evaluation draws its noise from a generator seeded `seed`.
    noise = torch.Generator(device=run.module.device).manual_seed(seed)
    scores = evaluation.evaluate(run.module, run.datamodule, noise)
    modes, kl, _ = (scores[name] for name in evaluation.names())
    row = SeedRow(
        seed=seed,
        modes=int(modes),
        kl_modes=float(kl),
        minutes=round(minutes, 2),
        cpu_minutes=round(cpu_minutes, 2),
        g_steps=int(run.module.counters.g_steps),
        load_average_1m=round(load, 2),
    )
    return row, evaluation.provenance()


def summarize(rows: list[SeedRow]) -> dict[str, Any]:
    """Mean ± s.e. of modes, KL and minutes, the fewest modes and the goal's checks."""
    summary: dict[str, Any] = {"seeds": [row.seed for row in rows]}
    for key in ("modes", "kl_modes", "minutes", "cpu_minutes"):
        mean, se = mean_se([float(getattr(row, key)) for row in rows])
        summary[key] = {"mean": mean, "se": se}
    summary["min_modes"] = min(row.modes for row in rows)
    summary["max_kl_modes"] = max(row.kl_modes for row in rows)
    summary["max_minutes"] = max(row.minutes for row in rows)
    summary["max_cpu_minutes"] = max(row.cpu_minutes for row in rows)
    summary["checks"] = {
        f"all_{TARGET_MODES}_modes_every_seed": summary["min_modes"] == TARGET_MODES,
        f"kl_at_most_{TARGET_KL:g}_every_seed": summary["max_kl_modes"] <= TARGET_KL,
        f"cpu_minutes_per_seed_under_{TARGET_MINUTES:g}": summary["max_cpu_minutes"]
        < TARGET_MINUTES,
    }
    summary["passed"] = all(summary["checks"].values())
    return summary


def markdown(report: dict[str, Any]) -> str:
    """Per-seed rows, the mean, the real data and PacGAN's published rows in one table."""
    lines = [
        "| run | seeds | G steps | modes (of 1000) | KL(modes ‖ uniform) | minutes / seed "
        "| CPU-minutes / seed |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = report["rows"]
    for row in rows:
        lines.append(
            f"| stacked digits, seed {row['seed']} | 1 | {row['g_steps']} | {row['modes']} | "
            f"{row['kl_modes']:.3f} | {row['minutes']:.1f} | {row['cpu_minutes']:.1f} |"
        )
    summary = report["summary"]
    lines.append(
        f"| stacked digits, mean ± s.e. | {len(rows)} | {rows[0]['g_steps']} | "
        f"{stat_cell(summary['modes'], 1)} (min {summary['min_modes']}) | "
        f"{stat_cell(summary['kl_modes'], 3)} (max {summary['max_kl_modes']:.3f}) | "
        f"{stat_cell(summary['minutes'], 1)} (max {summary['max_minutes']:.1f}) | "
        f"{stat_cell(summary['cpu_minutes'], 1)} (max {summary['max_cpu_minutes']:.1f}) |"
    )
    real = report["real_data"]
    lines.append(
        f"| real stacked digits ({real['real_n']} samples) | – | – | {real['real_modes']} | "
        f"{real['real_kl_modes']:.3f} | – | – |"
    )
    for name, (modes, kl) in PACGAN_TABLE2.items():
        published = f"{name} on Stacked MNIST (Lin et al. 2018, Table 2)"
        lines.append(f"| {published} | 10 | – | {modes:g} | {kl:.2f} | – | – |")
    start, end = report["machine_start"], report["machine_end"]
    failed = [name for name, ok in summary["checks"].items() if not ok]
    lines += [
        "",
        f"Recipe: `{' '.join(['gan-run', RECIPE, 'seed=<s>', *report['overrides']])}`",
        f"Judge: each channel by a digit classifier of held-out accuracy "
        f"{real.get('classifier_accuracy', float('nan')):.4f} at {real['resolution']}×"
        f"{real['resolution']}; {report['n_samples']} samples per seed.",
        f"Goal: {TARGET_MODES}/{TARGET_MODES} modes and KL ≤ {TARGET_KL:g} on every seed, under "
        f"{TARGET_MINUTES:g} CPU-minutes of training per seed: "
        f"{'met' if not failed else 'missed ' + ', '.join(failed)}.",
        f"Machine: {start['platform']}, {start['cpu_count']} CPUs, torch {start['torch']}; "
        f"{report['jobs']} seed(s) at a time, each on {report['threads_per_seed']} thread(s); "
        f"load average (1 min) {start['load_average_1m']} "
        f"at the start, {end['load_average_1m']} at the end.",
    ]
    return "\n".join(lines) + "\n"


def _reported(result: tuple[SeedRow, dict]) -> tuple[SeedRow, dict]:
    row = result[0]
    print(
        f"seed {row.seed}: {row.modes}/1000 modes, KL {row.kl_modes:.4f}, "
        f"{row.minutes:.1f} min, {row.cpu_minutes:.1f} CPU-min (load {row.load_average_1m})",
        flush=True,
    )
    return result


def run(
    seeds: list[int], overrides: list[str], out: Path, jobs: int = 1, threads: int | None = None
) -> dict[str, Any]:
    """Train every seed, write stacked.json and stacked.md under out, return both.

    With jobs > 1, seeds train in that many spawned processes at once, each on `threads` torch
    threads (default: the CPUs shared out), so each seed's minutes are those of its share.
    """
    start = machine()
    share = threads_per_seed(jobs, threads)
    with tempfile.TemporaryDirectory(prefix="gan_bench_stacked_") as workdir:
        tasks = [(seed, overrides, Path(workdir)) for seed in seeds]
        results = train_all(train_seed, tasks, jobs, share, _reported)
    rows, provenance = [row for row, _ in results], results[-1][1]
    report = {
        "protocol": "Stacked MNIST (Lin et al. 2018, Table 2) on the stacked embedded digits",
        "recipe": RECIPE,
        "overrides": overrides,
        "n_samples": provenance.get("n_samples"),
        "targets": {"modes": TARGET_MODES, "kl_modes": TARGET_KL, "minutes": TARGET_MINUTES},
        "jobs": jobs,
        "threads_per_seed": share,
        "machine_start": start,
        "machine_end": machine(),
        "rows": [asdict(row) for row in rows],
        "summary": summarize(rows),
        "real_data": provenance,
        "pacgan_table2": {k: {"modes": m, "kl": kl} for k, (m, kl) in PACGAN_TABLE2.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "stacked.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "stacked.md").write_text(markdown(report))
    return report


def parse(argv: list[str]) -> argparse.Namespace:
    return seed_parser(
        "python -m gan_runner.bench.stacked",
        "Train experiment=stacked_digits over seeds; score modes and KL (PacGAN).",
        5,
        "stacked.json/.md",
    ).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        seeds = seeds_of(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        report = run(seeds, args.overrides, Path(args.out), args.jobs, args.threads)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown(report), end="")
    print(f"Written: {Path(args.out) / 'stacked.json'}, {Path(args.out) / 'stacked.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
