"""gan-sample: grids, image folders, latent interpolations and latent arithmetic from a checkpoint.

Modes that start from real images (reconstruct, translate) live in sample_inverse.py.

Everything random (latents, perturbations) is drawn on the CPU from one torch.Generator(seed), so
the same command writes the same files on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image, ImageDraw
from torch import Tensor

from gan_runner.callbacks.samples import density_view, to_uint8_grid
from gan_runner.checkpoints import rebuild
from gan_runner.errors import UserError
from gan_runner.metrics.base import to_uint8
from gan_runner.module import GANModule
from gan_runner.plots import density_1d, save_png, scatter_over_data
from gan_runner.rejection import DiscriminatorRejection, log_ratio_of
from gan_runner.sample_inverse import (
    check_inverse_request,
    reconstruct_mode,
    refuse_mode,
    translate_mode,
)
from gan_runner.sample_style import (
    check_w_truncation,
    has_styles,
    style_mixing_mode,
    truncation_sweep_mode,
)

BLANK = 1.0  # white tiles pad the rows of the arithmetic sheet, like make_grid's padding


def sample(cfg: DictConfig) -> list[Path]:
    """Run one gan-sample mode from a composed conf/sample.yaml; returns the paths written."""
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise UserError("ckpt is not set; pass ckpt=<run folder>/checkpoints/last.ckpt")
    if cfg.mode not in MODES:
        raise UserError(f"mode={cfg.mode} is unknown; choose one of: {', '.join(MODES)}")
    _check_counts(cfg)
    _check_rejection(cfg)
    check_inverse_request(cfg)
    out = Path(cfg.out or ("samples" if cfg.mode == "folder" else f"{cfg.mode}.png"))
    if cfg.mode != "folder" and out.suffix.lower() not in Image.registered_extensions():
        raise UserError(
            f"out={cfg.out} names no image format (mode={cfg.mode} writes one picture); end it "
            "with .png, .jpg or another image extension"
        )
    trusted = list(cfg.trusted_targets)
    module, _ = rebuild(cfg.ckpt, cfg.use_ema, cfg.device, trusted_targets=trusted)
    if cfg.use_ema and getattr(module, "generator_ema", None) is None:
        print(f"Note: ckpt={cfg.ckpt} has no EMA generator; sampling the live generator")
    refuse_mode(module, cfg)
    check_class_label(module, cfg.class_label, cfg.ckpt)
    if has_styles(module) and cfg.truncation is not None:
        check_w_truncation(cfg.truncation, cfg.ckpt)
        module.sampling_generator.truncation_psi = float(cfg.truncation)  # ψ in W, not in z
    noise = torch.Generator().manual_seed(cfg.seed)
    written = MODES[cfg.mode](module, cfg, noise, out)
    for path in written:
        print(f"Wrote {path.resolve()}")
    return written


def _check_counts(cfg: DictConfig) -> None:
    lows = {"n": 1, "nrow": 1, "batch_size": 1, "seed": 0, "interpolation.pairs": 1}
    lows |= {"interpolation.steps": 2, "arithmetic.candidates": 1, "arithmetic.neighbours": 0}
    lows |= {"rejection.burn_in": 1, "rejection.max_proposals_per_sample": 1}
    lows |= {"style_mixing.rows": 1, "style_mixing.cols": 1, "truncation_sweep.rows": 1}
    for key, low in lows.items():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"{key}={value!r} is invalid: it must be an integer >= {low}")
    for key in ("interpolation.fps", "arithmetic.noise"):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"{key}={value!r} is invalid: it must be a number >= 0")


def _check_rejection(cfg: DictConfig) -> None:
    method = cfg.rejection.method
    if method is None:
        return
    if method != "drs":
        raise UserError(f"rejection.method={method} is unknown; choose drs or null")
    if cfg.mode not in REJECTION_MODES:
        raise UserError(
            f"rejection.method=drs filters independent samples (mode=grid or mode=folder); "
            f"mode={cfg.mode} needs every latent it draws, so set rejection.method=null"
        )
    make_rejection(cfg)  # its settings are checked before the checkpoint is loaded


def make_rejection(cfg: DictConfig) -> DiscriminatorRejection:
    spec = cfg.rejection
    return DiscriminatorRejection(
        percentile=spec.percentile,
        burn_in=spec.burn_in,
        batch_size=cfg.batch_size,
        max_proposals_per_sample=spec.max_proposals_per_sample,
    )


# ----------------------------------------------------------------- latents and labels
def draw_latent(module: GANModule, n: int, noise: torch.Generator, psi: float | None) -> Tensor:
    """n latent codes as the model's game draws them (InfoGAN's codes included), truncated by ψ
    when given (see conf/sample.yaml); labels come from class_label instead."""
    if has_styles(module):
        psi = None  # a style-based generator truncates w (generator.truncation_psi), not z
    try:
        return module.game.draw_latent(module, n, noise, psi)[0]
    except ValueError as error:
        raise UserError(f"{error}; or set truncation=null") from None


def check_class_label(module: GANModule, class_label: object, ckpt: str) -> None:
    """class_label must be null, or class indices the conditional model was trained on."""
    if class_label is None:
        return
    k = module.num_classes
    if not k:
        raise UserError(
            f"class_label={class_label} but ckpt={ckpt} is an unconditional model "
            "(trained with num_classes=0); drop class_label"
        )
    labels = list(class_label) if isinstance(class_label, (list, ListConfig)) else [class_label]
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < k:
            raise UserError(
                f"class_label={label!r} is out of range: the model has {k} classes; "
                f"use an integer from 0 to {k - 1} (or a list of them)"
            )


def class_labels(module: GANModule, class_label: object, start: int, n: int) -> Tensor | None:
    """Labels for samples start..start+n: the given class(es) in turn, else every class in turn."""
    if not module.num_classes:
        return None
    if class_label is None:
        cycle = list(range(module.num_classes))
    elif isinstance(class_label, (list, ListConfig)):
        cycle = [int(label) for label in class_label]
    else:
        cycle = [int(class_label)]
    index = torch.arange(start, start + n) % len(cycle)
    return torch.tensor(cycle, dtype=torch.long)[index]


def generate(module: GANModule, z: Tensor, labels: Tensor | None) -> Tensor:
    labels = labels.to(module.device) if labels is not None else None
    return module.sample(z.to(module.device), labels).cpu()


def interpolate(z0: Tensor, z1: Tensor, steps: int, spherical: bool) -> Tensor:
    """(pairs, steps, dim) paths from z0 to z1 (endpoints exact): slerp or straight lines."""
    t = torch.linspace(0, 1, steps, dtype=z0.dtype)[None, :, None]
    z0, z1 = z0[:, None, :], z1[:, None, :]
    if not spherical:
        return (1 - t) * z0 + t * z1
    theta = torch.cosine_similarity(z0, z1, dim=-1)[..., None].clamp(-1, 1).acos()
    sin = theta.sin()
    parallel = sin.abs() < 1e-6  # slerp's weights are 0/0 there; the straight line is the limit
    w0 = torch.where(parallel, 1 - t, ((1 - t) * theta).sin() / sin)
    w1 = torch.where(parallel, t, (t * theta).sin() / sin)
    return w0 * z0 + w1 * z1


def arithmetic_latent(z: Tensor, a: list[int], b: list[int], c: list[int]) -> Tensor:
    """Radford et al. 2016 §6.3: mean(z[a]) - mean(z[b]) + mean(z[c])."""
    return z[a].mean(0) - z[b].mean(0) + z[c].mean(0)


# ----------------------------------------------------------------- modes
def sampler(
    module: GANModule, cfg: DictConfig, noise: torch.Generator
) -> tuple[Callable[[int], Tensor], DiscriminatorRejection | None]:
    """(draw, rejection): draw(n) -> the next n samples, straight from the generator, or kept by
    rejection sampling (Azadi et al. 2019) when rejection.method=drs, whose sampler is returned
    for its acceptance count. Labels cycle as in class_labels."""
    drawn = 0

    def propose(n: int) -> tuple[Tensor, Tensor | None]:
        nonlocal drawn
        labels = class_labels(module, cfg.class_label, drawn, n)
        drawn += n
        return generate(module, draw_latent(module, n, noise, cfg.truncation), labels), labels

    if cfg.rejection.method is None:
        return (lambda n: propose(n)[0]), None
    rejection = make_rejection(cfg)
    log_ratio = log_ratio_of(module)
    rejection.fit(propose, log_ratio)
    return (lambda n: rejection.draw(n, propose, log_ratio, noise)[0]), rejection


def report_rejection(rejection: DiscriminatorRejection | None) -> None:
    if rejection is not None:
        print(
            f"Rejection sampling (DRS): kept {rejection.accepted} of {rejection.proposed} "
            f"proposals ({100 * rejection.acceptance:.1f}%)"
        )


def grid_mode(module: GANModule, cfg: DictConfig, noise: torch.Generator, out: Path) -> list[Path]:
    draw, rejection = sampler(module, cfg, noise)
    samples = draw(cfg.n)
    report_rejection(rejection)
    if samples.dim() == 2 and samples.shape[1] == 1:  # 1D data: densities and the critic
        shown = samples if rejection is not None else None  # the kept ones, by their KDE
        real, _ = _real_points(module, 10_000)
        view = density_view(module, _source(module), real, max(cfg.n, 1000), noise, fake=shown)
        density_1d(view, out, title=str(cfg.ckpt))
    elif samples.dim() == 2:  # 2D data: a scatter plot of the points
        scatter_over_data(samples, *_real_points(module, cfg.n), out, title=str(cfg.ckpt))
    else:
        save_png(to_uint8_grid(samples, nrow=cfg.nrow), out)
    return [out]


def _source(module: GANModule) -> Any:
    """The run's data source when it is synthetic (no files) and gan_runner's own, else None."""
    from hydra.utils import instantiate

    node = module.run_config.get("data", {}).get("source") or {}
    trusted = str(node.get("_target_", "")).startswith("gan_runner.data.")  # see checkpoints.py
    return instantiate(node) if trusted else None


def _real_points(module: GANModule, n: int) -> tuple[Tensor, Tensor | None]:
    """Real points to plot under 2D samples, when the run's source is synthetic (no files)."""
    source = _source(module)
    if not hasattr(source, "sample"):
        return torch.empty(0, 2), None
    points, _ = source.sample(n, torch.Generator().manual_seed(0))
    return points, getattr(source, "means", None)


