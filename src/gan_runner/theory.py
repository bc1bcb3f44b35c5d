"""`gan-theory`: the theory of GANs checked on 1D Gaussians, as a Markdown report with plots.

1. Goodfellow et al. 2014, Prop. 1: for a fixed generator the minimax game's best critic is
   D*(x) = p_data(x) / (p_data(x) + p_g(x)); a trained critic's sigmoid(D) must reach it.
2. Goodfellow et al. 2014, Thm. 1: the game's value at D* is C(G) = 2·JSD(p_data‖p_g) − log 4,
   which is −log 4 exactly when p_g = p_data, and no critic's value exceeds it.
3. Nowozin et al. 2016 (f-GAN), eq. 4: E_P[T] − E_Q[f*(T)] ≤ D_f(P‖Q), tight at T = f′(p/q);
   a trained critic's bound must reach D_f and never exceed it.
4. Nowozin et al. 2016, §4.1: one Gaussian fitted to a mixture by each divergence, trained by
   gan-run's f-GAN recipe, lands where direct minimization of that divergence puts it.

Critics are trained on samples by the project's own objectives and networks, and evaluated by
quadrature on a grid with the densities known, so no Monte-Carlo noise enters the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.divergences import (
    DIVERGENCES,
    bound_on_grid,
    gaussian_divergence,
    quadrature_divergence,
)
from gan_runner.errors import UserError
from gan_runner.nets.gaussian import GaussianGenerator
from gan_runner.nets.mlp import MLPDiscriminator
from gan_runner.objectives import FDivergence, Minimax
from gan_runner.plots_theory import (
    bulk,
    plot_f_bounds,
    plot_gaussian_fit,
    plot_optimal_discriminator,
)

LOG4 = math.log(4.0)
# Wide enough for every Gaussian here to have < 1e-20 mass outside; fine enough that the
# trapezoid rule's error (< 1e-6) is far below every tolerance.
DEFAULT_OUT = Path("outputs/theory")
GRID = torch.linspace(-15.0, 15.0, 30001, dtype=torch.float64)


@dataclass(frozen=True)
class Normal:
    """N(mean, std²) in 1D: density on a grid and seeded samples."""

    mean: float
    std: float

    def pdf(self, x: Tensor) -> Tensor:
        return torch.exp(-0.5 * ((x - self.mean) / self.std) ** 2) / (
            self.std * math.sqrt(2 * math.pi)
        )

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.mean + self.std * torch.randn(n, 1, generator=generator)

    def __str__(self) -> str:
        return f"N({self.mean:g}, {self.std:g}²)"


class QuadraticCritic(nn.Module):
    """V(x) = a + b·x + c·x²: log p/q of two Gaussians is quadratic, so for most divergences
    this family holds the optimal critic exactly (a check with no approximation error)."""

    def __init__(self) -> None:
        super().__init__()
        self.coefficients = nn.Parameter(torch.zeros(3))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        x = x.flatten(1)[:, 0]
        a, b, c = self.coefficients
        return a + b * x + c * x * x


def mlp_critic(activation: str = "leaky_relu") -> nn.Module:
    """gan_runner's MLP critic at the size of f-GAN's 1D experiment: 1→64→64→1."""
    return MLPDiscriminator(data_shape=[1], hidden=[64, 64], activation=activation)


def tanh_critic() -> nn.Module:
    """Smooth, as f-GAN's 1D critic: T* = f′(p/q) is smooth, and tanh units fit it with fewer
    kinks than leaky ReLUs."""
    return mlp_critic("tanh")


@dataclass(frozen=True)
class Training:
    """How a critic is trained: Adam, a cosine decay to 2% of lr (the last steps average out
    the SGD noise on the critic's tails), batches of real and fake samples."""

    steps: int = 2000
    batch: int = 1024
    lr: float = 2e-3


def train_critic(
    make_critic: Callable[[], nn.Module],
    loss: Callable[[Tensor, Tensor], Tensor],
    real: Callable[[int, torch.Generator], Tensor],
    fake: Callable[[int, torch.Generator], Tensor],
    training: Training,
    seed: int,
) -> nn.Module:
    """Minimize `loss(critic(real), critic(fake))` over a new critic's parameters only."""
    torch.manual_seed(seed)  # its initial weights: the report is the same from any caller
    critic = make_critic()
    noise = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(critic.parameters(), lr=training.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, training.steps, eta_min=training.lr * 0.02
    )
    for _ in range(training.steps):
        x_real, x_fake = real(training.batch, noise), fake(training.batch, noise)
        value = loss(critic(x_real).float(), critic(x_fake).float())
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
    return critic


@torch.no_grad()
def on_grid(critic: nn.Module, x: Tensor = GRID) -> Tensor:
    """The critic's raw outputs on the grid, in float64."""
    return critic(x.float().unsqueeze(1)).double()


def game_value(v: Tensor, p: Tensor, q: Tensor, x: Tensor = GRID) -> float:
    """V(D) = ∫ p log sigmoid(v) + q log(1 − sigmoid(v)), the minimax game's value."""
    integrand = -p * F.softplus(-v) - q * F.softplus(v)
    return float(torch.trapezoid(integrand, x))


def jsd(p: Tensor, q: Tensor, x: Tensor = GRID) -> float:
    """JSD(P‖Q) = ½ KL(P‖M) + ½ KL(Q‖M), M = (P + Q)/2, by quadrature (nats)."""
    m = (p + q) / 2

    def kl(a: Tensor) -> Tensor:
        return torch.where(a > 0, a * (torch.log(a) - torch.log(m)), torch.zeros_like(a))

    return float(torch.trapezoid((kl(p) + kl(q)) / 2, x))


# --------------------------------------------------------------------------- results


@dataclass
class Check:
    """One check's verdict, its figures and the plot that shows it."""

    name: str
    title: str
    passed: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    criteria: list[str] = field(default_factory=list)
    plot: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    training: Training = Training()
    out: Path = DEFAULT_OUT
    fit_g_steps: int = 2000


def frozen_generator(normal: Normal) -> GaussianGenerator:
    """gan_runner's Gaussian generator with fixed parameters: p_g known in closed form."""
    return GaussianGenerator(1, [1], mean=normal.mean, std=normal.std, trainable=False)


def sampler(generator: nn.Module) -> Callable[[int, torch.Generator], Tensor]:
    def draw(n: int, noise: torch.Generator) -> Tensor:
        with torch.no_grad():
            return generator(torch.randn(n, 1, generator=noise)).float()

    return draw


def check_optimal_discriminator(settings: Settings, out: Path) -> tuple[Check, Check]:
    """Checks 1 and 2: D* and the game's value, for p_g ≠ p_data and p_g = p_data."""
    started = time.perf_counter()
    data = Normal(0.0, 1.0)
    pairs = [("p_g ≠ p_data", Normal(1.0, 1.5)), ("p_g = p_data", Normal(0.0, 1.0))]
    rows_d, rows_v, curves = [], [], []
    d_passed = v_passed = True
    for index, (label, model) in enumerate(pairs):
        critic = train_critic(
            mlp_critic,
            Minimax().discriminator_loss,
            lambda n, g: data.sample(n, g).float(),
            sampler(frozen_generator(model)),
            settings.training,
            settings.seed + index,
        )
        v = on_grid(critic)
        p, q = data.pdf(GRID), model.pdf(GRID)
        d, d_star = torch.sigmoid(v), p / (p + q)
        inside = bulk(p, q, GRID)
        gap = float((d - d_star).abs()[inside].max())
        value, optimum = game_value(v, p, q), 2 * jsd(p, q) - LOG4
        d_ok = gap <= 0.05
        tolerance = 0.01 if model == data else 0.02
        v_ok = abs(value - optimum) <= tolerance and value <= optimum + 1e-6
        d_passed &= d_ok
        v_passed &= v_ok
        span = GRID[inside]
        rows_d.append(
            {
                "case": f"{label}: p_data = {data}, p_g = {model}",
                "bulk": f"[{float(span[0]):.2f}, {float(span[-1]):.2f}]",
                "max |sigmoid(D) − D*|": round(gap, 4),
                "passed": d_ok,
            }
        )
        rows_v.append(
            {
                "case": f"{label}: p_data = {data}, p_g = {model}",
                "V(D)": round(value, 5),
                "C(G) = 2·JSD − log 4": round(optimum, 5),
                "|V(D) − C(G)|": round(abs(value - optimum), 5),
                "tolerance": tolerance,
                "V(D) ≤ C(G)": value <= optimum + 1e-6,
                "passed": v_ok,
            }
        )
        curves.append((label, data, model, GRID, p, q, d, d_star, inside))
    plot = plot_optimal_discriminator(curves, out / "optimal_discriminator.png")
    seconds = time.perf_counter() - started
    first = Check(
        "optimal_discriminator",
        "Optimal discriminator (Goodfellow et al. 2014, Prop. 1)",
        d_passed,
        rows_d,
        ["max |sigmoid(D(x)) − D*(x)| ≤ 0.05 over the middle 99% of (p_data + p_g)/2"],
        plot.name,
        seconds,
    )
    second = Check(
        "game_value",
        "Value at the optimum (Goodfellow et al. 2014, Thm. 1)",
        v_passed,
        rows_v,
        [
            "p_g = p_data: |V(D) + log 4| ≤ 0.01",
            "p_g ≠ p_data: |V(D) − (2·JSD − log 4)| ≤ 0.02 (JSD by quadrature)",
            "always V(D) ≤ C(G): C(G) is the maximum over all critics",
        ],
        plot.name,
        seconds,
    )
    return first, second


# The default pair of research/zoo-games.md §5.4, where every divergence is finite. Neyman's
# T* = 1 − (q/p)² explodes where Q's tail is fatter than P's (its sample objective is unbounded
# below there), so it is checked with the roles swapped: Q = N(0, 1) is the thinner one.
PAIR = (Normal(0.0, 1.0), Normal(1.0, 1.2))
PAIRS = {"neyman": (Normal(1.0, 1.2), Normal(0.0, 1.0))}


def lowest(function: Callable[[np.ndarray], float], starts: Sequence[np.ndarray]) -> Any:
    """The best of Nelder-Mead runs from several starts (scipy's result object)."""
    from scipy.optimize import minimize

    options = {"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000}
    runs = [minimize(function, s, method="Nelder-Mead", options=options) for s in starts]
    return min(runs, key=lambda r: r.fun)


def quadratic_family_optimum(name: str, p: Tensor, q: Tensor) -> float:
    """The best bound any quadratic critic attains (Nelder-Mead on the quadrature objective):
    the reference for the quadratic critic, whose family cannot hold T* for every divergence."""

    def negative_bound(coefficients: np.ndarray) -> float:
        a, b, c = (float(v) for v in coefficients)
        v = a + b * GRID + c * GRID * GRID
        value = bound_on_grid(name, v, p, q, GRID)
        return -value if math.isfinite(value) else 1e9

    best = lowest(negative_bound, [np.zeros(3), np.array([0.5, 0.5, -0.1])])
    return -float(best.fun)


def check_f_bounds(settings: Settings, out: Path) -> Check:
    """Check 3: each divergence's trained bound against its true value."""
    started = time.perf_counter()
    rows, panels, passed = [], [], True
    quadratic_training = Training(
        steps=settings.training.steps, batch=settings.training.batch, lr=0.02
    )
    for index, name in enumerate(DIVERGENCES):
        data, model = PAIRS.get(name, PAIR)
        p, q = data.pdf(GRID), model.pdf(GRID)
        true = gaussian_divergence(name, (data.mean, data.std), (model.mean, model.std))
        objective = FDivergence(name)
        bounds = {}
        critics = {}
        for kind, make, training in (
            ("mlp", tanh_critic, settings.training),
            ("quadratic", QuadraticCritic, quadratic_training),
        ):
            critic = train_critic(
                make,
                objective.discriminator_loss,
                lambda n, g, d=data: d.sample(n, g).float(),
                lambda n, g, m=model: m.sample(n, g).float(),
                training,
                settings.seed + 100 + index,
            )
            critics[kind] = on_grid(critic)
            bounds[kind] = bound_on_grid(name, critics[kind], p, q, GRID)
        family = quadratic_family_optimum(name, p, q)
        scale = abs(true)
        mlp_ok = abs(bounds["mlp"] - true) <= 0.05 * scale and bounds["mlp"] <= true + 1e-3
        quad_ok = (
            bounds["quadratic"] <= true + 1e-3
            and family <= true + 1e-3
            and abs(bounds["quadratic"] - family) <= 0.05 * scale
        )
        passed &= mlp_ok and quad_ok
        rows.append(
            {
                "divergence": name,
                "P ‖ Q": f"{data} ‖ {model}",
                "D_f equals": DIVERGENCES[name].equals,
                "true": round(true, 5),
                "MLP bound": round(bounds["mlp"], 5),
                "MLP / true": round(bounds["mlp"] / true, 4),
                "quadratic bound": round(bounds["quadratic"], 5),
                "quadratic family's best": round(family, 5),
                "passed": mlp_ok and quad_ok,
            }
        )
        panels.append((name, data, model, p, q, critics))
    plot = plot_f_bounds(panels, GRID, out / "f_bounds.png")
    return Check(
        "f_bounds",
        "f-divergence bounds (Nowozin et al. 2016, eq. 4)",
        passed,
        rows,
        [
            "MLP critic: |bound − D_f| ≤ 5% of |D_f|, and bound ≤ D_f + 1e-3 (a bound above "
            "the divergence means a wrong f* or g_f)",
            "quadratic critic: within 5% of the best quadratic critic (Nelder-Mead on the "
            "same integral), and neither above D_f + 1e-3",
        ],
        plot.name,
        time.perf_counter() - started,
    )


# --------------------------------------------------------------------------- the Gaussian fit

FIT_DIVERGENCES = ("kl", "reverse_kl", "jensen_shannon", "jeffrey", "pearson")


def best_gaussian(name: str, mixture_pdf: Callable[[Tensor], Tensor]) -> tuple[float, float]:
    """θ* = argmin over (μ, σ) of D_f(P‖N(μ, σ²)) by quadrature: the paper's reference."""
    p = mixture_pdf(GRID)
    mean = float(torch.trapezoid(p * GRID, GRID))
    std = float(torch.trapezoid(p * (GRID - mean) ** 2, GRID)) ** 0.5

    def objective(theta: np.ndarray) -> float:
        q = Normal(float(theta[0]), math.exp(float(theta[1]))).pdf(GRID)
        value = quadrature_divergence(name, p, q, GRID)
        return value if math.isfinite(value) else 1e9

    starts = [np.array([mean, math.log(std)])] + [
        np.array([m, math.log(std / 2)]) for m in (mean - std, mean + std)
    ]
    best = lowest(objective, starts)
    return float(best.x[0]), math.exp(float(best.x[1]))


def fit_with_gan_run(name: str, settings: Settings, workdir: Path) -> tuple[float, float]:
    """Train gan-run's f-GAN Gaussian fit (conf/experiment/fgan_gaussian_fit.yaml); its (μ, σ)."""
    from gan_runner.bench.timing import compose_run
    from gan_runner.train import assemble, build_trainer

    overrides = [
        "experiment=fgan_gaussian_fit",
        f"objective.divergence={name}",
        f"train.g_steps={settings.fit_g_steps}",
        f"seed={settings.seed}",
        "callbacks=none",
        "logger=none",
        "metrics=[]",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    cfg = compose_run(overrides, workdir / name)
    run = assemble(cfg)
    trainer = build_trainer(cfg, run.callbacks, run.loggers)
    trainer.fit(run.module, datamodule=run.datamodule)
    generator = run.module.generator
    return float(generator.mean.detach()[0]), float(generator.log_std.detach().exp()[0])


def check_gaussian_fit(settings: Settings, out: Path) -> Check:
    """Check 4: f-GAN's Gaussian fit to a mixture, against direct minimization."""
    from gan_runner.bench.timing import compose_run

    started = time.perf_counter()
    cfg = compose_run(["data=mixture1d"], out / "fit")
    from hydra.utils import instantiate

    mixture = instantiate(cfg.data.source)
    rows, fits, passed = [], [], True
    for name in FIT_DIVERGENCES:
        mean_star, std_star = best_gaussian(name, mixture.pdf)
        mean, std = fit_with_gan_run(name, settings, out / "fit")
        ok = abs(mean - mean_star) <= 0.1 and abs(std - std_star) <= 0.1
        passed &= ok
        p = mixture.pdf(GRID)
        at_fit = quadrature_divergence(name, p, Normal(mean, std).pdf(GRID), GRID)
        at_best = quadrature_divergence(name, p, Normal(mean_star, std_star).pdf(GRID), GRID)
        rows.append(
            {
                "divergence": name,
                "μ* (quadrature)": round(mean_star, 3),
                "σ* (quadrature)": round(std_star, 3),
                "μ̂ (gan-run)": round(mean, 3),
                "σ̂ (gan-run)": round(std, 3),
                "D_f(P‖θ*)": round(at_best, 4),
                "D_f(P‖θ̂)": round(at_fit, 4),
                "passed": ok,
            }
        )
        fits.append((name, mean_star, std_star, mean, std))
    plot = plot_gaussian_fit(mixture.pdf, fits, GRID, out / "gaussian_fit.png")
    return Check(
        "gaussian_fit",
        "One Gaussian fitted to a mixture (Nowozin et al. 2016, §4.1)",
        passed,
        rows,
        [
            f"gan-run experiment=fgan_gaussian_fit objective.divergence=<name>, "
            f"train.g_steps={settings.fit_g_steps}: |μ̂ − μ*| ≤ 0.1 and |σ̂ − σ*| ≤ 0.1, θ* "
            "minimizing the divergence by quadrature (the paper's protocol)"
        ],
        plot.name,
        time.perf_counter() - started,
    )


CHECKS: dict[str, Callable[[Settings, Path], Any]] = {
    "optimal_discriminator": check_optimal_discriminator,  # also yields game_value
    "f_bounds": check_f_bounds,
    "gaussian_fit": check_gaussian_fit,
}


def run_checks(names: Sequence[str], settings: Settings, out: Path) -> list[Check]:
    out.mkdir(parents=True, exist_ok=True)
    results: list[Check] = []
    for name in names:
        produced = CHECKS[name](settings, out)
        results.extend(produced if isinstance(produced, tuple) else [produced])
    return results


def markdown(results: Sequence[Check], settings: Settings, argv: Sequence[str]) -> str:
    lines = [
        "# gan-theory report",
        "",
        f"`gan-theory {' '.join(argv)}` on {datetime.now().isoformat(timespec='seconds')}, "
        f"torch {torch.__version__}, 1 torch thread, seed "
        f"{settings.seed}; critics: {settings.training.steps} Adam steps, batch "
        f"{settings.training.batch} + {settings.training.batch}, evaluated by quadrature on "
        f"{len(GRID):,} points over [{float(GRID[0]):g}, {float(GRID[-1]):g}].",
        "",
        "| check | result | seconds |",
        "|---|---|---|",
    ]
    lines += [
        f"| {c.title} | {'**pass**' if c.passed else '**FAIL**'} | {c.seconds:.0f} |"
        for c in results
    ]
    shown: set[str] = set()
    for check in results:
        lines += ["", f"## {check.title}: {'pass' if check.passed else 'FAIL'}", ""]
        lines += [f"- {criterion}" for criterion in check.criteria]
        if check.rows:
            header = list(check.rows[0])
            cells = " | ".join(_cell(k) for k in header)
            lines += ["", f"| {cells} |", "|" + "---|" * len(header)]
            for row in check.rows:
                lines.append("| " + " | ".join(_cell(row[k]) for k in header) + " |")
        if check.plot and check.plot not in shown:  # two checks may share one figure
            shown.add(check.plot)
            lines += ["", f"![{check.name}]({check.plot})"]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value.replace("|", "\\|")  # a literal bar inside a Markdown table cell
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return str(value)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gan-theory", description="GAN theory checked on 1D Gaussians, with a report."
    )
    parser.add_argument(
        "--checks",
        default=",".join(CHECKS),
        help=f"comma-separated subset of {', '.join(CHECKS)} (default: all)",
    )
    parser.add_argument("--out", type=Path, help="report folder (default outputs/theory/<time>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2000, help="critic training steps")
    parser.add_argument(
        "--fit-g-steps", type=int, default=2000, help="generator steps of each Gaussian fit"
    )
    return parser.parse_args(list(argv))


def theory_out(argv: Sequence[str]) -> Path:
    """Where a gan-theory command line writes (its --out, else the default folder's root)."""
    for i, arg in enumerate(argv):
        if arg == "--out" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--out="):
            return Path(arg.removeprefix("--out="))
    return DEFAULT_OUT


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    names = [n.strip() for n in args.checks.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise UserError(
            f"--checks {args.checks}: no check named {', '.join(unknown) or '(none)'}; choose "
            f"from {', '.join(CHECKS)}"
        )
    if args.steps < 1 or args.fit_g_steps < 1:
        raise UserError("--steps and --fit-g-steps must be >= 1")
    out = args.out or DEFAULT_OUT / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    settings = Settings(args.seed, Training(steps=args.steps), out, args.fit_g_steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: a second thread only adds hand-off cost
    # The Gaussian fits build Lightning trainers: their banners would bury the verdicts.
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        results = run_checks(names, settings, out)
    finally:
        torch.set_num_threads(threads)
    report = out / "report.md"
    report.write_text(markdown(results, settings, argv))
    (out / "results.json").write_text(
        json.dumps([asdict(r) for r in results], indent=2, default=str)
    )
    for check in results:
        print(f"{'pass' if check.passed else 'FAIL'}  {check.title}")
    print(f"Report: {report.resolve()}")
    return 0 if all(c.passed for c in results) else 1
