"""Metrics every N generator steps, named by protocol, with provenance and a best checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import time
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.seed import isolate_rng

from gan_runner.errors import UserError
from gan_runner.loggers import record_best
from gan_runner.metrics.base import Evaluation
from gan_runner.module import GANModule

log = logging.getLogger(__name__)

# A metric's first word says which way is better: fid_inception_10k_test -> lower. `score` is
# a ranking built to be maximised (score_2500: modes, then HQ%, then rKL; metrics.mixture).
LOWER_IS_BETTER = {
    "fid",
    "kid",
    "rkl",
    "jsd",  # density1d: jsd_10k, the Jensen-Shannon divergence to 1D data's exact density
    "kl",  # density1d: kl_data_model_10k, kl_model_data_10k
    "cycle",  # translation: cycle_l1_test, |F(G(a)) - a|
    "paired",  # translation: paired_l1_test, |G(a) - b|
    "reconstruction",  # metrics.encoder: reconstruction_ratio (EGr/EGr_b), reconstruction_mse
}
HIGHER_IS_BETTER = {
    "is",
    "precision",
    "recall",
    "density",
    "coverage",
    "modes",
    "hq",
    "parzen",
    "score",
    "accuracy",  # a critic's held-out classification accuracy (the semi-supervised GAN)
    "class",  # class_accuracy: conditional samples of the class they were asked for
    "label",  # translation: label_kept_test, G(a) keeps a's digit
    "domain",  # translation: domain_b_test, G(a) judged as domain B
    "probe",  # metrics.encoder: a linear probe's held-out accuracy on encoder features
}
PREFIXES = ("val/", "best/")
# Headlines kept to reproduce a paper, not to rank models: Parzen log-likelihood (Theis et al.
# 2016). Without best_metric, another evaluation's headline picks best.ckpt when there is one.
NOT_FOR_RANKING = {"parzen"}


def metric_name(name: str | None) -> str | None:
    """The bare metric name in `val/rkl_2500`, `best/rkl_2500` or `rkl_2500`; None for others.

    Other logs (`train/g_loss`) give None, so `best_metric` can follow `optimized_metric`.
    """
    if not name:
        return None
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return None if "/" in name else name


def headline(evaluations: Iterable[Any]) -> str | None:
    """The `primary` of the first evaluation whose headline ranks models, else of the first.

    metrics=[parzen,mixture] keeps best.ckpt by the mixture's score_2500, not by Parzen.
    """
    fallback = None
    for evaluation in evaluations:
        primary = getattr(evaluation, "primary", None)
        if primary is None:
            continue
        if primary.split("_")[0] not in NOT_FOR_RANKING:
            return primary
        fallback = fallback or primary
    return fallback


def infer_mode(name: str) -> str:
    """'min' or 'max' from a metric's first word (fid, kid, rkl: min; is, modes, score...: max)."""
    head = name.split("_")[0]
    if head in LOWER_IS_BETTER:
        return "min"
    if head in HIGHER_IS_BETTER:
        return "max"
    raise UserError(
        f"cannot tell whether {name} is better low or high; set callbacks.metrics.best_mode "
        "to min or max"
    )


class LiveView:
    """A GANModule as evaluations see it with the live generator in place of the EMA copy."""

    sample = GANModule.sample
    fixed_samples = GANModule.fixed_samples

    def __init__(self, module: GANModule) -> None:
        self.module = module

    def __getattr__(self, name: str) -> Any:
        if name == "module":  # not yet set (copy, pickle): never recurse
            raise AttributeError(name)
        return getattr(self.module, name)

    @property
    def sampling_generator(self) -> torch.nn.Module:
        return self.module.generator