def folder_mode(
    module: GANModule, cfg: DictConfig, noise: torch.Generator, out: Path
) -> list[Path]:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # Image-folder tools read every file: stale images from another run would mix in.
        raise UserError(f"out={out} already exists and is not an empty folder; pass a new folder")
    out.mkdir(parents=True, exist_ok=True)
    points = []
    draw, rejection = sampler(module, cfg, noise)
    for start in range(0, cfg.n, cfg.batch_size):
        samples = draw(min(cfg.batch_size, cfg.n - start))
        if samples.dim() == 2:
            points.append(samples)
            continue
        for i, image in enumerate(to_uint8(samples)):
            save_png(image, out / f"{start + i:06d}.png")
    report_rejection(rejection)
    if points:  # 1D or 2D data: one CSV of x (or x,y) rows instead of images
        header = "x,y" if points[0].shape[1] == 2 else "x"
        rows = [",".join(f"{v:.6g}" for v in row) for row in torch.cat(points).tolist()]
        (out / "points.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return [out]


def _images_only(samples: Tensor, mode: str) -> Tensor:
    if samples.dim() != 4:
        raise UserError(
            f"mode={mode} renders images, but this model generates {samples.shape[1]}D points; "
            "use mode=grid (a scatter plot) or mode=folder (points.csv)"
        )
    return samples


def interpolate_mode(
    module: GANModule, cfg: DictConfig, noise: torch.Generator, out: Path
) -> list[Path]:
    pairs, steps = cfg.interpolation.pairs, cfg.interpolation.steps
    ends = draw_latent(module, 2 * pairs, noise, cfg.truncation).view(pairs, 2, -1)
    # Normal latents concentrate near a sphere, whose chords pass through unlikely codes.
    spherical = cfg.interpolation.spherical and getattr(module.latent, "spherical", False)
    paths = interpolate(ends[:, 0], ends[:, 1], steps, spherical)
    labels = class_labels(module, cfg.class_label, 0, pairs)
    labels = labels.repeat_interleave(steps) if labels is not None else None
    images = _images_only(generate(module, paths.flatten(0, 1), labels), "interpolate")
    save_png(to_uint8_grid(images, nrow=steps), out)
    if not cfg.interpolation.gif:
        return [out]
    frames = images.unflatten(0, (pairs, steps)).transpose(0, 1)
    gif = out.with_suffix(".gif")
    grids = [to_uint8_grid(frame, nrow=min(pairs, cfg.nrow)) for frame in frames]
    save_gif(grids, gif, cfg.interpolation.fps, gray=images.shape[1] == 1)
    return [out, gif]


def save_gif(grids: list[Tensor], path: Path, fps: float, gray: bool) -> None:
    """An endlessly looping GIF; grayscale models stay exact (no palette quantization)."""
    frames = [Image.fromarray(g[0].numpy() if gray else g.permute(1, 2, 0).numpy()) for g in grids]
    duration = round(1000 / max(fps, 1e-3))
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0)


