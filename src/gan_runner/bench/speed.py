"""`make bench`: gan-run's training speed against a plain PyTorch loop, and each fast path.

Every comparison trains the same composed config both ways in this process, in interleaved
rounds after untimed warm-up runs, and reports medians and the median of the
per-round ratios: on a shared machine only ratios of neighbouring runs are worth much.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from gan_runner.bench.timing import (
    Variant,
    compose_run,
    interleave,
    paired_ratio,
    paired_ratio_ci,
    peak_memory_mib,
    run_variant,
    summary,
)
from gan_runner.errors import UserError

# Both sides: no callbacks (EMA, samples, metrics, checkpoints), no logger, no progress bar.
BASE = (
    "callbacks=none",
    "logger=none",
    "metrics=[]",
    "trainer.enable_progress_bar=false",
    "trainer.devices=1",
)
SYNTHETIC = {"_target_": "gan_runner.bench.sources.SyntheticImages", "n": 10000}


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration: what it trains and the overrides that compose it."""

    name: str
    what: str
    overrides: tuple[str, ...]
    synthetic: bool = False  # CIFAR-10's shape from SyntheticImages (no CIFAR files here)
    only: str | None = None  # "cuda" where it only means something on a GPU


CASES = {
    case.name: case
    for case in (
        # Pinned to the players, latent and batch measured in the README's table (grid25's
        # default 2D recipe is narrower, batches 1024 and draws islands since;
        # conf/_mixture2d/recipe.yaml).
        Case(
            "mlp_grid25",
            "MLP 3×512 (BatchNorm G), non-saturating, Adam, batch 256",
            (
                "data=grid25",
                "arch.generator.hidden=[512,512,512]",
                "arch.discriminator.hidden=[512,512,512]",
                "data.batch_size=256",
                "z_dim=64",
                "latent=normal",
                "optimizer=adam",
                "schedule=constant",
                "regularizer=[]",
            ),
        ),
        # Where the framework's per-batch work is a large share of a few-ms batch: the case that
        # shows what the loop's fast paths (batches per step, direct steps) are worth.
        Case(
            "mlp_small",
            "MLP 2×64 (BatchNorm G), non-saturating, Adam, batch 64",
            (
                "data=grid25",
                "arch.generator.hidden=[64,64]",
                "arch.discriminator.hidden=[64,64]",
                "data.batch_size=64",
                "z_dim=16",
                "latent=normal",
                "optimizer=adam",
                "schedule=constant",
                "regularizer=[]",
            ),
        ),
        Case(
            "dcgan32_wgan_gp",
            "DCGAN 32×32 RGB, WGAN-GP (λ=10, layer-norm critic), Adam",
            ("model=wgan_gp", "arch=dcgan", "data=cifar10"),
            synthetic=True,
        ),
        Case("dcgan_digits", "DCGAN recipe on digits 16×16", ("model=dcgan", "data=digits")),
        Case(
            "infogan_digits",
            "InfoGAN recipe (10-way + 2 continuous codes, Q head on the critic) on digits 16×16",
            ("model=infogan", "data=digits"),
        ),
        Case(
            "sagan_digits",
            "SAGAN recipe (attention, SN in both, TTUR) on digits 16×16, widths 32, batch 64",
            (
                "model=sagan",
                "data=digits",
                "arch.generator.width=32",
                "arch.discriminator.width=32",
                "data.batch_size=64",
            ),
        ),
        Case(
            "biggan_digits",
            "BigGAN recipe (hierarchical z, SN in both, ortho, 2 D steps) on digits 16×16, ch 16",
            (
                "model=biggan",
                "data=digits",
                "arch.generator.width=16",
                "arch.discriminator.width=16",
            ),
        ),
        Case(
            "stylegan2_digits",
            "StyleGAN2 recipe (4 phases, lazy R1 and path length, mixing 0.9) on digits 16×16, "
            "tiny widths",
            (
                "model=stylegan2",
                "data=digits",
                "z_dim=64",
                "arch.generator.w_dim=64",
                "arch.generator.channel_base=512",  # 32 channels at every resolution
                "arch.generator.channel_max=32",
                "arch.discriminator.channel_base=512",
                "arch.discriminator.channel_max=32",
                "data.batch_size=32",
            ),
        ),
        Case(
            "dcgan32_wgan_gp_bf16",
            "as dcgan32_wgan_gp in bf16-mixed (penalty in float32)",
            ("model=wgan_gp", "arch=dcgan", "data=cifar10", "trainer.precision=bf16-mixed"),
            synthetic=True,
            only="cuda",
        ),
    )
}


