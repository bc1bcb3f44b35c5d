"""Adaptive discriminator augmentation (ADA): the 'bgc' pipeline and its p heuristic.

Karras, Aittala, Hellsten, Laine, Lehtinen & Aila 2020, "Training Generative Adversarial Networks
with Limited Data" (arXiv:2006.06676). Follows NVlabs/stylegan2-ada-pytorch's AugmentPipe (draw
order, parameter distributions, matrices) and training_loop.py's adjustment of p, with one
simplification: the geometric matrix is applied by a single bilinear grid_sample with reflection
at the borders, where the reference pads, upsamples 2x with a sym6 wavelet and downsamples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _matrix(rows: list[list[Tensor | float]], like: Tensor) -> Tensor:
    """(N, R, C) per-sample matrices from rows of (N,) tensors and constants."""
    elems = [e if isinstance(e, Tensor) else torch.full_like(like, e) for r in rows for e in r]
    return torch.stack(elems, dim=-1).reshape(like.shape + (len(rows), -1))


def _translate2d(tx: Tensor, ty: Tensor) -> Tensor:
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


def _scale2d(sx: Tensor, sy: Tensor) -> Tensor:
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx)


def _rotate2d(theta: Tensor) -> Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta)


def _rotate3d(v: Tensor, theta: Tensor) -> Tensor:
    """Rotation by theta about the unit axis v (3,), as a (N, 4, 4) homogeneous matrix."""
    vx, vy, vz = (float(a) for a in v[:3])
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return _matrix(
        [
            [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
            [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
            [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
            [0, 0, 0, 1],
        ],
        theta,
    )


def _is_identity(m: Tensor) -> Tensor:
    """(N, 1, 1, 1) mask of the samples whose matrix is exactly the identity (nothing drawn)."""
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    return (m == eye).flatten(1).all(dim=1).view(-1, 1, 1, 1)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _validate(
    target: float, speed_kimg: float, interval: int, initial_p: float, fixed_p: float | None
) -> None:
    """One line per bad setting: the key, the value and the range it must lie in."""
    _check(
        0 < target < 1,
        f"aug.target={target} must be in (0, 1): the fraction of real images the critic "
        "may score positive",
    )
    _check(
        speed_kimg > 0,
        f"aug.speed_kimg={speed_kimg} must be > 0: thousands of images for p to move by 1",
    )
    _check(
        int(interval) == interval and interval >= 1,
        f"aug.interval={interval} must be a whole number >= 1 of critic steps per adjustment",
    )
    _check(0 <= initial_p <= 1, f"aug.initial_p={initial_p} must be in [0, 1]")
    _check(
        fixed_p is None or 0 <= fixed_p <= 1,
        f"aug.fixed_p={fixed_p} must be in [0, 1], or null to adapt p",
    )


class AdaptiveAugment(nn.Module):
    """ADA's 'bgc' augmentation with adaptive p (Karras et al. 2020, arXiv:2006.06676)."""

    def __init__(
        self,
        *,
        xflip: float = 1.0,
        rotate90: float = 1.0,
        xint: float = 1.0,
        scale: float = 1.0,
        rotate: float = 1.0,
        aniso: float = 1.0,
        xfrac: float = 1.0,
        brightness: float = 1.0,
        contrast: float = 1.0,
        lumaflip: float = 1.0,
        hue: float = 1.0,
        saturation: float = 1.0,
        xint_max: float = 0.125,
        scale_std: float = 0.2,
        rotate_max: float = 1.0,
        aniso_std: float = 0.2,
        xfrac_std: float = 0.125,
        brightness_std: float = 0.2,
        contrast_std: float = 0.5,
        hue_max: float = 1.0,
        saturation_std: float = 1.0,
        initial_p: float = 0.0,
        target: float = 0.6,
        interval: int = 4,
        speed_kimg: float = 500.0,
        fixed_p: float | None = None,
    ) -> None:
        super().__init__()
        _validate(target, speed_kimg, interval, initial_p, fixed_p)
        self.multipliers = dict(
            xflip=xflip, rotate90=rotate90, xint=xint, scale=scale, rotate=rotate, aniso=aniso,
            xfrac=xfrac, brightness=brightness, contrast=contrast, lumaflip=lumaflip, hue=hue,
            saturation=saturation,
        )  # fmt: skip
        negative = [f"aug.{k}={v}" for k, v in self.multipliers.items() if v < 0]
        _check(not negative, f"{', '.join(negative)} must be >= 0: a probability multiplier")
        self.xint_max, self.scale_std, self.rotate_max = xint_max, scale_std, rotate_max
        self.aniso_std, self.xfrac_std = aniso_std, xfrac_std
        self.brightness_std, self.contrast_std = brightness_std, contrast_std
        self.hue_max, self.saturation_std = hue_max, saturation_std
        self.target, self.interval, self.speed_kimg = target, int(interval), speed_kimg
        self.fixed_p = fixed_p
        # Buffers, so the critic's state_dict (the checkpoint) carries them and a resume is exact.
        start = initial_p if fixed_p is None else fixed_p
        self.register_buffer("p", torch.tensor(float(start)))
        self.register_buffer("r_t", torch.tensor(0.0))  # E[sign(D(real))] at the last adjustment
        # Since the last adjustment, over every rank: sum of sign(D(real)), scores, images.
        self.register_buffer("stats", torch.zeros(3))
        self.register_buffer("observations", torch.tensor(0, dtype=torch.long))
        self._seen: int | None = 0

    def _gate(self, value: Tensor, identity: float, prob: Tensor | float) -> Tensor:
        """value where a per-sample U(0, 1) draw falls below prob, the identity elsewhere."""
        shape = (value.shape[0],) + (1,) * (value.dim() - 1)
        keep = torch.rand(shape, dtype=value.dtype, device=value.device) < prob
        return torch.where(keep, value, torch.full_like(value, identity))

    def _geometry(self, n: int, h: int, w: int, p: Tensor, dtype: torch.dtype) -> Tensor:
        """G_inv (N, 3, 3): output pixel -> input pixel, origin at the image centre."""
        m, dev = self.multipliers, p.device

        def rand(*shape: int) -> Tensor:
            return torch.rand((n, *shape), dtype=dtype, device=dev)

        def randn(*shape: int) -> Tensor:
            return torch.randn((n, *shape), dtype=dtype, device=dev)

        g = torch.eye(3, dtype=dtype, device=dev).expand(n, 3, 3)
        if m["xflip"] > 0:
            i = self._gate(torch.floor(rand() * 2), 0, m["xflip"] * p)
            g = g @ _scale2d(1 - 2 * i, torch.ones_like(i))  # its own inverse
        if m["rotate90"] > 0:
            i = self._gate(torch.floor(rand() * 4), 0, m["rotate90"] * p)
            g = g @ _rotate2d(math.pi / 2 * i)
        if m["xint"] > 0:
            t = self._gate((rand(2) * 2 - 1) * self.xint_max, 0, m["xint"] * p)
            g = g @ _translate2d(-torch.round(t[:, 0] * w), -torch.round(t[:, 1] * h))
        if m["scale"] > 0:
            s = self._gate(torch.exp2(randn() * self.scale_std), 1, m["scale"] * p)
            g = g @ _scale2d(1 / s, 1 / s)
        # Two rotations, each with 1 - sqrt(1 - p): P(at least one) = p, as for the other ops.
        p_rot = 1 - torch.sqrt((1 - m["rotate"] * p).clamp(0, 1))
        for stage in ("pre", "aniso", "post"):
            if stage == "aniso" and m["aniso"] > 0:
                s = self._gate(torch.exp2(randn() * self.aniso_std), 1, m["aniso"] * p)
                g = g @ _scale2d(1 / s, s)
            elif stage != "aniso" and m["rotate"] > 0:
                theta = self._gate((rand() * 2 - 1) * math.pi * self.rotate_max, 0, p_rot)
                g = g @ _rotate2d(theta)
        if m["xfrac"] > 0:
            t = self._gate(randn(2) * self.xfrac_std, 0, m["xfrac"] * p)
            g = g @ _translate2d(-t[:, 0] * w, -t[:, 1] * h)
        return g

    def _colour(self, n: int, channels: int, p: Tensor, dtype: torch.dtype) -> Tensor:
        """C (N, 4, 4): colour_in -> colour_out in homogeneous RGB."""
        m, dev = self.multipliers, p.device
        eye = torch.eye(4, dtype=dtype, device=dev)
        c = eye.expand(n, 4, 4)
        if m["brightness"] > 0:
            b = torch.randn(n, dtype=dtype, device=dev) * self.brightness_std
            b = self._gate(b, 0, m["brightness"] * p)
            c = _matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]], b) @ c
        if m["contrast"] > 0:
            k = torch.exp2(torch.randn(n, dtype=dtype, device=dev) * self.contrast_std)
            k = self._gate(k, 1, m["contrast"] * p)
            c = _matrix([[k, 0, 0, 0], [0, k, 0, 0], [0, 0, k, 0], [0, 0, 0, 1]], k) @ c
        v = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=dtype, device=dev) / math.sqrt(3)  # luma axis
        vv = torch.outer(v, v)
        if m["lumaflip"] > 0:
            i = torch.floor(torch.rand(n, 1, 1, dtype=dtype, device=dev) * 2)
            i = self._gate(i, 0, m["lumaflip"] * p)
            c = (eye - 2 * vv * i) @ c  # Householder reflection of the luma axis
        if m["hue"] > 0 and channels > 1:
            theta = (torch.rand(n, dtype=dtype, device=dev) * 2 - 1) * math.pi * self.hue_max
            c = _rotate3d(v, self._gate(theta, 0, m["hue"] * p)) @ c
        if m["saturation"] > 0 and channels > 1:
            s = torch.exp2(torch.randn(n, 1, 1, dtype=dtype, device=dev) * self.saturation_std)
            c = (vv + (eye - vv) * self._gate(s, 1, m["saturation"] * p)) @ c
        return c

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"aug=ada augments RGB or grayscale images (N, 3 or 1, H, W), but the critic got "
                f"input of shape {list(x.shape)}; use aug=none or aug=diffaug"
            )
        if not self.training:  # evaluation sees the plain images
            return x
        n, channels, h, w = x.shape
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        p = self.p.detach().clone().to(dtype)  # observe() may move self.p before backward
        g = self._geometry(n, h, w, p, dtype)
        # Pixel units about the centre -> affine_grid's [-1, 1] units (the same for in and out).
        to_unit = torch.diag(torch.tensor([2 / w, 2 / h, 1.0], dtype=dtype, device=x.device))
        to_pixels = torch.diag(torch.tensor([w / 2, h / 2, 1.0], dtype=dtype, device=x.device))
        theta = (to_unit @ g @ to_pixels)[:, :2].to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        moved = F.grid_sample(x, grid, "bilinear", padding_mode="reflection", align_corners=False)
        x = torch.where(_is_identity(g), x, moved)  # untouched samples stay bitwise the input
        c = self._colour(n, channels, p, dtype)
        flat = x.reshape(n, channels, h * w)
        if channels == 3:
            recoloured = c[:, :3, :3].to(x.dtype) @ flat + c[:, :3, 3:].to(x.dtype)
        else:  # the reference's grayscale: the mean of the RGB rows
            rows = c[:, :3, :].mean(dim=1, keepdim=True).to(x.dtype)
            recoloured = flat * rows[:, :, :3].sum(dim=2, keepdim=True) + rows[:, :, 3:]
        recoloured = recoloured.reshape(n, channels, h, w)
        return torch.where(_is_identity(c), x, recoloured)

    @torch.no_grad()
    def observe(self, real_scores: Tensor, world_size: int = 1) -> None:
        """Take one critic step's raw scores on real images; every `interval` calls, move p by
        batch * interval / (speed_kimg * 1000) toward E[sign(D(real))] = target."""
        scores = real_scores.detach().to(self.stats)
        one = torch.ones_like(self.stats[0])
        step = torch.stack([scores.sign().sum(), one * scores.numel()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank's scores, as S2A; summed at each step, so the ranks hold equal buffers
            # and DDP's broadcast of rank 0's buffers changes nothing.
            torch.distributed.all_reduce(step)
        self.stats += torch.cat([step, one[None] * (len(scores) * world_size)])
        if self._seen is None:  # after construction or a load: one read of the buffer
            self._seen = int(self.observations)
        self._seen += 1  # a host-side mirror, so the interval test costs no device sync
        self.observations += 1
        if self._seen % self.interval != 0:
            return
        self.r_t.copy_(self.stats[0] / self.stats[1])
        if self.fixed_p is None:
            images = self.stats[2]  # batch x interval, over every rank
            adjust = torch.sign(self.r_t - self.target) * images / (self.speed_kimg * 1000)
            self.p.copy_((self.p + adjust).clamp(0, 1))
        self.stats.zero_()

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._seen = None  # the loaded `observations` is the truth now

    def extra_repr(self) -> str:
        ops = [k for k, v in self.multipliers.items() if v > 0]
        mode = f"fixed_p={self.fixed_p}" if self.fixed_p is not None else f"target={self.target}"
        return f"ops={ops}, {mode}, interval={self.interval}, speed_kimg={self.speed_kimg}"
