"""Shared fixtures: compose the real conf/ tree exactly as `gan-run` does, into a temp folder."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

os.environ.setdefault("WANDB_MODE", "disabled")
MOST_WORKERS = 8  # each worker holds its own torch and trained fixtures


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may run on: its affinity mask, under any cgroup v2 quota."""
    affinity = getattr(os, "sched_getaffinity", None)
    count = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no readable cgroup v2 limit: the affinity count stands
    return count


@pytest.hookimpl(optionalhook=True)  # pytest without xdist must still start
def pytest_xdist_auto_num_workers(config) -> int:
    """`make test`'s `-n auto`: one worker per usable CPU (every test runs one torch thread).

    xdist's own count takes psutil's physical cores (1 on a 2-vCPU machine) or the host's CPUs
    in a container held to fewer; PYTEST_XDIST_AUTO_NUM_WORKERS still overrides.
    """
    chosen = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "")
    return int(chosen) if chosen.isdigit() else min(usable_cpus(), MOST_WORKERS)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # The networks under test are tiny: on 2 shared cores, two intra-op threads measured up to
    # 10x slower than one (thread hand-off dominates the arithmetic). Session scope, so the
    # module-scoped fixtures that train checkpoints run on one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _metric_cache_in_tmp(tmp_path_factory, monkeypatch):
    # Classifier weights and real-image statistics are cached; tests must not write the repo's.
    monkeypatch.setenv("GAN_RUNNER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# A digits DCGAN small enough to train a checkpoint in seconds (for sampling/eval tests).
TINY_DIGITS = [
    "data=digits",
    "arch=dcgan",
    "data.resolution=8",
    "arch.generator.base_width=8",
    "arch.discriminator.base_width=8",
]

# Fast, quiet settings for training inside tests: CPU, no progress bar, no logger.
QUICK = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def options(group: str) -> list[str]:
    """Every option of a config group, found by globbing conf/<group>/*.yaml."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/train.yaml with overrides, with Hydra's runtime fields set as in a real run."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="gan_runner.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = str(REPO)
        del cfg["hydra"]
    return cfg


def compose_named(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose another primary config of conf/ (sample.yaml, eval.yaml) with overrides."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="gan_runner.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(autouse=True)
def _hydra_log_handlers_end_with_their_test():
    """An in-process gan-run lets Hydra bind root-logger handlers to this test's captured
    stdout; left behind, a later test's log line hits the closed stream ("Logging error")."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def call_console(
    entry: Callable[[], None], name: str, monkeypatch, capsys, *args: str
) -> tuple[int, str, str]:
    """A console entry point called in this process (no torch start-up cost per case)."""
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", [name, *args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code = 0
    try:
        entry()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """make_cfg("model=wgan_gp", "train.g_steps=5") -> a composed config writing into tmp_path."""

    def _make(*overrides: str, quick: bool = True) -> DictConfig:
        return compose_config([*(QUICK if quick else []), *overrides], tmp_path / "run")

    return _make


def game_of_recipe(recipe: str) -> type:
    """The Game class conf/model/<recipe>.yaml selects, read from plain YAML (no composing):
    its `override /game: <name>` entry, or the base config's adversarial game."""
    import importlib

    from omegaconf import OmegaConf

    chosen = "adversarial"
    for entry in OmegaConf.load(CONF / "model" / f"{recipe}.yaml").get("defaults", []):
        if isinstance(entry, dict | DictConfig) and "override /game" in entry:
            chosen = entry["override /game"]
    target = OmegaConf.load(CONF / "game" / f"{chosen}.yaml")["_target_"]
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)
