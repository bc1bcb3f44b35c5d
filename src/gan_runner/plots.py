"""PNG output: image grids, 2D scatter plots and loss curves (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

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


def _figure_to_tensor(fig) -> Tensor:
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
    image = _figure_to_tensor(fig)
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
    save_png(_figure_to_tensor(fig), path)
