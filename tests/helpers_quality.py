"""Training runs that keep their module, and sample-quality measures for the recipe tests."""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig
from torch import Tensor

from gan_runner.data.module import GANDataModule, TensorData, to_model_range
from gan_runner.module import GANModule
from gan_runner.train import assemble, build_trainer


@dataclass
class Run:
    """What train(cfg) builds, kept so a test can score the generator before and after fit."""

    module: GANModule
    datamodule: GANDataModule
    trainer: pl.Trainer

    def fit(self) -> GANModule:
        self.trainer.fit(self.module, datamodule=self.datamodule)
        return self.module


def prepare(cfg: DictConfig) -> Run:
    """Build a run exactly as gan_runner.train.train does (no loggers), without fitting it."""
    built = assemble(cfg)
    callbacks = [c for c in built.callbacks if not isinstance(c, ProgressBar)]
    trainer = build_trainer(cfg, callbacks, [])
    built.datamodule.setup()  # loaded now (on the CPU) so a test can read the data before fit
    return Run(built.module, built.datamodule, trainer)


def _to_8x8(images: Tensor) -> Tensor:
    """(N, 1, R, R) images in [-1, 1] as (N, 64) features: the scale of the source digits."""
    images = images.float()
    if images.shape[-1] != 8:
        images = F.interpolate(images, size=(8, 8), mode="bilinear", antialias=True)
    return images.flatten(1)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017)."""
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    # A tiny ridge keeps sqrtm defined when an untrained generator's output is (near) constant.
    ridge = 1e-6 * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    root = root.real if np.iscomplexobj(root) else root
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def generated(module: GANModule, n: int, seed: int) -> Tensor:
    """n samples from the module's sampling generator, drawn with a private seeded stream."""
    noise = torch.Generator(device=module.device).manual_seed(seed)
    return module.sample(*module.game.draw_latent(module, n, noise)).cpu()


def pixel_frechet(module: GANModule, data: TensorData, n: int = 2000, seed: int = 0) -> float:
    """Fréchet distance between generated and real images in 8×8 pixel space."""
    fake = _to_8x8(generated(module, n, seed))
    real = _to_8x8(to_model_range(data.samples.cpu()))
    return frechet_distance(fake, real)


def sliced_wasserstein(a: Tensor, b: Tensor, n_directions: int = 256, seed: int = 0) -> float:
    """Mean over random directions of the 1D Wasserstein-1 distance of the projections."""
    n = min(len(a), len(b))
    directions = torch.randn(
        a.shape[1], n_directions, generator=torch.Generator().manual_seed(seed)
    )
    directions = directions / directions.norm(dim=0)
    a_proj = (a[:n].double() @ directions.double()).sort(dim=0).values
    b_proj = (b[:n].double() @ directions.double()).sort(dim=0).values
    return float((a_proj - b_proj).abs().mean())


def trace_of_covariance(data: TensorData) -> float:
    """The Fréchet distance of the best constant image (the mean) to the data in 8×8 space."""
    real = _to_8x8(to_model_range(data.samples.cpu())).double()
    return float(torch.cov(real.T).trace())
