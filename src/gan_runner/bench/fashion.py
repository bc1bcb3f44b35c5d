"""`make bench-fashion`: Lucic et al. 2018's Fashion-MNIST FIDs, on a CPU budget, offline.

Trains each chosen loss on the same DCGAN (`experiment=dcgan_fashion_mnist`) for an equal budget
of training wall-clock, and scores its EMA generator with the TF 2015-12-05 Inception (the
TorchScript file `make inception-weights` fetches; torch-fidelity's with --extractor
torch_fidelity) on Lucic et al.'s protocol: 10k generated images against the 10k test images,
grayscale tiled to three channels. During training a cheaper curve (FID of fewer samples, named
so: fid_inception_1k_test) is taken every few minutes; evaluation time is kept off the clock.
The test set's statistics are cached once (keyed by extractor, weights hash, split and count),
so each 10k FID costs one side. Writes fashion.json, fashion.md and fashion.png after each recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import DictConfig

from gan_runner.bench.quality import compose_run
from gan_runner.bench.seeds import machine
from gan_runner.errors import UserError
from gan_runner.metrics.extractors import InceptionFeatures
from gan_runner.metrics.fidelity import FidelityEvaluation
from gan_runner.metrics.inception_weights import fetch
from gan_runner.metrics.torchscript import TorchScriptFeatures
from gan_runner.train import assemble, build_trainer

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
BASE = ["experiment=dcgan_fashion_mnist", "metrics=[]", "train.g_steps=1000000"]
# Each loss on the shared DCGAN, with its own recipe's optimizer, n_critic and penalty; beside
# the best FID of Lucic et al. 2018 (arXiv:1711.10337) Table 2 on Fashion-MNIST (a large GPU
# hyperparameter search per loss).
RECIPES: dict[str, tuple[list[str], float]] = {
    "mm_gan": (["objective=minimax"], 29.6),
    "ns_gan": ([], 26.5),
    "lsgan": (["objective=least_squares"], 30.7),
    "wgan": (["model=wgan", "arch=dcgan"], 21.5),
    "wgan_gp": (["model=wgan_gp", "arch=dcgan"], 24.5),
}


def ensure_dataset(root: Path = DEBIAN_ROOT) -> None:
    """Install Debian's dataset-fashion-mnist when its files are missing (sudo -n if not root)."""
    if (root / "train-images-idx3-ubyte.gz").is_file():
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if shutil.which("apt-get") is None or (sudo and shutil.which("sudo") is None):
        raise UserError(
            f"Fashion-MNIST is not in {root} and apt-get{' or sudo' if sudo else ''} is not "
            "available; install dataset-fashion-mnist or set GAN_RUNNER_DATA to a folder "
            "holding fashion_mnist/FashionMNIST/raw"
        )
    install = [*sudo, "apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
    print(f"Installing Fashion-MNIST: {' '.join(install)}", flush=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if subprocess.run(install, **quiet).returncode != 0:  # stale package lists: update once
        subprocess.run([*sudo, "apt-get", "update", "-q"], **quiet)
        if subprocess.run(install, **quiet).returncode != 0:
            raise UserError(
                f"`{' '.join(install)}` failed (no root, no sudo without a password, or no "
                "Debian archive); install dataset-fashion-mnist yourself and run again"
            )


class TimedEvaluation(pl.Callback):
    """Scores the generator every `every_s` seconds of training and stops after `budget_s`."""

    def __init__(self, evaluation: Any, every_s: float, budget_s: float, seed: int) -> None:
        self.evaluation, self.every_s, self.budget_s = evaluation, every_s, budget_s
        self.seed = seed
        self.rows: list[dict[str, float]] = []
        self._trained_s, self._since = 0.0, 0.0
        self._next_s = 0.0
        self._stopped = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with isolate_rng():  # trains (or loads) the feature classifier and the real statistics
            self.evaluation.prepare(trainer.datamodule, pl_module.device)
        self._score(trainer, pl_module)  # the untrained generator: the top of the curve
        self._next_s, self._since = self.every_s, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._stopped:  # the stop's batch again, after a group (train.batches_per_step)
            return
        now = time.perf_counter()
        self._trained_s += now - self._since
        if self._trained_s >= min(self._next_s, self.budget_s):
            self._score(trainer, pl_module)
            self._next_s += self.every_s
            trainer.should_stop = trainer.should_stop or self._trained_s >= self.budget_s
            self._stopped = self._trained_s >= self.budget_s
        self._since = time.perf_counter()

    def _score(self, trainer: pl.Trainer, pl_module: Any) -> None:
        started = time.perf_counter()
        noise = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        with isolate_rng():
            values = self.evaluation.evaluate(pl_module, trainer.datamodule, noise)
        row = {
            "g_steps": pl_module.counters.g_steps,
            "train_minutes": round(self._trained_s / 60, 3),
            "eval_seconds": round(time.perf_counter() - started, 1),
            **values,
        }
        self.rows.append(row)
        fid = next(v for k, v in values.items() if k.startswith("fid_"))
        print(
            f"g_steps={row['g_steps']} {row['train_minutes']:.2f} min: FID {fid:.2f}", flush=True
        )


def inception(kind: str, n_fake: int, cache_dir: Path) -> FidelityEvaluation:
    """FID of n_fake EMA samples against all 10k test images, on the chosen Inception."""
    extractor = TorchScriptFeatures(str(fetch())) if kind == "torchscript" else InceptionFeatures()
    settings = {"split": "test", "batch_size": 50, "cache_dir": str(cache_dir)}
    return FidelityEvaluation(extractor, ["fid"], n_fake, show_progress=False, **settings)


def train_timed(
    cfg: DictConfig, curve: Any, final: Any, every_s: float, budget_s: float
) -> dict[str, Any]:
    """Train cfg for budget_s seconds of training time; the curve and the final scores."""
    run = assemble(cfg)
    clock = TimedEvaluation(curve, every_s, budget_s, int(cfg.seed))
    callbacks = [*run.callbacks, clock]  # compose_run's trainer.enable_progress_bar=false
    build_trainer(cfg, callbacks, []).fit(run.module, datamodule=run.datamodule)
    result: dict[str, Any] = {"rows": clock.rows, "curve_names": curve.names()}
    if final is not None:
        started = time.perf_counter()
        noise = torch.Generator(device=run.module.device).manual_seed(int(cfg.seed))
        with isolate_rng():
            result["final"] = final.evaluate(run.module, run.datamodule, noise)
        result["final_eval_minutes"] = round((time.perf_counter() - started) / 60, 1)
        result["provenance"] = final.provenance()
    else:
        result["provenance"] = curve.provenance()
    result["g_steps"] = run.module.counters.g_steps
    return result


def markdown(report: dict[str, Any]) -> str:
    """The recipes beside Lucic et al.'s Table 2, their curves, the protocol and the machine."""
    lines = [
        f"| recipe | gan-run overrides | {report['final_name']} | G steps | training min "
        "| load (start → end) | Lucic et al. 2018 (best of a large search) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["recipes"].items():
        final = entry.get("final", {}).get(report["final_name"])
        cell = f"**{final:.1f}**" if final is not None else "not scored"
        overrides = " ".join(RECIPES[name][0]) or "(the recipe as is)"
        minutes = entry["rows"][-1]["train_minutes"] if entry["rows"] else 0.0
        load = " → ".join(f"{value:.1f}" for value in entry.get("load_average_1m", [])) or "–"
        lines.append(
            f"| {name} | `{overrides}` | {cell} | {entry['g_steps']} | {minutes:.1f} "
            f"| {load} | {RECIPES[name][1]} |"
        )
    lines += ["", f"Curves ({report['curve_name']}, training minutes: FID):", ""]
    for name, entry in report["recipes"].items():
        points = [
            f"{r['train_minutes']:.1f}: {r[report['curve_name']]:.1f}" for r in entry["rows"]
        ]
        lines.append(f"- {name}: " + ", ".join(points))
    start, provenance = report["machine"], report.get("provenance", {})
    lines += [
        "",
        f"Command: `{report['command']}`; seed {report['seed']}; base recipe "
        f"`gan-run {' '.join(BASE)}` plus each row's overrides.",
        f"Extractor: {provenance.get('implementation', 'torch-fidelity')} Inception "
        f"{provenance.get('weights', '')} (sha256 {provenance.get('weights_sha256', '?')}…), "
        f"reference: the {provenance.get('n_real', '?')} {provenance.get('split', '')} images.",
        f"Machine: {start['platform']}, {start['cpu_count']} CPUs, torch {start['torch']} on "
        f"{start['torch_threads']} thread(s); load average (1 min) {start['load_average_1m']} at "
        f"the start, {report['machine_end']['load_average_1m']} at the end.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Each recipe's curve FID against training minutes, small enough to commit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=80)
    for name, entry in report["recipes"].items():
        rows = [row for row in entry["rows"] if row["g_steps"] > 0]  # log scale: no untrained
        ax.plot(
            [r["train_minutes"] for r in rows],
            [r[report["curve_name"]] for r in rows],
            marker="o",
            label=name,
        )
    ax.set_xlabel("training wall-clock (minutes, evaluation excluded)")
    ax.set_ylabel(report["curve_name"])
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Fashion-MNIST, DCGAN, one seed per loss")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gan_runner.bench.fashion",
        description="Inception FID of GAN losses on Fashion-MNIST for an equal CPU budget each, "
        "beside Lucic et al. 2018's Table 2.",
    )
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per recipe")
    parser.add_argument("--every", type=float, default=5.0, help="minutes between curve points")
    parser.add_argument("--curve-samples", type=int, default=1000, help="fakes per curve point")
    parser.add_argument("--fid-samples", type=int, default=10000, help="fakes of the final FID")
    parser.add_argument(
        "--extractor",
        choices=["torchscript", "torch_fidelity"],
        default="torchscript",
        help="the Inception's source (both TF 2015-12-05)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=os.environ.get("GAN_RUNNER_CACHE", ".cache/gan_runner"))
    parser.add_argument("--out", default="outputs/bench", help="folder for fashion.json/.md/.png")
    parser.add_argument("--no-install", action="store_true", help="never call apt-get")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other recipes of an earlier fashion.json in --out (same protocol only)",
    )
    parser.add_argument("overrides", nargs="*", help="gan-run overrides for every recipe")
    return parser.parse_args(argv)


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = {**report, "machine_end": machine()}
    (out / "fashion.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "fashion.md").write_text(markdown(report))
    plot(report, out / "fashion.png")


# What makes two reports' rows comparable: the same scores, seed and training budget, and the
# same Inception (both extractors give the metrics the same names).
PROTOCOL_KEYS = ("curve_name", "final_name", "seed", "minutes", "inception")


def merged(report: dict[str, Any], path: Path) -> dict[str, Any]:
    """report with an earlier report's recipes (those not about to be re-run) carried over."""
    if not path.is_file():
        return report
    try:
        earlier = json.loads(path.read_text())
        same = {key: earlier[key] for key in PROTOCOL_KEYS} == {
            key: report[key] for key in PROTOCOL_KEYS
        }
        provenance = earlier["provenance"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"--merge: {path} is not a fashion.json of this version") from None
    if not same:
        theirs = ", ".join(f"{key}={earlier[key]}" for key in PROTOCOL_KEYS)
        raise UserError(
            f"--merge: {path} was measured with {theirs}; run with the same --minutes, --seed, "
            "--curve-samples, --fid-samples and --extractor, or give another --out"
        )
    return {**report, "provenance": provenance, "recipes": dict(earlier["recipes"])}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    out = Path(args.out)
    try:
        if args.minutes <= 0 or args.every <= 0 or min(args.curve_samples, args.fid_samples) < 2:
            raise UserError(
                f"--minutes {args.minutes} and --every {args.every} must be > 0, --curve-samples "
                f"{args.curve_samples} and --fid-samples {args.fid_samples} >= 2"
            )
        if not args.no_install:
            ensure_dataset()
        curve = inception(args.extractor, args.curve_samples, Path(args.cache))
        final = inception(args.extractor, args.fid_samples, Path(args.cache))
        report: dict[str, Any] = {
            "command": "python -m gan_runner.bench.fashion " + " ".join(argv),
            "seed": args.seed,
            "machine": machine(),
            "recipes": {},
            "curve_name": curve.names()[0],
            "final_name": final.names()[0],
            "minutes": args.minutes,
            "inception": f"{args.extractor} {final.extractor.weights_hash()[:16]}",
        }
        if args.merge:
            report = merged(report, out / "fashion.json")
        for name in args.recipes:
            print(f"{name}: {args.minutes:g} training minutes", flush=True)
            overrides = [*BASE, *RECIPES[name][0], *args.overrides]
            load_start = machine()["load_average_1m"]
            with tempfile.TemporaryDirectory(prefix="gan_bench_fashion_") as workdir:
                cfg = compose_run("fashion_mnist", args.seed, overrides, Path(workdir))
                result = train_timed(cfg, curve, final, args.every * 60, args.minutes * 60)
            report["provenance"] = result.pop("provenance")
            # Each row's own: with --merge, rows come from different runs of this command.
            result["load_average_1m"] = [load_start, machine()["load_average_1m"]]
            result["measured"] = time.strftime("%Y-%m-%d %H:%M")
            report["recipes"][name] = result
            print(f"{name}: {result['final']}", flush=True)
            write(report, out)  # after each recipe: a later crash loses nothing before it
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown({**report, "machine_end": machine()}), end="")
    print(f"Written: {out / 'fashion.json'}, {out / 'fashion.md'}, {out / 'fashion.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
