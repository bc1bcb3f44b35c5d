"""Fixed-noise sample grids (images), scatter plots over the data (2D) or density plots with
the critic (1D) every N G steps, and the game's own views of the samples."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torchvision.utils import make_grid

from gan_runner.loggers import log_image
from gan_runner.metrics.density1d import (
    kde_log_prob,
    model_density,
    optimal_discriminator,
    scott_bandwidth,
)
from gan_runner.plots import density_1d, save_png, scatter_over_data


def to_uint8_grid(images: Tensor, nrow: int = 8) -> Tensor:
    """A (3, H, W) uint8 grid of [-1, 1] images, clamped and rounded (never wrapped)."""
    grid = make_grid(images.float().clamp(-1, 1), nrow=nrow, padding=2, pad_value=1.0)
    return ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class SampleGrid(pl.Callback):
    """Writes samples/g<steps>.png from the fixed latent batch, and logs it as an image; and
    each view the game draws of those samples (`Game.sample_views`) as g<steps>_<name>.png,
    logged as samples/<name>.

    2D data gets a scatter of `n_scatter` samples over the data; 1D data a density plot of
    `n_density` samples with the critic's output and the optimal discriminator.
    """

    def __init__(
        self, dirpath: str, every: int = 500, n_scatter: int = 2500, n_density: int = 10_000
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.dirpath, self.every, self.n_scatter = Path(dirpath), every, n_scatter
        self.n_density = n_density
        self.last_path: Path | None = None
        self._drawn_at = -1  # the generator step of the last grid, so none is drawn twice

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        g_steps = pl_module.counters.g_steps
        if g_steps and g_steps % self.every == 0 and g_steps != self._drawn_at:
            self.draw(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._drawn_at != pl_module.counters.g_steps:
            self.draw(trainer, pl_module)

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drawn_at = g_steps = pl_module.counters.g_steps
        if trainer.global_rank != 0:
            return
        path = self.dirpath / f"g{g_steps:07d}.png"
        samples = pl_module.fixed_samples()
        if samples.dim() == 2 and samples.shape[1] == 1:  # 1D: densities and the critic
            image = self._density(trainer, pl_module, path)
        elif samples.dim() == 2:  # 2D data: a scatter of many samples over the real distribution
            image = self._scatter(trainer, pl_module, path)
        else:
            image = to_uint8_grid(samples.cpu())
            save_png(image, path)
        self.last_path = path
        log_image(trainer.loggers, "samples", image, g_steps)
        for name, view in pl_module.game.sample_views(pl_module, samples).items():
            save_png(view.cpu(), path.with_name(f"{path.stem}_{name}.png"))
            log_image(trainer.loggers, f"samples/{name}", view.cpu(), g_steps)

    def _scatter(self, trainer, pl_module, path: Path) -> Tensor:
        generator = torch.Generator(device=pl_module.device).manual_seed(pl_module.seed)
        z, labels = pl_module.game.draw_latent(pl_module, self.n_scatter, generator)
        fake = pl_module.sample(z, labels).cpu()
        data = trainer.datamodule.data.samples[: self.n_scatter].float().cpu()
        means = getattr(trainer.datamodule.source, "means", None)
        return scatter_over_data(
            fake, data, means, path, title=f"g_steps={pl_module.counters.g_steps}"
        )

    def _density(self, trainer, pl_module, path: Path) -> Tensor:
        generator = torch.Generator(device=pl_module.device).manual_seed(pl_module.seed)
        datamodule = trainer.datamodule
        view = density_view(
            pl_module, datamodule.source, datamodule.data.samples, self.n_density, generator
        )
        return density_1d(view, path, title=f"g_steps={pl_module.counters.g_steps}")


@dataclass
class DensityView:
    """What the 1D sample plot draws, on a display grid x (float64, CPU)."""

    x: Tensor
    p_data: Tensor  # the data's density: exact, or a KDE of data samples (data_kind)
    data_kind: str
    fake: Tensor  # the sampling (EMA) generator's samples, flat
    p_model: Tensor  # their density (model_kind: exact or kde)
    model_kind: str
    scores: Tensor | None  # the critic's raw output on x
    d_critic: Tensor | None  # σ(the critic's log p_data/p_g) when its objective encodes one
    d_star: Tensor  # p_data / (p_data + p_g) against the live generator, the critic's opponent
    logistic: bool  # the scores are that log-ratio themselves: d_critic = σ(D(x))


def _samples(net: Any, module: Any, n: int, generator: torch.Generator) -> Tensor:
    z, labels = module.game.draw_latent(module, n, generator)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            return net(z, labels if module.num_classes else None).float().flatten().cpu()
    finally:
        net.train(was_training)


def critic_scores(module: Any, x: Tensor) -> Tensor:
    """The discriminator's raw scores at points x (float64, flat), in eval mode."""
    net = module.discriminator
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            points = x.float().view(-1, 1).to(module.device)
            # The game's own view of a lone sample (BiGAN's critic pairs it with E(x)).
            critic = getattr(module.game, "critic", None)
            scores = critic(module, points, None) if critic is not None else net(points, None)
            return scores.float().flatten().cpu().double()
    finally:
        net.train(was_training)


