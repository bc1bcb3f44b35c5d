"""`make test`'s worker count (tests/conftest.py): one per CPU the process may use, no more."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import conftest
from conftest import MOST_WORKERS, pytest_xdist_auto_num_workers, usable_cpus


@pytest.fixture
def four_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


def test_a_cgroup_quota_caps_the_affinity_count(tmp_path, four_cpus) -> None:
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs of time: two workers, not four
    assert usable_cpus(quota) == 2
    quota.write_text("20000 100000\n")  # a fifth of a CPU still runs one
    assert usable_cpus(quota) == 1
    quota.write_text("max 100000\n")  # no quota: the affinity mask decides
    assert usable_cpus(quota) == 4
    assert usable_cpus(tmp_path / "absent") == 4
    quota.write_text("garbage")
    assert usable_cpus(quota) == 4


def test_auto_workers_are_capped_and_the_environment_overrides(monkeypatch) -> None:
    monkeypatch.setattr(conftest, "usable_cpus", lambda: 64)
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    assert pytest_xdist_auto_num_workers(None) == MOST_WORKERS
    monkeypatch.setattr(conftest, "usable_cpus", lambda: 2)
    assert pytest_xdist_auto_num_workers(None) == 2
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "3")
    assert pytest_xdist_auto_num_workers(None) == 3


def test_pytest_without_xdist_still_collects_the_suite() -> None:
    # The worker hook is xdist's: without the plugin, pytest must not refuse it as unknown.
    here = Path(__file__)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider",
         "--collect-only", "-q", str(here)],
        cwd=here.parents[1], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and "3 tests collected" in done.stdout, done.stdout + done.stderr
