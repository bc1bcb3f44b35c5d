"""The `make bench` command line: pick the parts, run them, write outputs/bench/speed.{json,md}."""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gan_runner.bench import report, throughput
from gan_runner.bench.speed import CASES, Plan, ablation_row, ablations_for, speed_case
from gan_runner.bench.timing import interleave, paired_ratio
from gan_runner.checkpoints import resolve_device
from gan_runner.errors import UserError

PARTS = ("cases", "ablations", "data", "metrics")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make bench ARGS=...", description="gan-run's speed against a plain PyTorch loop."
    )
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke version")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable")
    parser.add_argument("--ablation", action="append", help="fast path name(s); 'none' skips")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    parser.add_argument("--repeats", type=int, help="timed rounds per comparison (default 9)")
    parser.add_argument("--seconds", type=float, help="length of one timed window (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--override", action="append", default=[], help="gan-run override for every case"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory runs")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--name", default=None, help="output file stem (default speed-<device>)")
    return parser.parse_args(argv)


def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Tensor Cores.*")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, workdir: Path, save: Callable[[dict], None]) -> dict[str, Any]:
    """Every chosen part in turn; `save` writes what is done so far after each one."""
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts - set(PARTS):
        raise UserError(f"--parts {args.parts}: choose from {', '.join(PARTS)}")
    device = resolve_device(args.device)
    plan = Plan(
        device,
        workdir,
        repeats=args.repeats or (2 if args.quick else 9),
        target_s=args.seconds or (0.5 if args.quick else 3.0),
        ablation_repeats=args.repeats or (2 if args.quick else 4),
        ablation_target_s=args.seconds or (0.5 if args.quick else 2.0),
        memory=not args.no_memory and not args.quick,
        threads=args.threads,
        overrides=tuple(args.override),
    )
    settings = {k: v for k, v in vars(plan).items() if k not in ("device", "workdir")}
    settings.update(device=str(device), quick=args.quick)
    results: dict[str, Any] = {"machine": report.machine(device), "settings": settings}
    if "cases" in parts:
        chosen = args.case or (["mlp_grid25"] if args.quick else list(CASES))
        cases = [CASES[n] for n in chosen if CASES[n].only in (None, device.type)]
        results["cases"] = [_guarded(speed_case, plan, case, case.name) for case in cases]
        save(results)
    names = None if args.ablation is None else [a for a in args.ablation if a != "none"]
    if "ablations" in parts:
        results["ablations"] = []
        for ablation in ablations_for(device, args.quick, names):
            results["ablations"].append(_guarded(ablation_row, plan, ablation, ablation.name))
            save(results)
    if "data" in parts:
        results["data"] = throughput.data_rows(workdir, args.quick, workers=(0, 2))
        _say("data loading: done")
        save(results)
    if "metrics" in parts:
        results["metrics"] = [metric_row(device, args.quick, workdir)]
        _say(f"metrics: ours / torch-fidelity = {results['metrics'][0]['ratio']:.3f}")
    return results


def _guarded(measure: Any, plan: Plan, what: Any, name: str) -> dict[str, Any]:
    """One comparison's row; a failure (a compiler missing, say) is recorded, not fatal."""
    try:
        row = measure(plan, what)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - the other comparisons still run
        _say(f"{name}: failed: {type(error).__name__}: {error}")
        return {"name": name, "case": getattr(what, "case", name), "error": repr(error)}
    ratio = row.get("ratio", row.get("speedup"))
    _say(f"{name}: {'gan-run / plain' if 'ratio' in row else 'after / before'} = {ratio:.3f}")
    return row


def metric_row(device: torch.device, quick: bool, workdir: Path) -> dict[str, Any]:
    """Inception extraction: our FID path against torch-fidelity's extractor, interleaved."""
    weights = throughput.inception_weights(workdir / "inception.pth")
    n, batch = (4, 4) if quick else (16, 8)
    if device.type == "cuda":
        n, batch = 2000, 200
    runs = throughput.extraction_runs(weights, n, batch, device)
    rounds = interleave(runs, 2 if quick else 4)
    rates = {name: sorted(values[1:]) for name, values in rounds.items()}  # first: warm-up
    return {
        "extractor": "InceptionV3 2015-12-05 shapes (random weights: speed only)",
        "n_images": n,
        "batch_size": batch,
        "resolution": 32,
        "ours": {"images_per_s": statistics.median(rates["ours"]), "runs": rates["ours"]},
        "torch_fidelity": {
            "images_per_s": statistics.median(rates["torch_fidelity"]),
            "runs": rates["torch_fidelity"],
        },
        "ratio": paired_ratio(rounds["ours"][1:], rounds["torch_fidelity"][1:]),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    torch.set_num_threads(args.threads)
    _quiet()
    start = time.perf_counter()
    written: list[Path] = []

    def save(results: dict[str, Any]) -> None:
        results["settings"]["wall_s"] = round(time.perf_counter() - start, 1)
        name = args.name or f"speed-{results['machine']['device']}"
        written[:] = report.write(report.stamp(dict(results), argv), args.out, name)

    try:
        with tempfile.TemporaryDirectory(prefix="gan_bench_") as tmp:
            results = run(args, Path(tmp), save)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    save(results)
    print(written[1].read_text())
    print(f"Written: {written[0]} and {written[1]}")
    return 0
