"""Timed training runs of one config, through gan-run's trainer or the plain loop, interleaved."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from gan_runner.bench.plain import PlainLoop
from gan_runner.bench.plain_infogan import PlainInfoGANLoop
from gan_runner.bench.plain_stylegan import PlainStyleGANLoop
from gan_runner.cli import describe_error
from gan_runner.data.module import TensorData
from gan_runner.errors import UserError
from gan_runner.games.infogan import InfoGANGame
from gan_runner.games.stylegan import StyleGANGame
from gan_runner.train import assemble, build_trainer

T = TypeVar("T")


def compose_run(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """conf/train.yaml composed with overrides as `gan-run` would, writing into output_dir."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="gan_runner.conf", version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(f"bench: the overrides do not compose: {describe_error(error)}") from None
    finally:
        GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = os.getcwd()
        del cfg["hydra"]
    return cfg


@dataclass
class Window:
    """Wall time and work between two marks of a training run."""

    seconds: float
    d_steps: int
    g_steps: int
    batch_size: int

    @property
    def images_per_s(self) -> float:
        return self.d_steps * self.batch_size / self.seconds

    @property
    def g_steps_per_s(self) -> float:
        return self.g_steps / self.seconds


def now(device: torch.device) -> float:
    """The time once the device has finished the work queued so far."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Marks:
    """Times the batches after the `start`-th, up to the `stop`-th (one D step per batch)."""

    def __init__(self, start: int, stop: int, device: torch.device) -> None:
        self.start, self.stop, self.device = start, stop, device
        self.first: tuple[float, int, int] | None = None
        self.last: tuple[float, int, int] | None = None

    def __call__(self, d_steps: int, g_steps: int) -> None:
        if self.first is None and d_steps >= self.start:
            self.first = (now(self.device), d_steps, g_steps)
        elif self.first is not None and self.last is None and d_steps >= self.stop:
            self.last = (now(self.device), d_steps, g_steps)

    @property
    def done(self) -> bool:
        return self.last is not None

    def window(self, batch_size: int) -> Window:
        if self.first is None or self.last is None:
            raise RuntimeError(f"the run ended before batch {self.stop}")
        (t0, d0, g0), (t1, d1, g1) = self.first, self.last
        return Window(t1 - t0, d1 - d0, g1 - g0, batch_size)


class _MarkSteps(pl.Callback):
    """Hands the step counters to `marks` after every batch; ends the fit once they are done."""

    def __init__(self, marks: Marks) -> None:
        self.marks = marks

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.marks(pl_module.counters.d_steps, pl_module.counters.g_steps)
        if self.marks.done:
            trainer.should_stop = True


@dataclass(frozen=True)
class Variant:
    """One way to train a case: gan-run or the plain loop, with extra overrides and settings.

    Fast paths are overrides (`speed.channels_last=true`): assemble() applies the config's
    `speed` block to the players both sides train.
    """

    side: str  # "gan_run" or "plain"
    overrides: tuple[str, ...] = ()
    set_to_none: bool = True  # the plain loop's zero_grad; gan-run always sets to None
    env: tuple[tuple[str, str], ...] = ()  # environment variables set for the run only

    def describe(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "overrides": list(self.overrides),
            "set_to_none": self.set_to_none,
            "env": dict(self.env),
        }


def run_variant(
    variant: Variant, cfg: DictConfig, warmup: int, measure: int, device: torch.device
) -> Window:
    """Train `cfg` for warmup + measure batches (D steps); time the last `measure` of them."""
    return train_variant(variant, cfg, warmup, measure, device)[0]


def train_variant(
    variant: Variant, cfg: DictConfig, warmup: int, measure: int, device: torch.device
) -> tuple[Window, Any]:
    """As `run_variant`, and also the trained GANModule (whose parts the plain loop used)."""
    cfg = cfg.copy()
    with open_dict(cfg):  # only a fallback: the marks end the run
        cfg.train.g_steps = (warmup + measure) // int(cfg.n_critic) + 2
    gc.collect()
    run = assemble(cfg)
    marks = Marks(warmup, warmup + measure, device)
    batch_size = int(cfg.data.batch_size)
    with mock.patch.dict(os.environ, dict(variant.env)):  # restored after the run
        if variant.side == "plain":
            _run_plain(run, variant, batch_size, marks, device)
        else:
            trainer = build_trainer(cfg, [*run.callbacks, _MarkSteps(marks)], run.loggers)
            trainer.fit(run.module, datamodule=run.datamodule)
    return marks.window(batch_size), run.module


PLAIN_LOOPS = {StyleGANGame: PlainStyleGANLoop, InfoGANGame: PlainInfoGANLoop}
AUTOCAST = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16}


def _run_plain(run: Any, variant: Variant, batch_size: int, marks: Marks, device) -> None:
    precision = str(run.module.run_config["trainer"].get("precision"))
    if precision not in AUTOCAST:
        raise UserError(
            f"bench: the plain loop does trainer.precision=32-true or bf16-mixed, not {precision}"
        )
    run.datamodule.setup()
    data = run.datamodule.data
    labels = None if data.labels is None else data.labels.to(device)
    data = TensorData(data.samples.to(device), labels)
    # The bench names its families: StyleGAN2's four phases and InfoGAN's codes get plain loops
    # of their own.
    family = PLAIN_LOOPS.get(type(run.module.game), PlainLoop)
    loop = family(run.module, data, batch_size, device, variant.set_to_none, AUTOCAST[precision])
    while not marks.done:
        loop.step()
        marks(loop.d_steps, loop.g_steps)
    hand_back = getattr(loop, "hand_back", None)  # state kept outside the networks (pl_mean)
    if hand_back is not None:
        hand_back()


def interleave(runs: dict[str, Callable[[], T]], repeats: int) -> dict[str, list[T]]:
    """`repeats` rounds of every run; each round starts with the next one in turn (ABBA...)."""
    names, out = list(runs), {name: [] for name in runs}
    for index in range(repeats):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            out[name].append(runs[name]())
    return out


def summary(windows: list[Window]) -> dict[str, Any]:
    return {
        "images_per_s": statistics.median(w.images_per_s for w in windows),
        "g_steps_per_s": statistics.median(w.g_steps_per_s for w in windows),
        "runs_images_per_s": [round(w.images_per_s, 2) for w in windows],
    }


def _ratios(numerator: Sequence[Any], denominator: Sequence[Any]) -> list[float]:
    """Each round's throughput of one run over the other's (Windows or plain rates)."""

    def rate(x: Any) -> float:
        return x.images_per_s if isinstance(x, Window) else float(x)

    return [rate(a) / rate(b) for a, b in zip(numerator, denominator)]


def paired_ratio(numerator: Sequence[Any], denominator: Sequence[Any]) -> float:
    """Median over rounds of one run's throughput over the other's in the same round."""
    return statistics.median(_ratios(numerator, denominator))


def paired_ratio_ci(
    numerator: Sequence[Any], denominator: Sequence[Any], level: float = 0.95
) -> list[float] | None:
    """A bootstrap confidence interval of `paired_ratio` over the rounds (scipy's percentile
    method, as BCa degenerates on medians of few values; fixed seed), or None under 4 rounds:
    how far the median itself could move on this machine."""
    ratios = _ratios(numerator, denominator)
    if len(ratios) < 4:
        return None
    if max(ratios) == min(ratios):
        return [ratios[0], ratios[0]]
    from scipy.stats import bootstrap

    result = bootstrap(
        (ratios,),
        statistics.median,
        confidence_level=level,
        n_resamples=2000,
        method="percentile",
        random_state=0,
    )
    interval = result.confidence_interval
    return [round(float(interval.low), 4), round(float(interval.high), 4)]


def peak_memory_mib(
    variant: Variant, cfg: DictConfig, batches: int, device: torch.device, threads: int
) -> float:
    """Peak memory of building and training `batches` batches, above what was in use before.

    CUDA: allocated tensor memory. CPU: resident set size of a fresh process forked from a
    server that has imported everything: in this process RSS would still hold earlier runs.
    """
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run_variant(variant, cfg, 1, batches, device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    plain_cfg = OmegaConf.to_container(cfg, resolve=True)
    with context.Pool(1) as pool:
        return pool.apply(_child_peak_rss, (variant, plain_cfg, batches, threads))


def _child_peak_rss(variant: Variant, cfg: dict, batches: int, threads: int) -> float:
    torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    baseline = _max_rss_mib()  # imports done, nothing built
    run_variant(variant, OmegaConf.create(cfg), 1, batches, torch.device("cpu"))
    return _max_rss_mib() - baseline


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