def arithmetic_groups(cfg: DictConfig) -> tuple[list[int], list[int], list[int]] | None:
    """The exemplar indices a, b, c (validated), or None when none is given yet."""
    spec = cfg.arithmetic
    given = [key for key in "abc" if spec[key] is not None]
    if not given:
        return None
    if len(given) < 3:
        missing = ", ".join(f"arithmetic.{key}" for key in "abc" if key not in given)
        raise UserError(
            f"{missing} not set; set all of arithmetic.a, .b and .c (candidate indices), or "
            "none of them to see the candidates"
        )
    groups = []
    for key in "abc":
        value = spec[key]
        indices = list(value) if isinstance(value, ListConfig) else [value]
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int)]
        if not indices or bad or not all(0 <= i < spec.candidates for i in indices):
            raise UserError(
                f"arithmetic.{key}={value} must list indices from 0 to {spec.candidates - 1} "
                "into the seeded candidate batch (e.g. arithmetic.a=[3,17,40])"
            )
        groups.append(indices)
    return groups[0], groups[1], groups[2]


def arithmetic_mode(
    module: GANModule, cfg: DictConfig, noise: torch.Generator, out: Path
) -> list[Path]:
    spec = cfg.arithmetic
    z = draw_latent(module, spec.candidates, noise, cfg.truncation)
    # One class for every image: arithmetic moves within a class, not across labels.
    label = class_labels(module, cfg.class_label, 0, 1)
    groups = arithmetic_groups(cfg)
    if groups is None:
        images = _images_only(generate(module, z, _repeat(label, len(z))), "arithmetic")
        save_png(index_sheet(images, cfg.nrow), out)
        print(
            f"Pick exemplars from {out} and rerun with the same seed and "
            "arithmetic.a=[i,j,k] arithmetic.b=[i,j,k] arithmetic.c=[i,j,k] (result: a - b + c)"
        )
        return [out]
    result = arithmetic_latent(z, *groups)
    jitter = (torch.rand(spec.neighbours, z.shape[1], generator=noise) * 2 - 1) * spec.noise
    rows = [torch.cat([z[g], z[g].mean(0, keepdim=True)]) for g in groups]
    rows.append(torch.cat([result[None], result + jitter]))
    flat = torch.cat(rows)
    images = _images_only(generate(module, flat, _repeat(label, len(flat))), "arithmetic")
    width = max(len(row) for row in rows)
    tiles, start = [], 0
    for row in rows:  # each row: exemplars then their mean (a, b, c), or result then neighbours
        tiles.append(images[start : start + len(row)])
        tiles.append(torch.full((width - len(row), *images.shape[1:]), BLANK))
        start += len(row)
    save_png(to_uint8_grid(torch.cat(tiles), nrow=width), out)
    return [out]


