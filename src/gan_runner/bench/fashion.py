"""`make bench-fashion`: classifier-FID of a Fashion-MNIST recipe against training time.

Trains `gan-run experiment=dcgan_fashion_mnist` (or the overrides given) for a fixed budget of
training wall-clock, scoring the EMA generator with the data set's own classifier features
(conf/metrics/classifier.yaml: FID of 2,000 fakes against the training set) at fixed intervals
of training time; evaluation time is kept off the clock. Inception FID is added at the end when
its weights are on disk (on a CPU it costs tens of minutes). Writes fashion.json, fashion.md
and fashion.png under the output folder.
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
from hydra.utils import instantiate
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import DictConfig

from gan_runner.bench.quality import compose_run, machine
from gan_runner.errors import UserError
from gan_runner.metrics.extractors import InceptionFeatures
from gan_runner.metrics.fidelity import FidelityEvaluation
from gan_runner.train import assemble, build_trainer

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
RECIPE = ["experiment=dcgan_fashion_mnist", "metrics=[classifier]", "train.g_steps=1000000"]


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

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with isolate_rng():  # trains (or loads) the feature classifier and the real statistics
            self.evaluation.prepare(trainer.datamodule, pl_module.device)
        self._score(trainer, pl_module)  # the untrained generator: the top of the curve
        self._next_s, self._since = self.every_s, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self._trained_s += now - self._since
        if self._trained_s >= min(self._next_s, self.budget_s):
            self._score(trainer, pl_module)
            self._next_s += self.every_s
            trainer.should_stop = trainer.should_stop or self._trained_s >= self.budget_s
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


def inception_weights() -> Path | None:
    """The 2015-12-05 InceptionV3 weights in torch's hub cache, if they are there."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    path = hub / "weights-inception-2015-12-05-6726825d.pth"
    return path if path.is_file() else None


def train_timed(cfg: DictConfig, every_s: float, budget_s: float) -> dict[str, Any]:
    """Train `cfg` for budget_s seconds of training time; the FID curve and the final module."""
    evaluation = instantiate(cfg.metrics.classifier, show_progress=False)
    run = assemble(cfg)
    clock = TimedEvaluation(evaluation, every_s, budget_s, int(cfg.seed))
    callbacks = [*run.callbacks, clock]  # compose_run's trainer.enable_progress_bar=false
    build_trainer(cfg, callbacks, []).fit(run.module, datamodule=run.datamodule)
    result: dict[str, Any] = {"rows": clock.rows, "names": evaluation.names()}
    result["provenance"] = evaluation.provenance()
    weights = inception_weights()
    if weights is not None:
        inception = FidelityEvaluation(
            InceptionFeatures(str(weights)),
            metrics=["fid"],
            n_fake=10000,
            cache_dir=cfg.metrics.classifier.cache_dir,
            show_progress=False,
        )
        noise = torch.Generator(device=run.module.device).manual_seed(int(cfg.seed))
        with isolate_rng():
            result["inception"] = inception.evaluate(run.module, run.datamodule, noise)
    return result


def markdown(report: dict[str, Any]) -> str:
    """The FID curve as a Markdown table, with the recipe and the machine it ran on."""
    fid = next(name for name in report["names"] if name.startswith("fid_"))
    lines = [f"| G steps | training minutes | {fid} |", "|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['g_steps']} | {row['train_minutes']:.1f} | {row[fid]:.2f} |")
    for name, value in report.get("inception", {}).items():
        lines.append(f"\nAt the end: {name} = {value:.2f}.")
    start = report["machine"]
    lines += [
        "",
        f"Recipe: `gan-run {' '.join(report['overrides'])}`; feature classifier's held-out "
        f"accuracy {report['provenance'].get('classifier_accuracy', float('nan')):.3f}.",
        f"Machine: {start['platform']}, {start['cpu_count']} CPUs, torch {start['torch']} on "
        f"{start['torch_threads']} thread(s); load average (1 min) {start['load_average_1m']} at "
        f"the start, {report['machine_end']['load_average_1m']} at the end.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """FID against training minutes, small enough to commit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fid = next(name for name in report["names"] if name.startswith("fid_"))
    rows = [row for row in report["rows"] if row["g_steps"] > 0]  # log scale: skip the untrained
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    ax.plot([r["train_minutes"] for r in rows], [r[fid] for r in rows], marker="o")
    ax.set_xlabel("training wall-clock (minutes, evaluation excluded)")
    ax.set_ylabel(fid)
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.set_title("Fashion-MNIST: " + " ".join(o for o in report["overrides"] if "=" in o)[:60])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gan_runner.bench.fashion",
        description="Classifier-FID of a Fashion-MNIST recipe against training wall-clock.",
    )
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget")
    parser.add_argument("--every", type=float, default=1.5, help="minutes between evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/bench", help="folder for fashion.json/.md/.png")
    parser.add_argument("--no-install", action="store_true", help="never call apt-get")
    parser.add_argument("overrides", nargs="*", help="gan-run overrides after the recipe's")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.minutes <= 0 or args.every <= 0:
            raise UserError(f"--minutes {args.minutes} and --every {args.every} must be > 0")
        if not args.no_install:
            ensure_dataset()
        overrides = [*RECIPE, "metrics.classifier.metrics=[fid]", *args.overrides]
        start = machine()
        with tempfile.TemporaryDirectory(prefix="gan_bench_fashion_") as workdir:
            cfg = compose_run("fashion_mnist", args.seed, overrides, Path(workdir))
            result = train_timed(cfg, args.every * 60, args.minutes * 60)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = {"overrides": overrides, "machine": start, "machine_end": machine(), **result}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fashion.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "fashion.md").write_text(markdown(report))
    plot(report, out / "fashion.png")
    print(markdown(report), end="")
    print(f"Written: {out / 'fashion.json'}, {out / 'fashion.md'}, {out / 'fashion.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
