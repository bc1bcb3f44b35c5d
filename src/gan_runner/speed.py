"""Opt-in speed settings for a built GANModule: channels_last, torch.compile and TF32 on GPUs.

Each is measured by `make bench` (src/gan_runner/bench/); on a CPU, channels_last and compile
are off by default because they did not win there (README, "Benchmarks").
"""

from __future__ import annotations

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
    return module


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
    """torch.compile G and D in place; a critic under an input-gradient penalty stays eager."""
    per_sample = [
        name
        for name, regularizer in getattr(module, "regularizers", {}).items()
        if getattr(regularizer, "per_sample_gradient", False)
    ]
    nets: list[nn.Module] = [module.generator]
    if per_sample:
        # AOTAutograd has no double backward, which the penalty's create_graph=True needs.
        log.warning(
            "speed.compile: the discriminator stays uncompiled because regularizer=%s "
            "differentiates its input gradient (torch.compile has no double backward)",
            per_sample[0],
        )
    else:
        nets.append(module.discriminator)
    for net in nets:
        if getattr(net, "_compiled_call_impl", None) is None:
            net.compile()
