"""Speed settings for a built GANModule: channels_last, torch.compile, TF32 and fused optimizers.

Each is measured by `make bench` (src/gan_runner/bench/); channels_last and compile are off by
default because they did not win on a CPU or on an H100; TF32 and fused optimizers are on, and
act only on a GPU (README, "Benchmarks").
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from gan_runner.errors import UserError

log = logging.getLogger(__name__)

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


@dataclass(frozen=True)
class SpeedSettings:
    """The `speed` node of conf/train.yaml: which fast paths a run takes."""

    channels_last: bool = False  # 4D weights (and so conv outputs) in NHWC memory order
    compile: bool = False  # torch.compile each network's forward (in place: same state dict)
    tf32: bool = True  # TF32 float32 matmuls on CUDA GPUs (Ampere and newer)
    fused_optimizers_on_gpu: bool = True  # fused Adam/AdamW/SGD kernels for players on a GPU
    direct_steps: bool = True  # plain backward()/step() where Lightning's wrappers add nothing

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> SpeedSettings:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            choices = ", ".join(sorted(known))
            raise UserError(f"speed.{unknown[0]} is not a speed setting; choose from: {choices}")
        wrong = [k for k, v in values.items() if not isinstance(v, bool)]
        if wrong:
            raise UserError(f"speed.{wrong[0]}={values[wrong[0]]!r} must be true or false")
        return cls(**values)


def apply_speed_options(module: Any, settings: SpeedSettings | Mapping[str, Any] | None) -> Any:
    """Turn on the chosen fast paths for `module`'s generator and discriminator; idempotent."""
    if not isinstance(settings, SpeedSettings):
        settings = SpeedSettings.from_mapping(settings)
    skip_per_step_gpu_probe()
    set_tf32(settings.tf32)
    if settings.channels_last:
        for net in (module.generator, module.discriminator):
            if any(p.dim() == 4 for p in net.parameters()):
                net.to(memory_format=torch.channels_last)
    if settings.compile:
        compile_networks(module)
    if settings.fused_optimizers_on_gpu:
        prefer_fused_optimizers_on_gpu(module)
    # Read at fit start, where steps.direct_steps decides whether the trainer allows it.
    module.allow_direct_steps = settings.direct_steps
    return module


def prefer_fused_optimizers_on_gpu(module: Any) -> None:
    """Build every player's optimizer fused when the players train on a CUDA GPU.

    Measured on an H100 (README, "Benchmarks"): against foreach, torch's GPU default, gan-run ran
    1.103x (3x512 MLP), 1.046x (WGAN-GP DCGAN) and 1.009x (digits DCGAN) as fast. On a CPU it
    gained 1.035x and would change every CPU result, so CPUs keep torch's default.
    The decision waits for the optimizers to be built, after Lightning has moved the players.
    """
    for player, make in module.optimizer_factories.items():
        if not isinstance(make, FusedOnGPU):  # idempotent
            module.optimizer_factories[player] = FusedOnGPU(make)


class FusedOnGPU:
    """An optimizer factory that adds fused=True where `fused_keywords` says it is due."""

    def __init__(self, make: Any) -> None:
        self.make = make

    def __call__(self, params: Any) -> torch.optim.Optimizer:
        params = list(params)
        return self.make(params, **fused_keywords(self.make, params))


def fused_keywords(make: Any, params: list[Any]) -> dict[str, bool]:
    """{"fused": True} when `make` (a partial of an optimizer class) has a fused kernel, its
    config chose no kernel (neither `fused` nor `foreach`) and every parameter is a floating
    point tensor on a CUDA GPU; otherwise {} (torch's default)."""
    chosen = getattr(make, "keywords", None) or {}
    if "fused" in chosen or "foreach" in chosen:
        return {}  # the config's own choice wins
    optimizer_class = getattr(make, "func", None)
    if optimizer_class is None or "fused" not in inspect.signature(optimizer_class).parameters:
        return {}  # RMSprop, for one, has no fused kernel
    if not params or not all(p.is_cuda and p.is_floating_point() for p in params):
        return {}
    return {"fused": True}


def skip_per_step_gpu_probe() -> None:
    """Let torch cache "no GPU" on a machine without one, instead of asking NVML every step.

    Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import (so that checks do not initialize
    CUDA before a fork); then every Adam step's graph-capture check loads NVML again, because
    torch caches the device count only once CUDA is initialized, which never happens without
    a GPU. Measured here: 0.3-0.5 ms per optimizer step (README, "Benchmarks").
    """
    if os.environ.get(NVML_CHECK) == "1" and torch.cuda.device_count() == 0:
        os.environ[NVML_CHECK] = "0"  # the runtime check: cached, and nothing to initialize


def set_tf32(enabled: bool) -> None:
    """TF32 float32 matmuls on CUDA, or PyTorch's default (cuDNN convolutions use TF32 anyway)."""
    if not torch.cuda.is_available():
        return
    cpu = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    before = getattr(cpu, "fp32_precision", None)
    # The API Lightning reads back: the per-backend setters make its start-up check raise.
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    if before is not None:
        cpu.fp32_precision = before  # "high" would also let oneDNN round CPU matmuls to TF32


def compile_networks(module: Any) -> None:
    """torch.compile every network in place; one the game double-differentiates stays eager."""
    eager = module.game.double_backward_networks()
    nets: list[nn.Module] = [getattr(module, n) for n in module.network_names if n not in eager]
    for name, reason in eager.items():
        # AOTAutograd has no double backward, which an input-gradient penalty needs.
        log.warning(
            "speed.compile: the %s stays uncompiled because %s differentiates its input "
            "gradient (torch.compile has no double backward)",
            name,
            reason,
        )
    for net in nets:
        if getattr(net, "_compiled_call_impl", None) is None:
            net.compile()