def case_config(
    case: Case, device: torch.device, workdir: Path, extra: tuple[str, ...] = ()
) -> DictConfig:
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    overrides = [*BASE, f"trainer.accelerator={accelerator}", *case.overrides, *extra]
    cfg = compose_run(overrides, workdir / case.name)
    if case.synthetic:
        with open_dict(cfg):
            cfg.data.source = dict(SYNTHETIC)
    return cfg


@dataclass
class Plan:
    """How long and how often to measure."""

    device: torch.device
    workdir: Path
    # Timed rounds of a gan-run / plain comparison: single rounds on a shared 2-core machine
    # scatter by ±3%, so the median needs more than 5 to resolve a 3% target.
    repeats: int = 9
    target_s: float = 3.0  # length of one timed window
    ablation_repeats: int = 4
    ablation_target_s: float = 2.0
    budget_s: float = 100.0  # slow runs get fewer rounds (3 at least) to stay near this
    memory: bool = True
    threads: int = 1
    overrides: tuple[str, ...] = ()  # appended to every case's overrides
    batch_seconds: dict[str, float] = field(default_factory=dict)  # calibration, per case


def windows(n_critic: int, seconds_per_batch: float, target_s: float) -> tuple[int, int]:
    """Warm-up and timed batches: whole n_critic cycles lasting about `target_s`."""
    cycles = max(1, round(target_s / (seconds_per_batch * n_critic)))
    measure = cycles * n_critic
    return max(2, measure // 5), measure


def compare(
    plan: Plan, case: Case, before: Variant, after: Variant, target_s: float, repeats: int
) -> dict[str, Any]:
    """Interleaved timed rounds of two variants of a case, after one short warm-up run each."""
    cfgs = {
        variant: case_config(case, plan.device, plan.workdir, plan.overrides + variant.overrides)
        for variant in (before, after)
    }
    n_critic = int(cfgs[before].n_critic)
    first = run_variant(before, cfgs[before], 2, n_critic, plan.device)
    run_variant(after, cfgs[after], 2, n_critic, plan.device)
    per_batch = plan.batch_seconds.setdefault(case.name, first.seconds / first.d_steps)
    warmup, measure = windows(n_critic, per_batch, target_s)
    run_s = (warmup + measure) * per_batch + 1.0  # and about a second to build and set up
    rounds = min(repeats, max(3, int(plan.budget_s / (2 * run_s))))
    runs = {
        name: lambda v=variant: run_variant(v, cfgs[v], warmup, measure, plan.device)
        for name, variant in (("before", before), ("after", after))
    }
    timed = interleave(runs, rounds)
    return {**timed, "warmup_batches": warmup, "timed_batches": measure}


def speed_case(plan: Plan, case: Case) -> dict[str, Any]:
    """One case trained through gan-run and through the plain loop."""
    plain, gan_run = Variant("plain"), Variant("gan_run")
    runs = compare(plan, case, plain, gan_run, plan.target_s, plan.repeats)
    cfg = case_config(case, plan.device, plan.workdir, plan.overrides)
    warmup, measure = runs["warmup_batches"], runs["timed_batches"]
    peak = {"plain": None, "gan_run": None}
    if plan.memory:
        batches = warmup + measure
        peak = {
            v.side: peak_memory_mib(v, cfg, batches, plan.device, plan.threads)
            for v in (plain, gan_run)
        }
    return {
        "case": case.name,
        "what": case.what,
        "overrides": [*BASE, *case.overrides, *plan.overrides]
        + (["data.source=SyntheticImages"] * case.synthetic),
        "batch_size": int(cfg.data.batch_size),
        "n_critic": int(cfg.n_critic),
        "warmup_batches": warmup,
        "timed_batches": measure,
        "plain": summary(runs["before"]),
        "gan_run": summary(runs["after"]),
        "ratio": paired_ratio(runs["after"], runs["before"]),
        "ratio_ci95": paired_ratio_ci(runs["after"], runs["before"]),
        "ratio_of_medians": _ratio_of_medians(runs["after"], runs["before"]),
        "peak_mib": peak,
    }


def _ratio_of_medians(a: list, b: list) -> float:
    return summary(a)["images_per_s"] / summary(b)["images_per_s"]


@dataclass(frozen=True)
class Ablation:
    """A fast path: one case trained without it (before) and with it (after)."""

    name: str
    case: str
    before: Variant
    after: Variant
    before_label: str
    after_label: str
    only: str | None = None  # "cuda" or "cpu" where it means something on one kind only
    slow: bool = False  # left out of --quick
    extra: bool = False  # run only when named with --ablation


GAN, PLAIN = Variant("gan_run"), Variant("plain")
NVML = ("PYTORCH_NVML_BASED_CUDA_CHECK", "1")


def _optimizer(**flags: bool) -> tuple[str, ...]:
    return tuple(
        f"+optimizer.{player}.{key}={str(value).lower()}"
        for player in ("generator", "discriminator")
        for key, value in flags.items()
    )


ABLATIONS = (
    Ablation(
        "per-step NVML probe skipped", "mlp_grid25", Variant("gan_run", env=(NVML,)), GAN,
        "Lightning's NVML-based CUDA check", "probe skipped (speed.py)", only="cpu",
    ),
    Ablation(
        "batches per step", "mlp_small", Variant("gan_run", ("train.batches_per_step=1",)),
        GAN, "train.batches_per_step=1", "train.batches_per_step=null (16)",
    ),
    Ablation(
        "direct backward and step", "mlp_small",
        Variant("gan_run", ("speed.direct_steps=false",)), GAN,
        "manual_backward + LightningOptimizer.step", "speed.direct_steps=true (steps.py)",
    ),
    Ablation(
        "log every N G steps", "mlp_grid25", Variant("gan_run", ("train.log_every=1",)), GAN,
        "train.log_every=1", "train.log_every=50",
    ),
    Ablation(
        "zero_grad(set_to_none=True)", "mlp_grid25", Variant("plain", set_to_none=False), PLAIN,
        "set_to_none=False", "set_to_none=True",
    ),
    Ablation(
        "foreach optimizer", "mlp_grid25", Variant("gan_run", _optimizer(foreach=False)),
        Variant("gan_run", _optimizer(foreach=True)), "for-loop Adam", "foreach=true",
    ),
    Ablation(
        "fused optimizer", "mlp_grid25", Variant("gan_run", _optimizer(foreach=False)),
        Variant("gan_run", _optimizer(fused=True)), "for-loop Adam", "fused=true",
    ),
    Ablation(
        "channels_last", "dcgan_digits", GAN, Variant("gan_run", ("speed.channels_last=true",)),
        "contiguous (NCHW)", "speed.channels_last=true",
    ),
    Ablation(
        "channels_last, WGAN-GP", "dcgan32_wgan_gp", GAN,
        Variant("gan_run", ("speed.channels_last=true",)),
        "contiguous (NCHW)", "speed.channels_last=true", extra=True,
    ),
    Ablation(
        "TF32", "mlp_grid25", Variant("gan_run", ("speed.tf32=false",)), GAN,
        "float32 matmuls", "speed.tf32=true", only="cuda",
    ),
    Ablation(
        "torch.compile", "dcgan_digits", GAN, Variant("gan_run", ("speed.compile=true",)),
        "eager", "speed.compile=true", slow=True,
    ),
)  # fmt: skip


def ablation_row(plan: Plan, ablation: Ablation) -> dict[str, Any]:
    case = CASES[ablation.case]
    runs = compare(
        plan, case, ablation.before, ablation.after, plan.ablation_target_s, plan.ablation_repeats
    )
    return {
        "name": ablation.name,
        "case": case.name,
        "side": ablation.after.side,
        "before_label": ablation.before_label,
        "after_label": ablation.after_label,
        "before_variant": ablation.before.describe(),
        "after_variant": ablation.after.describe(),
        "before": summary(runs["before"]),
        "after": summary(runs["after"]),
        "speedup": paired_ratio(runs["after"], runs["before"]),
        "speedup_ci95": paired_ratio_ci(runs["after"], runs["before"]),
        "warmup_batches": runs["warmup_batches"],
        "timed_batches": runs["timed_batches"],
    }


def ablations_for(device: torch.device, quick: bool, names: list[str] | None) -> list[Ablation]:
    chosen = [a for a in ABLATIONS if a.only in (None, device.type)]
    if names is not None:
        known = {_slug(a.name) for a in ABLATIONS}
        unknown = [n for n in names if _slug(n) not in known]
        if unknown:
            raise UserError(f"--ablation {unknown[0]}: choose from {', '.join(sorted(known))}")
        return [a for a in chosen if _slug(a.name) in {_slug(n) for n in names}]
    return [a for a in chosen if not (a.extra or (quick and a.slow))]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
