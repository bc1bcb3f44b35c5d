"""The 2D quality harness (`make bench-quality`): per-seed rows, their aggregation, the files.

Runs are tiny (a few G steps of narrow players): these tests check the harness, never the
quality target, which `make bench-quality` measures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest

from gan_runner.bench.quality import SeedRow, main, run, summarize
from gan_runner.train import train

TINY = [
    "train.g_steps=15",
    "arch.generator.hidden=[16,16]",
    "arch.discriminator.hidden=[16,16]",
    "data.source.n_samples=4096",
]


def row(seed: int, modes: int, hq: float, rkl: float, seconds: float) -> SeedRow:
    return SeedRow("ring8", seed, 8, modes, hq, rkl, seconds, 100)


def test_summary_is_mean_and_standard_error_over_seeds() -> None:
    rows = [row(0, 8, 96.0, 0.01, 100.0), row(1, 8, 98.0, 0.03, 120.0), row(2, 7, 97.0, 0.02, 200)]
    entry = summarize(rows)["ring8"]
    assert entry["modes"]["mean"] == pytest.approx(23 / 3)
    # s.e. = sample std / sqrt(n): HQ 96, 98, 97 has std 1, so s.e. 1/sqrt(3)
    assert entry["hq_percent"]["se"] == pytest.approx(1 / math.sqrt(3))
    assert entry["rkl"]["mean"] == pytest.approx(0.02)
    assert entry["min_modes"] == 7 and entry["max_seconds"] == 200
    checks = entry["checks"]
    assert not checks["all_modes_every_seed"] and not checks["seconds_per_seed_under_180"]
    assert checks["hq_percent_at_least_95"] and checks["rkl_at_most_0.03"]
    assert not entry["passed"]
    assert summarize(rows[:2])["ring8"]["passed"]


def test_the_drs_row_is_summarized_apart_and_never_decides_the_verdict() -> None:
    def with_drs(r: SeedRow, hq: float) -> SeedRow:
        return dataclasses.replace(
            r, drs_modes=8, drs_hq_percent=hq, drs_rkl=0.01, drs_acceptance=0.7
        )

    rows = [with_drs(row(0, 8, 90.0, 0.01, 100.0), 97.0), with_drs(row(1, 8, 92.0, 0.01, 90), 99)]
    entry = summarize(rows)["ring8"]
    assert entry["drs"]["hq_percent"] == {"mean": 98.0, "se": pytest.approx(1.0)}
    assert all(entry["drs"]["checks"].values())
    assert not entry["passed"]  # the generator's HQ (91%) decides, not the sampler's
    assert "drs" not in summarize([row(0, 8, 90.0, 0.01, 100.0)])["ring8"]


def test_a_critic_without_a_density_ratio_gets_no_drs_row() -> None:
    from types import SimpleNamespace

    from gan_runner.bench.quality import drs_scores
    from gan_runner.objectives import Hinge

    hinge_model = SimpleNamespace(game=SimpleNamespace(objective=Hinge()))
    assert drs_scores(hinge_model, source=None, seed=0) == {}


def test_single_seed_has_no_standard_error() -> None:
    entry = summarize([row(4, 8, 90.0, 0.5, 10.0)])["ring8"]
    assert entry["hq_percent"] == {"mean": 90.0, "se": None}
    assert entry["seeds"] == [4]


def test_harness_trains_seeds_and_writes_its_report(tmp_path) -> None:
    report = run(["ring8"], [0, 1], TINY, tmp_path / "bench")
    rows = report["rows"]
    assert [(r["data"], r["seed"], r["g_steps"], r["n_modes"]) for r in rows] == [
        ("ring8", 0, 15, 8),
        ("ring8", 1, 15, 8),
    ]
    entry = report["summary"]["ring8"]
    for key in ("modes", "hq_percent", "rkl", "seconds"):
        a, b = (float(r[key]) for r in rows)
        # Two values: mean (a+b)/2, sample std |a-b|/sqrt(2), so s.e. |a-b|/2.
        assert entry[key]["mean"] == pytest.approx((a + b) / 2)
        assert entry[key]["se"] == pytest.approx(abs(a - b) / 2)
    assert entry["min_modes"] == min(r["modes"] for r in rows)
    assert json.loads((tmp_path / "bench" / "quality.json").read_text()) == report
    table = (tmp_path / "bench" / "quality.md").read_text()
    assert f"| ring8 | 2 | 15 | {entry['modes']['mean']:.2f} ± " in table
    assert "PacGAN4 (published)" in table and "load average" in table
    # The same models through discriminator rejection sampling, as their own row.
    assert all(0 < r["drs_acceptance"] <= 1 and r["drs_modes"] >= 0 for r in rows)
    assert "| ring8 + DRS (γ at the 5th percentile, keeps " in table


def test_seeds_trained_in_parallel_processes_match_serial_ones(tmp_path) -> None:
    # --jobs 2: spawned workers on one thread each must train exactly what the serial loop does.
    def scores(report):
        return [
            (r["data"], r["seed"], r["modes"], r["hq_percent"], r["rkl"]) for r in report["rows"]
        ]

    serial = run(["ring8", "grid25"], [5], TINY, tmp_path / "serial")
    parallel = run(["ring8", "grid25"], [5], TINY, tmp_path / "parallel", jobs=2, threads=1)
    assert scores(parallel) == scores(serial)
    assert {r["worker_pid"] for r in serial["rows"]} == {os.getpid()}
    assert os.getpid() not in {r["worker_pid"] for r in parallel["rows"]}  # spawned workers
    assert parallel["jobs"] == 2 and parallel["threads_per_seed"] == 1
    assert (
        "2 seed(s) at a time, each on 1 thread(s)"
        in (tmp_path / "parallel" / "quality.md").read_text()
    )


def test_harness_scores_like_gan_runs_final_evaluation(make_cfg, tmp_path) -> None:
    # The same seed and overrides through train(): its last val/ numbers are the harness's row.
    (seeded,) = run(["ring8"], [3], TINY, tmp_path / "bench")["rows"]
    metrics = train(make_cfg("data=ring8", "seed=3", *TINY))
    assert metrics["val/modes_2500"] == seeded["modes"]
    assert metrics["val/hq_percent_2500"] == pytest.approx(seeded["hq_percent"])
    assert metrics["val/rkl_2500"] == pytest.approx(seeded["rkl"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "mnist"], "--data mnist: choose from ring8, grid25"),
        (["--seeds", "0"], "--seeds 0: give at least 1"),
        (["--jobs", "0"], "--jobs 0: give at least 1"),
        (["--seed-list", "1,x"], "--seed-list 1,x: give integers"),
        (["--seeds", "1", "train.g_stepz=3"], "train.g_stepz"),
    ],
)
def test_bad_arguments_end_in_one_line(capsys, tmp_path, args, message) -> None:
    assert main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