def _repeat(label: Tensor | None, n: int) -> Tensor | None:
    return label.expand(n) if label is not None else None


def index_sheet(images: Tensor, nrow: int) -> Tensor:
    """A grid upscaled so each tile carries its index in its top-left corner."""
    scale = max(1, math.ceil(32 / images.shape[-1]))
    big = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    picture = Image.fromarray(to_uint8_grid(big, nrow=nrow).permute(1, 2, 0).numpy())
    draw, side = ImageDraw.Draw(picture), big.shape[-1] + 2  # make_grid's padding is 2
    for i in range(len(images)):
        xy = (3 + (i % nrow) * side, 2 + (i // nrow) * side)
        draw.text(xy, str(i), fill=(255, 220, 0), stroke_width=1, stroke_fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def traversal_mode(
    module: GANModule, cfg: DictConfig, noise: torch.Generator, out: Path
) -> list[Path]:
    """One row per category of the first categorical code, columns sweeping one continuous code
    (InfoGAN, Chen et al. 2016, Fig. 2)."""
    spec = cfg.traversal
    span = (float(spec.span[0]), float(spec.span[1]))
    z, labels = module.game.traversal_latents(module, noise, spec.steps, spec.sweep, span)
    images = _images_only(generate(module, z, labels), "traversal")
    save_png(to_uint8_grid(images, nrow=spec.steps), out)
    return [out]


REJECTION_MODES = ("grid", "folder")
MODES: dict[str, Callable[[GANModule, DictConfig, torch.Generator, Path], list[Path]]] = {
    "grid": grid_mode,
    "folder": folder_mode,
    "interpolate": interpolate_mode,
    "arithmetic": arithmetic_mode,
    "traversal": traversal_mode,
    "reconstruct": reconstruct_mode,  # BiGAN/ALI: x beside G(E(x)) (sample_inverse.py)
    "translate": translate_mode,  # CycleGAN, pix2pix: source | translation | cycle back
    "style_mixing": style_mixing_mode,  # StyleGAN: coarse styles of rows, fine of columns
    "truncation_sweep": truncation_sweep_mode,  # StyleGAN: each z from ψ = 0 to 1
}