class EvaluateMetrics(pl.Callback):
    """Runs the `metrics` evaluations every `every` generator steps and at the end of training.

    Logs `val/<name>` (and `val_live/<name>` with `also_live`) at step = generator steps, appends
    values and provenance to `results_path` (JSONL), and saves `<dirpath>/best.ckpt` whenever
    `best_metric` improves. `best_metric` is bare (`rkl_2500`) or as logged (`val/...`,
    `best/...`); null, or another log such as `train/g_loss`, falls back to the first
    evaluation's `primary`, its headline number (the 2D protocol: `score_2500`, which ranks all
    modes first, then HQ%, then rKL; images: FID), skipping Parzen's when another has one.
    Each evaluation draws from its own generator, seeded (seed + index) per rank, inside
    `isolate_rng`, so turning metrics on leaves the training trajectory bit for bit unchanged.
    Under DDP every rank evaluates: each draws its share of the samples and the evaluations
    gather them (metrics.base), so every rank computes and logs the value over all n samples.
    """

    def __init__(
        self,
        evaluations: Mapping[str, Evaluation] | None = None,
        every: int = 1000,
        seed: int = 0,
        use_ema: bool = True,
        also_live: bool = False,
        best_metric: str | None = None,
        best_mode: str | None = None,
        dirpath: str = "checkpoints",
        results_path: str = "metrics.jsonl",
    ) -> None:
        if every < 0:
            raise ValueError(f"every must be >= 0 (0: only at the end), got {every}")
        if best_mode not in (None, "min", "max"):
            raise ValueError(f"best_mode must be min, max or null, got {best_mode!r}")
        self.evaluations = dict(evaluations or {})
        self.every, self.seed, self.use_ema, self.also_live = every, seed, use_ema, also_live
        self.best_metric = metric_name(best_metric) or headline(self.evaluations.values())
        self.best_mode = best_mode or (infer_mode(self.best_metric) if self.best_metric else None)
        self.dirpath, self.results_path = Path(dirpath), Path(results_path)
        self.best_value: float | None = None
        self.best_g_steps: int | None = None
        self._evaluated_at = -1

    @property
    def best_path(self) -> Path:
        return self.dirpath / "best.ckpt"

    # ----------------------------------------------------------------- schedule
    def on_train_start(self, trainer: pl.Trainer, pl_module: GANModule) -> None:
        self._check_best_metric()
        # Reference statistics, extractor weights, held-out data: a missing file or split fails
        # now, not after the first `every` steps. Some train a classifier: isolate its RNG use.
        with isolate_rng():
            for evaluation in self.evaluations.values():
                if hasattr(evaluation, "prepare"):
                    evaluation.prepare(trainer.datamodule, pl_module.device)
        _publish(trainer, self._best())  # after a resume, best/ is known before any evaluation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The run's last batch evaluates here, so last.ckpt and best.ckpt saved after it hold
        # a mid-epoch state that continues exactly (see GStepCheckpoint).
        g_steps = pl_module.counters.g_steps
        due = (self.every and g_steps % self.every == 0) or trainer.should_stop
        if g_steps and due and g_steps != self._evaluated_at:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: GANModule) -> None:
        if pl_module.counters.g_steps != self._evaluated_at:
            self.run(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_metric": self.best_metric,
            "best_value": self.best_value,
            "best_g_steps": self.best_g_steps,
            "evaluated_at": self._evaluated_at,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._evaluated_at = state_dict["evaluated_at"]
        if state_dict["best_metric"] == self.best_metric:  # a new metric starts a new record
            self.best_value, self.best_g_steps = (
                state_dict["best_value"],
                state_dict["best_g_steps"],
            )

    # ----------------------------------------------------------------- evaluation
    def run(self, trainer: pl.Trainer, pl_module: GANModule) -> dict[str, float]:
        """Evaluate now on every rank (evaluations may sync); log, record and keep the best."""
        g_steps = self._evaluated_at = pl_module.counters.g_steps
        if not self.evaluations:
            return {}
        if getattr(pl_module.sampling_generator, "growing", False):
            # A growing generator (progressive growing) draws below the data's resolution:
            # scores against full-resolution data would measure the resolution, not the model.
            if trainer.global_rank == 0:
                log.info(
                    "metrics at g_steps=%d skipped: the generator is still growing (%s); they "
                    "start once it reaches the data's resolution",
                    g_steps,
                    pl_module.sampling_generator.stage_name,
                )
            return {}
        started, rank_zero = time.perf_counter(), trainer.global_rank == 0
        if rank_zero:
            log.info("metrics at g_steps=%d: %s ...", g_steps, ", ".join(self.evaluations))
        with isolate_rng():  # training's global RNG streams continue as if nothing ran
            values, provenance = self._evaluate(trainer, pl_module)
        improved = self._update_best(trainer, values, g_steps)
        logged = {**values, **self._best()}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=g_steps)
        _publish(trainer, logged)
        seconds = time.perf_counter() - started
        if rank_zero:
            self._record(pl_module, values, provenance, seconds)
            shown = ", ".join(f"{k}={_shown(v)}" for k, v in values.items())
            kimg = pl_module.counters.images_seen / 1000
            best = f"; best {self.best_metric} so far: {self.best_path}" if improved else ""
            log.info(
                f"metrics at g_steps={g_steps} ({kimg:.1f} kimg): {shown} [{seconds:.1f} s]{best}"
            )
        return values

    def _views(self, module: GANModule) -> list[tuple[str, Any]]:
        has_ema = getattr(module, "generator_ema", None) is not None
        views = [("val", module if self.use_ema or not has_ema else LiveView(module))]
        if self.also_live and self.use_ema and has_ema:
            views.append(("val_live", LiveView(module)))
        return views

    def _evaluate(self, trainer, module) -> tuple[dict[str, float], dict[str, Any]]:
        values: dict[str, float] = {}
        provenance: dict[str, Any] = {}
        for index, (name, evaluation) in enumerate(self.evaluations.items()):
            for prefix, view in self._views(module):
                # Per rank, like the training noise, so ranks that split a sample count differ;
                # the same seed at every evaluation, so the curve tracks the generator only.
                seed = (self.seed + index) * trainer.world_size + trainer.global_rank
                generator = torch.Generator(device=module.device).manual_seed(seed)
                result = evaluation.evaluate(view, trainer.datamodule, generator)
                for key, value in result.items():
                    if f"{prefix}/{key}" in values:
                        raise UserError(f"metrics.{name} computes {key}, as another one does")
                    values[f"{prefix}/{key}"] = float(value)
            provenance[name] = evaluation.provenance()
        return values, provenance

    # ----------------------------------------------------------------- best checkpoint
    def _check_best_metric(self) -> None:
        if not self.evaluations or self.best_metric is None:
            return
        if not all(hasattr(e, "names") for e in self.evaluations.values()):
            return  # names known only after evaluating: checked then
        known = [n for e in self.evaluations.values() for n in e.names()]
        if self.best_metric not in known:
            self._unknown_best_metric(known)

    def _unknown_best_metric(self, known: list[str]) -> None:
        raise UserError(
            f"best metric {self.best_metric} (callbacks.metrics.best_metric or optimized_metric) "
            f"is not computed by metrics=[{','.join(self.evaluations)}]; choose one of: "
            f"{', '.join(known)}"
        )

    def _update_best(self, trainer: pl.Trainer, values: dict[str, float], g_steps: int) -> bool:
        if self.best_metric is None:
            return False
        if f"val/{self.best_metric}" not in values:
            self._unknown_best_metric([k.removeprefix("val/") for k in values if k[:4] == "val/"])
        value = values[f"val/{self.best_metric}"]
        better = math.isfinite(value) and (
            self.best_value is None
            or (value < self.best_value if self.best_mode == "min" else value > self.best_value)
        )
        # Every rank scored the same gathered samples, so the values agree; saving is
        # collective, so rank 0's decision is still broadcast, lest a last-bit difference in
        # some kernel leave one rank waiting in save_checkpoint for the others.
        better, value = trainer.strategy.broadcast((better, value), src=0)
        if better:
            self.best_value, self.best_g_steps = value, g_steps
            trainer.save_checkpoint(self.best_path, weights_only=False)  # atomic IO plugin
            record_best(trainer.loggers, self.best_metric, value, g_steps)
        return better

    def _best(self) -> dict[str, float]:
        if self.best_value is None:
            return {}
        return {f"best/{self.best_metric}": self.best_value, "best/g_steps": self.best_g_steps}

    # ----------------------------------------------------------------- records
    def _record(self, module, values: dict, provenance: dict, seconds: float) -> None:
        has_ema = getattr(module, "generator_ema", None) is not None
        line = {
            "g_steps": module.counters.g_steps,
            "kimg": module.counters.images_seen / 1000,
            "generator": "ema" if has_ema and self.use_ema else "live",
            "seed": self.seed,
            "values": values,
            "best": {
                "metric": self.best_metric,
                "value": self.best_value,
                "g_steps": self.best_g_steps,
            },
            "seconds": round(seconds, 3),
            "provenance": provenance,
            "versions": library_versions(),
        }
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.results_path, "a") as handle:
            handle.write(json.dumps(line, default=str) + "\n")


def _publish(trainer: pl.Trainer, values: dict[str, float]) -> None:
    # train() returns callback_metrics (and optimized_metric reads it): float64, so a sweeper
    # gets exactly the value recorded in the JSONL.
    trainer.callback_metrics.update(
        {k: torch.tensor(float(v), dtype=torch.float64) for k, v in values.items()}
    )


def _shown(value: float) -> str:
    # 4 significant digits, but never an exponent for a score in the thousands (grid25's
    # score_2500 = 25097.5: 25 modes, HQ 97%), whose integer part must stay readable.
    return f"{value:.1f}" if 1e3 <= abs(value) < 1e7 else f"{value:.4g}"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("gan-runner", "torch", "lightning", "torchmetrics", "torch-fidelity"):
        with contextlib.suppress(PackageNotFoundError):  # record what is installed
            versions[package] = version(package)
    return versions
