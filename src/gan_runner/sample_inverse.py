"""gan-sample's modes that start from real images instead of latent codes.

`reconstruct` shows x beside G(E(x)) for a BiGAN/ALI checkpoint (Donahue et al. 2017; Dumoulin
et al. 2017); `translate` shows source | translation | cycle back for an image-to-image model
(CycleGAN, Zhu et al. 2017; pix2pix, Isola et al. 2017). Images come from `input=<folder>`, else
from the checkpoint's own data set: its held-out split (reconstruct), its test split (translate).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from gan_runner.callbacks.samples import to_uint8_grid
from gan_runner.checkpoints import refuse_untrusted
from gan_runner.data.module import resize_images, to_model_range
from gan_runner.data.readers import list_images, read_square_images
from gan_runner.errors import UserError
from gan_runner.games.bigan import reconstruction_ratio
from gan_runner.metrics.encoder import encode, held_out_split
from gan_runner.metrics.extractors import device_of
from gan_runner.plots import save_png

BLANK = 1.0  # white tiles fill a last row, like make_grid's padding
DIRECTIONS = ("a2b", "b2a")


def check_inverse_request(cfg: DictConfig) -> None:
    """One line for a bad direction or input folder, before the checkpoint is loaded."""
    if cfg.direction not in DIRECTIONS:
        raise UserError(f"direction={cfg.direction} is unknown; choose a2b or b2a")
    if cfg.input is None:
        return
    folder = Path(cfg.input)
    if not folder.is_dir():
        raise UserError(f"input={cfg.input} is not a folder; pass a folder of PNG/JPG images")
    if not list_images(folder):
        raise UserError(f"input={cfg.input} holds no image files; pass a folder of PNG/JPG images")


def refuse_mode(module: Any, cfg: DictConfig) -> None:
    """Latent modes refuse a translation checkpoint, and mode=translate a latent one."""
    game = type(module.game).__name__
    translates = getattr(module.game, "translates", False)
    if translates and cfg.mode != "translate":
        raise UserError(
            f"mode={cfg.mode} is for models that generate from latent codes, but ckpt={cfg.ckpt} "
            f"is an image-to-image translation model ({game}); use mode=translate"
        )
    if cfg.mode == "translate" and not translates:
        raise UserError(
            f"mode=translate maps images between two domains, but ckpt={cfg.ckpt} generates "
            f"from latent codes ({game}); use mode=grid"
        )
    if translates and cfg.get("truncation") is not None:
        raise UserError(
            f"truncation={cfg.truncation} truncates a latent code, but ckpt={cfg.ckpt}'s "
            f"generator maps images and draws none ({game}); drop truncation"
        )


# ----------------------------------------------------------------- real images
def folder_images(folder: str, shape: list[int], n: int) -> Tensor:
    """The first n images of a folder (sorted), centre-cropped and resized to (C, R, R) uint8."""
    mode = "L" if shape[0] == 1 else "RGB"
    try:
        return read_square_images(list_images(Path(folder))[:n], shape[-1], mode)
    except UserError as error:
        raise UserError(f"input={folder}: {error}") from None


def _run_data_node(module: Any, cfg: DictConfig) -> DictConfig:
    """The run's data config, its classes checked to be trusted (a file could name any)."""
    node = OmegaConf.create(module.run_config.get("data") or {})
    refuse_untrusted(node, "data", cfg.ckpt, cfg.trusted_targets)
    return node


def held_out_images(module: Any, cfg: DictConfig) -> Tensor:
    """The first n held-out images of the checkpoint's data set (see metrics.encoder)."""
    from gan_runner.train import build  # train imports Lightning's trainer stack

    datamodule = build(OmegaConf.create({"data": _run_data_node(module, cfg)}), "data")
    datamodule.prepare_data()
    _, test, split = held_out_split(datamodule, "reconstruct")
    print(f"Real images: {split}")
    return test.samples[: cfg.n]


def test_domain(module: Any, cfg: DictConfig, domain: str) -> tuple[Tensor, Tensor | None]:
    """The first n images of one domain of the checkpoint's two-domain test split, and their
    true translations when the split pairs them (digits_unpaired's test split does)."""
    from hydra.utils import instantiate

    node = _run_data_node(module, cfg)
    resolution = list(node.shape)[-1]
    data = instantiate(node.source).load(resolution=resolution, split="test")
    other = "b" if domain == "a" else "a"
    source = resize_images(getattr(data, domain)[: cfg.n], resolution)
    if not data.paired:
        return source, None
    return source, resize_images(getattr(data, other)[: cfg.n], resolution)


