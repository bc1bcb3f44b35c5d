"""`python -m gan_runner.bench.augment`: does DiffAugment (Zhao et al. 2020) help a DCGAN that
sees a tenth of the digits?

Each run is `gan-run model=dcgan data=digits data.fraction=0.1 aug=<none|diffaug> seed=<s>` at
16×16 with widths 32, on one CPU thread, scored by the digits' own classifier FID (2,000 EMA
fakes) every `--every` G steps. The FID reference is every digit (1,797 images), not the ~180
trained on: the question is whether G generalizes beyond what it saw. Writes augment.json and
augment.md under the output folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import open_dict

from gan_runner.bench.seeds import machine
from gan_runner.bench.timing import compose_run
from gan_runner.errors import UserError
from gan_runner.train import train

FID = "val/fid_classifier_2k_train"
# A G that memorized its ~180 images scores FID 0.4-0.8 here but recall ~0.11 and coverage ~0.42
# (all 1,797: 0.93, 1.00), so recall and coverage are what tell memorizing from generalizing.
RECALL, COVERAGE = "val/recall_classifier_2k_train", "val/coverage_classifier_2k_train"
RECIPE = [
    "model=dcgan",
    "data=digits",
    "data.resolution=16",
    "arch.generator.base_width=32",
    "arch.discriminator.base_width=32",
    "metrics=[classifier]",
    "metrics.classifier.show_progress=false",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=none",
]
SILENT = ("samples", "checkpoint", "loss_curve", "progress", "preemption")  # EMA, metrics stay


def run_one(
    aug: str, seed: int, steps: int, every: int, fraction: float, extra: list[str], root: Path
) -> dict[str, Any]:
    """Train one run and read its FID curve back from metrics.jsonl."""
    folder = root / f"{aug}_seed{seed}"
    overrides = [
        *RECIPE,
        f"data.fraction={fraction}",
        f"aug={aug}",
        f"seed={seed}",
        f"train.g_steps={steps}",
        f"callbacks.metrics.every={every}",
        *extra,
    ]
    cfg = compose_run(overrides, folder)
    with open_dict(cfg):
        for name in SILENT:
            cfg.callbacks[name] = None
    started = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    curve = {row["g_steps"]: row["values"][FID] for row in rows}
    scoring = sum(row.get("seconds", 0.0) for row in rows)
    last = rows[-1]["values"]
    return {
        "aug": aug,
        "seed": seed,
        "g_steps": steps,
        "fid": curve[max(curve)],
        "best_fid": min(curve.values()),
        "recall": last[RECALL],
        "coverage": last[COVERAGE],
        "curve": curve,
        "seconds": seconds,
        "scoring_seconds": scoring,
        "n_real": rows[-1]["provenance"]["classifier"]["n_real"],
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean final and best FID per augmentation over seeds."""
    table = {}
    for aug in dict.fromkeys(run["aug"] for run in runs):
        mine = [run for run in runs if run["aug"] == aug]
        table[aug] = {
            "fid": statistics.fmean(run["fid"] for run in mine),
            "best_fid": statistics.fmean(run["best_fid"] for run in mine),
            "recall": statistics.fmean(run["recall"] for run in mine),
            "coverage": statistics.fmean(run["coverage"] for run in mine),
            "seconds": statistics.fmean(run["seconds"] for run in mine),
        }
    return table


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"DCGAN on data=digits 16×16, data.fraction={settings['fraction']}, widths 32, "
        f"{settings['g_steps']} G steps, one CPU thread; classifier FID of 2,000 EMA fakes "
        f"against all {report['runs'][0]['n_real']} digits (lower is better); recall and "
        "coverage at the end (a memorizer of the kept images: about 0.11 and 0.42).",
        "",
        "| aug | seed | FID at end | best FID (step) | recall | coverage | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        best_step = min(run["curve"], key=run["curve"].get)
        lines.append(
            f"| {run['aug']} | {run['seed']} | {run['fid']:.2f} | {run['best_fid']:.2f} "
            f"({best_step}) | {run['recall']:.3f} | {run['coverage']:.3f} | {run['seconds']:.0f} |"
        )
    for aug, row in report["summary"].items():
        lines.append(
            f"| **{aug}** | mean | **{row['fid']:.2f}** | {row['best_fid']:.2f} | "
            f"{row['recall']:.3f} | {row['coverage']:.3f} | {row['seconds']:.0f} |"
        )
    lines += ["", "FID every {} G steps:".format(settings["every"]), ""]
    steps = sorted({int(s) for run in report["runs"] for s in run["curve"]})
    lines.append("| aug | seed | " + " | ".join(map(str, steps)) + " |")
    lines.append("|---|---|" + "---|" * len(steps))
    for run in report["runs"]:
        cells = " | ".join(f"{run['curve'].get(s, float('nan')):.1f}" for s in steps)
        lines.append(f"| {run['aug']} | {run['seed']} | {cells} |")
    lines += ["", f"Machine: {json.dumps(report['machine'])}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="G steps per run")
    parser.add_argument("--every", type=int, default=500, help="G steps between FID scores")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--augs", nargs="+", default=["none", "diffaug"])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--name", default="augment", help="the report's file stem")
    parser.add_argument("overrides", nargs="*", help="further gan-run overrides for every run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the measurement's protocol: one core per run
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_augment_") as scratch:
        for seed in args.seeds:
            for aug in args.augs:
                run = run_one(
                    aug, seed, args.steps, args.every, args.fraction, args.overrides, Path(scratch)
                )
                print(f"aug={aug} seed={seed}: FID {run['fid']:.2f}, {run['seconds']:.0f} s")
                runs.append(run)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "name")}
    settings["g_steps"] = settings.pop("steps")
    report = {"settings": settings, "runs": runs, "summary": summary(runs), "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
