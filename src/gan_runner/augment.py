"""Differentiable augmentation of the critic's input, real and generated alike (DiffAugment).

Zhao, Liu, Lin, Zhu & Han 2020, "Differentiable Augmentation for Data-Efficient GAN Training"
(arXiv:2006.10738). The three policies reproduce mit-han-lab/data-efficient-gans'
DiffAugment_pytorch.py draw for draw: the same values from the same RNG state, in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.nets.layers import CriticOutput


def _per_sample(x: Tensor) -> Tensor:
    """One U(0, 1) draw per sample, shaped to broadcast over (C, H, W)."""
    return torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)


def brightness(x: Tensor) -> Tensor:
    return x + (_per_sample(x) - 0.5)  # x + b, b ~ U(-0.5, 0.5)


def saturation(x: Tensor) -> Tensor:
    mean = x.mean(dim=1, keepdim=True)  # per pixel over channels: one-channel images keep x
    return (x - mean) * (_per_sample(x) * 2) + mean  # s ~ U(0, 2)


def contrast(x: Tensor) -> Tensor:
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_per_sample(x) + 0.5) + mean  # c ~ U(0.5, 1.5)


def _grid(x: Tensor, rows: int, cols: int) -> tuple[Tensor, Tensor, Tensor]:
    arange = (torch.arange(n, dtype=torch.long, device=x.device) for n in (x.size(0), rows, cols))
    return torch.meshgrid(*arange, indexing="ij")


def translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """out[i, j] = x[i + dy, j + dx] with zeros outside, |dy| <= round(ratio H) per sample."""
    shift_h, shift_w = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    dy = torch.randint(-shift_h, shift_h + 1, size=[x.size(0), 1, 1], device=x.device)
    dx = torch.randint(-shift_w, shift_w + 1, size=[x.size(0), 1, 1], device=x.device)
    batch, rows, cols = _grid(x, x.size(2), x.size(3))
    # One ring of zeros, and every index past the image clamped onto it: the zero fill.
    rows = torch.clamp(rows + dy + 1, 0, x.size(2) + 1)
    cols = torch.clamp(cols + dx + 1, 0, x.size(3) + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero a square of side round(ratio H) centred anywhere in the image (clipped at edges)."""
    size_h, size_w = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    # The reference's centre range: [0, H] for an even side, [0, H - 1] for an odd one.
    cy = torch.randint(0, x.size(2) + (1 - size_h % 2), size=[x.size(0), 1, 1], device=x.device)
    cx = torch.randint(0, x.size(3) + (1 - size_w % 2), size=[x.size(0), 1, 1], device=x.device)
    batch, rows, cols = _grid(x, size_h, size_w)
    rows = torch.clamp(rows + cy - size_h // 2, min=0, max=x.size(2) - 1)
    cols = torch.clamp(cols + cx - size_w // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype, device=x.device)
    mask[batch, rows, cols] = 0
    return x * mask.unsqueeze(1)


class DiffAugment(nn.Module):
    """Differentiable augmentation of every critic input (Zhao et al. 2020, arXiv:2006.10738)."""

    def __init__(
        self,
        policy: Sequence[str] = ("color", "translation", "cutout"),
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        ops: dict[str, list[Callable[[Tensor], Tensor]]] = {
            "color": [brightness, saturation, contrast],
            "translation": [partial(translation, ratio=translation_ratio)],
            "cutout": [partial(cutout, ratio=cutout_ratio)],
        }
        if isinstance(policy, str):  # the reference's spelling: "color,translation,cutout"
            policy = [name.strip() for name in policy.split(",") if name.strip()]
        unknown = [name for name in policy if name not in ops]
        if unknown:
            raise ValueError(
                f"aug.policy names {', '.join(map(str, unknown))}; the known policies are "
                f"{', '.join(ops)}"
            )
        self.policy = tuple(policy)
        self.translation_ratio, self.cutout_ratio = translation_ratio, cutout_ratio
        self._ops = [op for name in self.policy for op in ops[name]]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"aug=diffaug augments images (N, C, H, W), but the critic got input of shape "
                f"{list(x.shape)}: the data is not image data; use aug=none"
            )
        if not self.training:  # evaluation (gan-eval's critic metrics) sees the plain images
            return x
        for op in self._ops:
            x = op(x)
        return x.contiguous()

    def extra_repr(self) -> str:
        return (
            f"policy={list(self.policy)}, translation_ratio={self.translation_ratio}, "
            f"cutout_ratio={self.cutout_ratio}"
        )


def _augment_input(
    critic: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not args:
        raise TypeError(
            "an augmented critic takes its images as the first positional argument, critic(x, ...)"
        )
    return (critic.augment(args[0]), *args[1:]), kwargs


def attach_augmentation(critic: nn.Module, augment: nn.Module) -> nn.Module:
    """Make every critic(x, ...) call judge augment(x): a child module and a forward pre-hook,
    so the games, the penalties and the metrics call the critic unchanged."""
    if hasattr(critic, "augment"):
        raise ValueError(f"{type(critic).__name__} already has an `augment` attribute")
    if isinstance(critic, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        # A container runs (or lists) every child: the augmentation would become a layer.
        raise ValueError(f"cannot attach an augmentation to a bare {type(critic).__name__}")
    critic.augment = augment  # a child: .train()/.eval() and .to(device) reach it
    critic.register_forward_pre_hook(_augment_input, with_kwargs=True)
    return critic


def critic_outputs(critic: nn.Module, x: Tensor, labels: Tensor | None) -> CriticOutput:
    """critic.outputs on the augmented images when an augmentation is attached (outputs()
    is a plain method: the forward hook does not see it)."""
    augment = getattr(critic, "augment", None)
    if isinstance(augment, nn.Module):
        x = augment(x)
    return critic.outputs(x, labels)


def observe_real_scores(module: nn.Module, real_scores: Tensor) -> dict[str, Tensor]:
    """Show an adaptive augmentation (ADA's p) the critic's scores on real images, once per
    critic step, and return its state to log (aug_p, aug_r_t); a fixed augmentation has no
    `observe` and ignores them."""
    augment = getattr(module.discriminator, "augment", None)
    observe = getattr(augment, "observe", None)
    if observe is None:
        return {}
    trainer = getattr(module, "_trainer", None)
    observe(real_scores.detach(), world_size=trainer.world_size if trainer is not None else 1)
    return {"aug_p": augment.p.clone(), "aug_r_t": augment.r_t.clone()}