# ----------------------------------------------------------------- networks
@torch.no_grad()
def apply(net: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """net(x, None) in eval mode, in batches, as float32 on the CPU."""
    device = device_of(net)
    was_training = net.training
    net.eval()
    try:
        parts = [net(p.to(device), None).float().cpu() for p in images.split(batch_size)]
    finally:
        net.train(was_training)
    return torch.cat(parts)


def paired_rows(first: Tensor, second: Tensor, nrow: int) -> Tensor:
    """Tiles for a grid of nrow columns: a row of `first`, the same row of `second`, and so on;
    blank tiles fill the last pair of rows."""
    rows = math.ceil(len(first) / nrow)
    blank = torch.full((rows * nrow - len(first), *first.shape[1:]), BLANK)
    halves = [torch.cat([x, blank]).unflatten(0, (rows, nrow)) for x in (first, second)]
    return torch.stack(halves, dim=1).flatten(0, 2)


# ----------------------------------------------------------------- modes
def reconstruct_mode(
    module: Any, cfg: DictConfig, noise: torch.Generator, out: Path
) -> list[Path]:
    """Rows of real images x, each followed by G(E(x)) (BiGAN/ALI's reconstructions)."""
    if getattr(module, "encoder", None) is None:
        raise UserError(
            f"mode=reconstruct shows G(E(x)), but ckpt={cfg.ckpt} has no encoder network "
            f"({type(module.game).__name__}); train with model=bigan, model=ali or model=aae"
        )
    shape = list(module.run_config["data"]["shape"])
    if len(shape) != 3:
        raise UserError(
            f"mode=reconstruct renders images, but this model's data are {shape[0]}D points; "
            "use mode=grid"
        )
    real = folder_images(cfg.input, shape, cfg.n) if cfg.input else held_out_images(module, cfg)
    x = to_model_range(real).float()
    z = encode(module.encoder, x, cfg.batch_size)
    reconstructed = torch.cat(
        [module.sample(part.to(module.device)).cpu() for part in z.split(cfg.batch_size)]
    )
    nrow = min(cfg.nrow, len(x))
    save_png(to_uint8_grid(paired_rows(x, reconstructed, nrow), nrow=nrow), out)
    if len(x) >= 2:
        # The generator that samples (EMA or live) behind the live encoder, as in the grid.
        pair = SimpleNamespace(encoder=module.encoder, generator=module.sampling_generator)
        ratio = reconstruction_ratio(pair, x.to(module.device), cfg.seed)
        print(f"EGr/EGr_b on these {len(x)} images: {ratio:.3f} (1: no inverse learned)")
    return [out]


def translate_mode(module: Any, cfg: DictConfig, noise: torch.Generator, out: Path) -> list[Path]:
    """One row per source image: source | translation | (with a reverse generator) cycle back."""
    forward, back = module.sampling_generator, getattr(module, "generator_ba", None)
    source = "a"
    if cfg.direction == "b2a":
        if back is None:
            raise UserError(
                f"direction=b2a needs a B -> A generator (generator_ba), which ckpt={cfg.ckpt} "
                f"({type(module.game).__name__}) has not got; use direction=a2b"
            )
        forward, back, source = back, forward, "b"
    shape = list(module.run_config["data"]["shape"])
    truth = None
    if cfg.input:
        real = folder_images(cfg.input, shape, cfg.n)
    else:
        real, truth = test_domain(module, cfg, source)
    x = to_model_range(real).float()
    columns = [x, apply(forward, x, cfg.batch_size)]
    if back is not None:
        columns.append(apply(back, columns[1], cfg.batch_size))
    tiles = torch.stack(columns, dim=1).flatten(0, 1)
    save_png(to_uint8_grid(tiles, nrow=len(columns)), out)
    if truth is not None:  # a paired test split: how far each translation is from the truth
        error = (columns[1] - to_model_range(truth).float()).abs().mean()
        print(f"Mean absolute error to the true translations (on [-1, 1]): {float(error):.4f}")
    return [out]
