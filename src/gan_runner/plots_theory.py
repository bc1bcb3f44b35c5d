"""The figures of `gan-theory`'s report (matplotlib, no display)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from gan_runner.divergences import DIVERGENCES  # noqa: E402


def bulk(p: Tensor, q: Tensor, x: Tensor, mass: float = 0.99) -> Tensor:
    """Where the middle `mass` of (p + q)/2 lies."""
    m = (p + q) / 2
    cdf = torch.cat([m.new_zeros(1), torch.cumulative_trapezoid(m, x, dim=0)])
    tail = (1 - mass) / 2
    return (cdf >= tail) & (cdf <= 1 - tail)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_optimal_discriminator(curves: Sequence[tuple], path: Path) -> Path:
    """Per case: both densities, and sigmoid(D) beside D* = p/(p + q) over the bulk."""
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (label, data, model, x, p, q, d, d_star, inside) in zip(axes[0], curves):
        span = x[inside]
        view = (x >= span[0] - 1.5) & (x <= span[-1] + 1.5)
        xs = x[view].numpy()
        ax.plot(xs, p[view].numpy(), color="tab:blue", label=f"p_data = {data}")
        ax.plot(xs, q[view].numpy(), color="tab:red", label=f"p_g = {model}")
        twin = ax.twinx()
        twin.plot(xs, d_star[view].numpy(), "k--", label="D* = p_data / (p_data + p_g)")
        twin.plot(xs, d[view].numpy(), color="tab:green", label="sigmoid(D), trained")
        ax.axvspan(float(span[0]), float(span[-1]), color="0.92", label="bulk (judged here)")
        twin.set_ylim(0, 1)
        ax.set_title(label)
        ax.set_xlabel("x")
        ax.set_ylabel("density")
        twin.set_ylabel("D(x)")
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        twin.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper right")
    return _save(fig, path)


def _f_prime(name: str, ratio: Tensor) -> Tensor:
    """f′(p/q), the optimal T, by autograd on the divergence's f."""
    u = ratio.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(DIVERGENCES[name].f(u).sum(), u)
    return grad.detach()


def plot_f_bounds(panels: Sequence[tuple], x: Tensor, path: Path) -> Path:
    """Per divergence: the trained critics' T = g_f(V) beside the optimal T* = f′(p/q)."""
    columns = 3
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, (name, data, model, p, q, critics) in zip(axes.flat, panels):
        view = bulk(p, q, x)  # the tails, where T* runs off, hold no samples of either
        xs = x[view].numpy()
        t_star = _f_prime(name, (p / q)[view])
        activation = DIVERGENCES[name].activation
        ax.plot(xs, t_star.numpy(), "k--", label="T* = f′(p/q)")
        for kind, color in (("mlp", "tab:green"), ("quadratic", "tab:orange")):
            ax.plot(xs, activation(critics[kind][view]).numpy(), color=color, label=kind)
        ax.set_title(f"{name}: {data} ‖ {model}", fontsize=9)
        low, high = float(t_star.min()), float(t_star.max())
        pad = 0.25 * (high - low + 1e-9)
        ax.set_ylim(low - pad, high + pad)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return _save(fig, path)


def plot_gaussian_fit(
    mixture_pdf: Callable[[Tensor], Tensor], fits: Sequence[tuple], x: Tensor, path: Path
) -> Path:
    """The mixture, and per divergence the Gaussian gan-run fitted beside the best one."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    p = mixture_pdf(x)
    view = p > 1e-4 * float(p.max())
    lo, hi = float(x[view][0]) - 2, float(x[view][-1]) + 2
    xs = x[(x >= lo) & (x <= hi)]
    ax.fill_between(xs.numpy(), mixture_pdf(xs).numpy(), color="0.85", label="data (mixture)")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, mean_star, std_star, mean, std), color in zip(fits, colors):
        for mu, sigma, style, what in (
            (mean, std, "-", "gan-run"),
            (mean_star, std_star, ":", "θ*"),
        ):
            density = torch.exp(-0.5 * ((xs - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
            ax.plot(xs.numpy(), density.numpy(), style, color=color, label=f"{name} ({what})")
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)
