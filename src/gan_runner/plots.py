"""PNG output: image grids, 1D density plots, 2D scatter plots and loss curves (matplotlib, no
display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402


def save_png(image: Tensor, path: Path) -> None:
    """Save a (C, H, W) uint8 tensor as a PNG, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image.permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array.squeeze(2) if array.shape[2] == 1 else array).save(path)


def figure_to_uint8(fig) -> Tensor:
    """A drawn matplotlib figure as a (3, H, W) uint8 tensor; the figure is closed."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1)


def scatter_over_data(
    fake: Tensor, real: Tensor, means: Tensor | None, path: Path, title: str = ""
) -> Tensor:
    """Generated points over real points (and the mixture means); saved and returned as uint8."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(real[:, 0], real[:, 1], s=2, c="tab:blue", alpha=0.3, label="data")
    ax.scatter(fake[:, 0], fake[:, 1], s=2, c="tab:red", alpha=0.5, label="generated")
    if means is not None:
        ax.scatter(means[:, 0], means[:, 1], s=40, marker="x", c="black", label="modes")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4, fontsize=8)
    ax.set_title(title)
    image = figure_to_uint8(fig)
    save_png(image, path)
    return image


def loss_curves(history: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """One line per logged series against generator steps."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, points in sorted(history.items()):
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=name)
    ax.set_xlabel("generator steps")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if any(history.values()):  # a run shorter than train.log_every logged nothing to label
        ax.legend(fontsize=8)
    save_png(figure_to_uint8(fig), path)


def density_1d(view: Any, path: Path, title: str = "") -> Tensor:
    """1D data: the data density, a histogram and density of generated samples, and below it
    the critic (σ(D) beside D* = p_data/(p_data + p_g) when its objective encodes the ratio,
    else its raw output); saved and returned as uint8. `view` is a callbacks.samples.DensityView.
    """
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7, 6), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    x = view.x.numpy()
    top.hist(
        view.fake.numpy(), bins=100, range=(x[0], x[-1]), density=True, color="tab:red",
        alpha=0.35, label=f"generated ({len(view.fake)})",
    )  # fmt: skip
    top.plot(x, view.p_model.numpy(), c="tab:red", lw=1, label=f"p_g ({view.model_kind})")
    top.plot(x, view.p_data.numpy(), c="tab:blue", lw=2, label=f"p_data ({view.data_kind})")
    top.set_ylabel("density")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(title)
    if view.d_critic is not None:
        name = "σ(D(x))" if view.logistic else "critic's p_data/(p_data+p_g)"
        bottom.plot(x, view.d_critic.numpy(), c="tab:green", lw=2, label=name)
    bottom.plot(x, view.d_star.numpy(), c="black", ls="--", lw=1.5, label="D*(x)")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_ylabel("D(x)")
    bottom.set_xlabel("x")
    if view.scores is not None and view.d_critic is None:  # a critic without a ratio: raw
        raw = bottom.twinx()
        raw.plot(x, view.scores.numpy(), c="tab:green", lw=2, label="critic output")
        raw.set_ylabel("critic output")
        raw.legend(loc="upper left", fontsize=8)
    bottom.legend(loc="upper right", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    image = figure_to_uint8(fig)
    save_png(image, path)
    return image
