"""EBGAN (Zhao, Mathieu, LeCun 2017, arXiv:1609.03126): the adversarial game on energies.

The critic is an autoencoder (nets/autoencoder.py) whose score D(x) is the energy of its
reconstruction error. It pulls data energies down and pushes generated ones up to a margin m;
the generator lowers its samples' energies, and a pulling-away term on the critic's codes of
each generated batch keeps the samples apart (the paper's remedy for mode collapse).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gan_runner.games.adversarial import AdversarialGame
from gan_runner.games.base import Phase, Terms
from gan_runner.losses.base import Play, Term
from gan_runner.nets.autoencoder import reconstruction_energy
from gan_runner.objectives import NonSaturating, Objective
from gan_runner.plots import figure_to_uint8
from gan_runner.regularizers import Regularizer

log = logging.getLogger(__name__)


def pulling_away(codes: Tensor) -> Tensor:
    """The pulling-away term of a batch of codes S (Zhao et al. 2017, eq. 6): the mean squared
    cosine similarity over pairs i != j; 0 for orthogonal rows, 1 for parallel ones."""
    n = codes.shape[0]
    if n < 2:
        return codes.new_zeros(())
    unit = F.normalize(codes.flatten(1).float(), dim=1)  # rows: scale-invariant, per sample
    cosines = unit @ unit.T
    off_diagonal = cosines.pow(2).sum() - cosines.diagonal().pow(2).sum()
    return off_diagonal / (n * (n - 1))  # 1/(N(N-1)) sum_{i != j} cos^2(S_i, S_j)


class EnergyMargin(Objective):
    """EBGAN's losses on energies (Zhao et al. 2017, eqs. 1-2): the critic's
    D(x) + [m - D(G(z))]^+ with the hinge on each sample, the generator's D(G(z))."""

    def __init__(self, margin: float) -> None:
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}; set game.margin")
        self.margin = float(margin)

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        # Per sample, then the mean: a hinge on the batch-mean energy (PyTorch-GAN's) is 0 as
        # soon as the mean passes m, though half the fakes may still sit below it.
        return real.mean() + F.relu(self.margin - fake).mean()  # E[D(x)] + E[[m - D(G(z))]+]

    def generator_loss(self, fake: Tensor, real: Tensor | None = None) -> Tensor:
        return fake.mean()  # E[D(G(z))], the reconstruction target G(z) not detached

    def critic_logs(self, real: Tensor, fake: Tensor, loss: Tensor) -> dict[str, Tensor]:
        fake = fake.detach()
        return {
            "discriminator/energy_real": real.detach().mean(),
            "discriminator/energy_fake": fake.mean(),
            "discriminator/margin_hinge": F.relu(self.margin - fake).mean(),
            "discriminator/fake_within_margin": (fake < self.margin).float().mean(),
        }


class PullingAway(Term):
    """EBGAN's pulling-away term (Zhao et al. 2017, §2.4) on the critic's codes of the
    generated batch, weighted, in the generator's loss only."""

    def __init__(self, weight: float) -> None:
        if not weight >= 0:
            raise ValueError(
                f"pull_away_weight must be >= 0, got {weight}; set game.pull_away_weight"
            )
        self.weight = float(weight)
        self.similarity: Tensor | None = None

    def generator_term(self, play: Play) -> Tensor | None:
        # At weight 0 it still runs (an exact zero loss), so the control logs its similarity.
        pt = pulling_away(play.fake_out.features)
        self.similarity = pt.detach()
        return self.weight * pt  # lambda_PT * f_PT(Enc(G(z)))

    def logs(self) -> dict[str, Tensor]:
        return {} if self.similarity is None else {"pull_away_similarity": self.similarity}


MARGIN_UNITS = ("energy", "rms")


