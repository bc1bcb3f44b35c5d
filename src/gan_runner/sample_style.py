"""gan-sample for style-based generators (StyleGAN, StyleGAN2): truncation in W, style-mixing
grids and truncation sweeps (Karras et al. 2019, Figs. 3 and 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from gan_runner.callbacks.samples import to_uint8_grid
from gan_runner.errors import UserError
from gan_runner.plots import save_png


def has_styles(module: Any) -> bool:
    """Whether the sampling generator maps z to per-layer styles w (a mapping network)."""
    return hasattr(module.sampling_generator, "mapping")


def _require_styles(module: Any, cfg: DictConfig) -> Any:
    generator = module.sampling_generator
    if not has_styles(module):
        raise UserError(
            f"mode={cfg.mode} mixes or truncates styles in W, but ckpt={cfg.ckpt}'s generator "
            f"({type(generator).__name__}) has no mapping network to W; train with "
            "model=stylegan2 or model=stylegan, or use mode=grid"
        )
    return generator


def check_w_truncation(psi: float | None, ckpt: str) -> None:
    if psi is not None and not 0 <= psi <= 1:
        raise UserError(
            f"truncation={psi} is outside [0, 1]: ckpt={ckpt}'s generator truncates in W, "
            "w' = w_avg + ψ(w − w_avg); use 0 (the average image) to 1 (no truncation)"
        )


def _styles(module: Any, n: int, noise: torch.Generator, labels: Tensor | None, psi: float):
    """n ws from seeded z, truncated toward w_avg by ψ."""
    generator = module.sampling_generator
    z = module.latent.sample(n, module.z_dim, noise).to(module.device)
    labels = labels.to(module.device) if labels is not None else None
    with torch.no_grad():
        return generator.mapping(z, labels, truncation_psi=psi, update_w_avg=False)


def _synthesize(module: Any, ws: Tensor) -> Tensor:
    generator = module.sampling_generator
    was_training = generator.training
    generator.eval()
    try:
        with torch.no_grad():
            # Constant noise: a row or column differs only in the styles it is shown with.
            return generator.synthesis(ws, noise_mode="const").float().cpu()
    finally:
        generator.train(was_training)


def _labels(module: Any, cfg: DictConfig, n: int) -> Tensor | None:
    from gan_runner.sample import class_labels

    return class_labels(module, cfg.class_label, 0, n)


def coarse_layers(generator: Any, coarse_up_to: int) -> int:
    """How many leading ws drive the blocks up to `coarse_up_to` pixels (the coarse styles)."""
    spans = generator.ws_at_resolution
    if coarse_up_to not in spans:
        raise UserError(
            f"style_mixing.coarse_up_to={coarse_up_to} is not one of the generator's "
            f"resolutions ({', '.join(map(str, sorted(spans)))})"
        )
    return spans[coarse_up_to][1]


def style_mixing_mode(module: Any, cfg: DictConfig, noise: torch.Generator, out: Path) -> list:
    """A grid whose cell (i, j) takes its coarse styles from row source i and its fine ones from
    column source j; the top row and the left column show the sources themselves."""
    generator = _require_styles(module, cfg)
    spec = cfg.style_mixing
    psi = 1.0 if cfg.truncation is None else float(cfg.truncation)
    rows = _styles(module, spec.rows, noise, _labels(module, cfg, spec.rows), psi)
    cols = _styles(module, spec.cols, noise, _labels(module, cfg, spec.cols), psi)
    cut = coarse_layers(generator, int(spec.coarse_up_to))
    row_images, col_images = _synthesize(module, rows), _synthesize(module, cols)
    blank = torch.ones_like(col_images[:1])
    tiles = [blank, col_images]
    for i in range(spec.rows):
        mixed = cols.clone()
        mixed[:, :cut] = rows[i : i + 1, :cut]  # coarse from the row, fine from each column
        tiles += [row_images[i : i + 1], _synthesize(module, mixed)]
    save_png(to_uint8_grid(torch.cat(tiles), nrow=spec.cols + 1), out)
    return [out]


def truncation_sweep_mode(
    module: Any, cfg: DictConfig, noise: torch.Generator, out: Path
) -> list[Path]:
    """One row per seeded z, one column per ψ of truncation_sweep.psi (ψ = 0: the average w)."""
    _require_styles(module, cfg)
    psis = [float(p) for p in cfg.truncation_sweep.psi]
    for psi in psis:
        check_w_truncation(psi, cfg.ckpt)
    rows = int(cfg.truncation_sweep.rows)
    z = module.latent.sample(rows, module.z_dim, noise).to(module.device)
    labels = _labels(module, cfg, rows)
    labels = labels.to(module.device) if labels is not None else None
    generator = module.sampling_generator
    columns = []
    with torch.no_grad():
        for psi in psis:
            ws = generator.mapping(z, labels, truncation_psi=psi, update_w_avg=False)
            columns.append(_synthesize(module, ws))
    images = torch.stack(columns, dim=1).flatten(0, 1)  # row-major: each z across every ψ
    save_png(to_uint8_grid(images, nrow=len(psis)), out)
    return [out]
