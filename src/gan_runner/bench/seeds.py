"""What the seed benchmarks share (`bench-quality`, `bench-stacked`): seeds trained one at a time
or in spawned processes, mean ± standard error, the machine they ran on, the command line."""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import torch

from gan_runner.errors import UserError

Row = TypeVar("Row")


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error (sample std / sqrt(n)); no standard error for a single value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def stat_cell(stat: dict[str, Any], digits: int) -> str:
    """A {"mean", "se"} entry as a table cell: "m ± se", or "m" alone for one seed."""
    if stat["se"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['se']:.{digits}f}"


def machine() -> dict[str, Any]:
    """Where the times were measured: they only compare on the same machine and load."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def threads_per_seed(jobs: int, threads: int | None) -> int:
    """Each seed's torch threads: the process's own with one job, else the CPUs shared out."""
    if jobs <= 1:
        return torch.get_num_threads()
    return threads or max(1, (os.cpu_count() or 1) // jobs)


def train_all(
    train: Callable[..., Row],
    tasks: Sequence[tuple],
    jobs: int,
    share: int,
    reported: Callable[[Row], Row],
) -> list[Row]:
    """train(*task) for every task, in order; with jobs > 1 in that many spawned processes, each
    on `share` torch threads (spawned: no forked torch thread pools). Each result is reported
    as it arrives."""
    if jobs <= 1:
        return [reported(train(*task)) for task in tasks]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(share,)
    ) as pool:
        futures = [pool.submit(train, *task) for task in tasks]
        return [reported(future.result()) for future in futures]


def seed_parser(
    prog: str, description: str, default_seeds: int, files: str
) -> argparse.ArgumentParser:
    """The options every seed benchmark takes; callers add their own before parsing."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--seeds", type=int, default=default_seeds, help=f"seeds 0..N-1 (default {default_seeds})"
    )
    parser.add_argument("--seed-list", default=None, help="explicit seeds, e.g. 3,7")
    parser.add_argument("--out", default="outputs/bench", help=f"folder for {files}")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="seeds trained at once (each on CPUs / jobs threads)"
    )
    parser.add_argument("overrides", nargs="*", help="gan-run overrides, e.g. train.g_steps=100")
    return parser


def seeds_of(args: argparse.Namespace) -> list[int]:
    """--seed-list if given, else 0..--seeds−1; a bad value is one line; --jobs checked too."""
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give at least 1")
    if args.seed_list:
        try:
            return [int(seed) for seed in args.seed_list.split(",")]
        except ValueError:
            raise UserError(f"--seed-list {args.seed_list}: give integers, e.g. 0,3,7") from None
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: give at least 1")
    return list(range(args.seeds))