class EnergyGame(AdversarialGame):
    """The energy-based GAN of Zhao et al. 2017: an autoencoder critic scoring energies, the
    margin loss and the pulling-away term, as the adversarial game with its own objective.

    The game brings its loss (`margin`) and installs the term (`pull_away_weight`). With
    `margin_units: energy` the margin is in the critic's energy units as given (the paper's
    m = 10 with energy=norm over 784 MNIST pixels). With `margin_units: rms` it is a root-mean-
    square reconstruction error per coordinate, and the game sets m to the energy of an error
    of that size on every coordinate (norm: margin * sqrt(dim), sum_squares: margin^2 * dim),
    so one value suits 2D points and images alike. The builder's objective group cannot apply
    to energies: the root default is accepted and unused; any other objective is refused.
    Regularizers and further terms (terms=[...]) join the phases as in the adversarial game.
    """

    observes_real_scores = False  # energies are not logits of "real": ADA's r_t has no meaning

    def __init__(
        self,
        players: Mapping[str, Sequence[str]],
        phases: Sequence[Mapping[str, Any]],
        objective: Objective | None = None,
        regularizers: Mapping[str, Regularizer] | None = None,
        terms: Mapping[str, Term] | None = None,
        margin: float = 0.5,
        margin_units: str = "rms",
        pull_away_weight: float = 0.1,
    ) -> None:
        chosen = objective is not None and not (
            type(objective) is NonSaturating and objective.real_label == 1.0
        )
        if chosen:
            raise ValueError(
                "game=ebgan trains on energies with its own margin loss (game.margin), so "
                f"objective {type(objective).__name__} would be ignored; drop the objective "
                "override"
            )
        if margin_units not in MARGIN_UNITS:
            raise ValueError(
                f"margin_units must be one of {', '.join(MARGIN_UNITS)}, got '{margin_units}'; "
                "set game.margin_units"
            )
        terms = dict(terms or {})
        if "pull_away" in terms:
            raise ValueError("terms.pull_away is game=ebgan's own; set game.pull_away_weight")
        terms["pull_away"] = PullingAway(pull_away_weight)
        super().__init__(players, phases, EnergyMargin(margin), regularizers, terms)
        self.margin_setting = (float(margin), margin_units)
        self.margin_for: tuple[str, int] | None = None  # (energy, dim) m was converted for

    @property
    def margin(self) -> float:
        """m in the critic's energy units (converted from rms once the critic is known)."""
        return self.objective.margin

    def set_margin(self, critic: Any) -> float:
        """Convert the configured margin into `critic`'s energy units (idempotent)."""
        value, units = self.margin_setting
        dim = math.prod(critic.data_shape)
        if units == "rms" and self.margin_for != (critic.energy, dim):
            error = torch.full((1, dim), value)  # the same error on every coordinate
            energy = reconstruction_energy(torch.zeros(1, dim), error, critic.energy)
            self.objective.margin = float(energy)
            self.margin_for = (critic.energy, dim)
        return self.margin

    def check(self, module: Any) -> None:
        critic = module.discriminator
        if not callable(getattr(critic, "reconstruct", None)):
            raise ValueError(
                "game=ebgan needs a critic whose score is a reconstruction energy, but "
                f"arch.discriminator is {type(critic).__name__}; use arch=autoencoder"
            )
        super().check(module)
        value, units = self.margin_setting
        log.info(
            "EBGAN margin m = %.4g in %s energy units (game.margin=%g, margin_units=%s)",
            self.set_margin(critic),
            critic.energy,
            value,
            units,
        )

    def terms(self, phase: Phase, batch: dict[str, Tensor], module: Any, gain: int) -> Terms:
        self.set_margin(module.discriminator)  # a game built without check() converts here
        return super().terms(phase, batch, module, gain)

    @torch.no_grad()
    def sample_views(self, module: Any, samples: Tensor) -> dict[str, Tensor]:
        """The critic's view of generated samples, as (3, H, W) uint8 images by name: images
        beside their reconstructions with each one's energy; 2D points coloured by energy over
        the energy landscape, with the margin's contour."""
        critic = module.discriminator
        samples = samples[:64].to(next(critic.parameters()).device).float()
        title = f"energy ({critic.energy}), margin m = {self.set_margin(critic):.4g}"
        if samples.dim() == 4:
            shown = samples[:8]
            return {
                "energy": _reconstruction_figure(
                    shown, critic.reconstruct(shown), critic(shown), title
                )
            }
        if samples.dim() == 2 and samples.shape[1] == 2:
            return {"energy": _landscape_figure(samples, critic, self.margin, title)}
        return {}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _reconstruction_figure(
    samples: Tensor, reconstructions: Tensor, energies: Tensor, title: str
) -> Tensor:
    """A row of samples over a row of their reconstructions, each column titled by its energy."""
    plt = _pyplot()
    n = len(samples)
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n + 0.4, 2.8), dpi=100, squeeze=False)
    for j in range(n):
        for row, image in enumerate((samples[j], reconstructions[j])):
            pixels = ((image.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
            ax = axes[row, j]
            ax.imshow(
                pixels.squeeze(2) if pixels.shape[2] == 1 else pixels, cmap="gray", vmin=0, vmax=1
            )
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(f"{float(energies[j]):.3g}", fontsize=8)
    axes[0, 0].set_ylabel("sample", fontsize=8)
    axes[1, 0].set_ylabel("Dec(Enc(x))", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return figure_to_uint8(fig)


def _landscape_figure(points: Tensor, critic: Any, margin: float, title: str) -> Tensor:
    """Generated points coloured by energy over the critic's energy on a grid around them."""
    plt = _pyplot()
    low = points.min(0).values.cpu().numpy()
    high = points.max(0).values.cpu().numpy()
    pad = 0.25 * max(float((high - low).max()), 1.0)
    xs = np.linspace(low[0] - pad, high[0] + pad, 120)
    ys = np.linspace(low[1] - pad, high[1] + pad, 120)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2), dtype=points.dtype)
    landscape = critic(grid.to(points.device)).view(len(ys), len(xs)).cpu().numpy()
    energies = critic(points).cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    ax.imshow(
        landscape, origin="lower", extent=(xs[0], xs[-1], ys[0], ys[-1]), cmap="Greys", alpha=0.6
    )
    if landscape.min() < margin < landscape.max():
        ax.contour(xs, ys, landscape, levels=[margin], colors="tab:blue", linewidths=1)
        title += " (blue: energy = m)"
    dots = ax.scatter(*points.cpu().numpy().T, c=energies, s=10, cmap="viridis")
    fig.colorbar(dots, ax=ax, label="energy of each sample")
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    return figure_to_uint8(fig)