def density_view(
    module: Any,
    source: Any,
    data: Tensor,
    n: int,
    generator: torch.Generator,
    points: int = 801,
    fake: Tensor | None = None,
) -> DensityView:
    """The data's and the generator's densities over a grid covering both, the critic's
    output on it and the optimal discriminator D* against the live generator.

    n samples are drawn from the sampling generator, unless `fake` gives the samples to show
    (rejection-sampled ones: then p_g is their KDE, not the generator's exact density).
    """
    given = fake is not None
    if fake is None:
        fake = _samples(module.sampling_generator, module, n, generator)
    fake = fake.detach().flatten().double().cpu()
    data = data.detach().flatten().double().cpu()
    both = torch.cat([data[:100_000], fake])
    low, high = (float(q) for q in torch.quantile(both, torch.tensor([1e-3, 1 - 1e-3]).double()))
    pad = 0.15 * max(high - low, 1e-3)
    x = torch.linspace(low - pad, high + pad, points, dtype=torch.float64)
    if hasattr(source, "log_prob"):
        log_p_data, data_kind = source.log_prob(x), "exact"
    elif data.numel() > 1:
        log_p_data, data_kind = kde_log_prob(data, scott_bandwidth(data))(x), "kde"
    else:  # a source of the user's own that gan-sample does not load: no data to draw
        log_p_data, data_kind = torch.full_like(x, math.nan), "unknown"
    model = model_density(
        module.sampling_generator, module.latent, fake, "kde" if given else "auto"
    )
    live = model
    # The critic plays the live generator: not the EMA copy, nor what rejection kept.
    if given or module.generator is not module.sampling_generator:
        live_fake = _samples(module.generator, module, n, generator)
        live = model_density(module.generator, module.latent, live_fake)
    scores = d_critic = None
    logistic = False
    # Unlabelled 1D data (a conditional critic has no labels here), and a critic on x.
    if not module.num_classes and getattr(module.game, "critic_reads_samples", True):
        scores = critic_scores(module, x)
        objective = getattr(module.game, "objective", None)
        ratio = objective.log_density_ratio(scores) if objective is not None else None
        if ratio is not None:
            d_critic, logistic = torch.sigmoid(ratio), ratio is scores
    return DensityView(
        x=x,
        p_data=log_p_data.exp(),
        data_kind=data_kind,
        fake=fake,
        p_model=model.log_prob(x).exp(),
        model_kind=model.kind,
        scores=scores,
        d_critic=d_critic,
        d_star=optimal_discriminator(log_p_data, live.log_prob(x)),
        logistic=logistic,
    )
