"""Adversarial objectives: critic scores in, the discriminator and generator losses out.

Scores are raw (no sigmoid). Both losses are minimized. `real` and `fake` are the critic's scores
on a batch of data and a batch of generated samples, shape (N,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_runner.divergences import divergence as find_divergence


class Objective:
    """The adversarial game: a discriminator loss and a generator loss on critic scores."""

    # A Wasserstein critic estimates a distance and needs a Lipschitz constraint; weight clipping
    # is only meaningful for such objectives (validation warns otherwise).
    wasserstein: bool = False

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        raise NotImplementedError

    def generator_loss(self, fake: Tensor, real: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def log_density_ratio(self, scores: Tensor) -> Tensor | None:
        """log p_data / p_g as the optimal critic of this game encodes it in its scores, or None
        when its optimum does not determine the ratio (used by rejection sampling)."""
        return None

    def critic_logs(self, real: Tensor, fake: Tensor, loss: Tensor) -> dict[str, Tensor]:
        """Diagnostics of the critic's step, logged as train/<key> beside its losses."""
        return {}


class _LogisticTarget:
    """One-sided label smoothing for the logistic games (Salimans et al. 2016, §3.4)."""

    def __init__(self, real_label: float = 1.0) -> None:
        if not 0.5 < real_label <= 1.0:
            raise ValueError(f"real_label must be in (0.5, 1], got {real_label}")
        self.real_label = real_label

    def logistic_discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        # -[t log sigmoid(real) + (1-t) log(1-sigmoid(real))] - log(1 - sigmoid(fake))
        target = torch.full_like(real, self.real_label)
        real_term = F.binary_cross_entropy_with_logits(real, target)
        return real_term + F.softplus(fake).mean()

    def log_density_ratio(self, scores: Tensor) -> Tensor | None:
        # D* = sigmoid(score) = p_data / (p_data + p_g) (Goodfellow et al. 2014, Prop. 1), so the
        # score is the log-ratio; label smoothing t < 1 caps D* at t, which the logit ignores.
        return scores


class Minimax(_LogisticTarget, Objective):
    """The saturating minimax game of Goodfellow et al. 2014 (G minimizes log(1 - D(G(z))))."""

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        return self.logistic_discriminator_loss(real, fake)

    def generator_loss(self, fake: Tensor, real: Tensor | None = None) -> Tensor:
        return -F.softplus(fake).mean()  # log(1 - sigmoid(fake)) = -softplus(fake)


class NonSaturating(_LogisticTarget, Objective):
    """The non-saturating game of Goodfellow et al. 2014, §3 (G maximizes log D(G(z)))."""

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        return self.logistic_discriminator_loss(real, fake)

    def generator_loss(self, fake: Tensor, real: Tensor | None = None) -> Tensor:
        return F.softplus(-fake).mean()  # -log sigmoid(fake)


class Wasserstein(Objective):
    """The Wasserstein-1 critic game of Arjovsky et al. 2017 (Kantorovich-Rubinstein dual)."""

    wasserstein = True

    def __init__(self, drift: float = 0.0) -> None:
        if drift < 0:
            raise ValueError(f"objective.drift={drift} must be >= 0 (PGGAN's ε: 0.001)")
        self.drift = drift

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        loss = fake.mean() - real.mean()  # E[f(G(z))] - E[f(x)]
        if self.drift:
            # Progressive GAN's ε-drift keeps real scores near 0 (Karras et al. 2018, App. A.1).
            loss = loss + self.drift * real.square().mean()  # + ε E[f(x)²]
        return loss

    def generator_loss(self, fake: Tensor, real: Tensor | None = None) -> Tensor:
        return -fake.mean()  # -E[f(G(z))]


class Hinge(Objective):
    """The hinge game of Lim & Ye 2017 and Miyato et al. 2018 (SNGAN)."""

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        return (
            F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        )  # E[max(0,1-D(x))] + E[max(0,1+D(G(z)))]

    def generator_loss(self, fake: Tensor, real: Tensor | None = None) -> Tensor:
        return -fake.mean()  # -E[D(G(z))]


class LeastSquares(Objective):
    """The least-squares game of Mao et al. 2017 (LSGAN, a-b-c coding with defaults 0-1-1)."""

    def __init__(self, fake_label: float = 0.0, real_label: float = 1.0, target: float = 1.0):
        if fake_label == real_label:
            raise ValueError("fake_label and real_label must differ")
        self.fake_label, self.real_label, self.target = fake_label, real_label, target

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        # 1/2 E[(D(x)-b)^2] + 1/2 E[(D(G(z))-a)^2]
        return (
            0.5 * ((real - self.real_label) ** 2).mean()
            + 0.5 * ((fake - self.fake_label) ** 2).mean()
        )

    def generator_loss(self, fake: Tensor, real: Tensor | None = None) -> Tensor:
        return 0.5 * ((fake - self.target) ** 2).mean()  # 1/2 E[(D(G(z))-c)^2]

    def log_density_ratio(self, scores: Tensor) -> Tensor | None:
        # D* = (b p_data + a p_g) / (p_data + p_g) (Mao et al. 2017, Prop. 1), so
        # p_data / p_g = (D - a) / (b - D); scores outside (a, b) are clamped just inside.
        a, b = self.fake_label, self.real_label
        low, high = min(a, b), max(a, b)
        span = high - low
        d = scores.double().clamp(low + 1e-6 * span, high - 1e-6 * span)
        return ((d - a) / (b - d)).log().to(scores.dtype)


class FDivergence(Objective):
    """The f-GAN game of Nowozin, Cseke & Tomioka 2016 (arXiv:1606.00709): the critic maximizes
    F = E_P[g_f(V)] − E_Q[f*(g_f(V))], a lower bound on D_f(P‖Q), and the generator lowers it.

    `divergence` names a row of gan_runner.divergences.DIVERGENCES. `generator_loss`: `saddle`
    descends F itself; `non_saturating` ascends E_Q[g_f(V)], the paper's practical choice (§3.2),
    Goodfellow's −log D trick for the GAN divergence.
    """

    generator_losses = ("non_saturating", "saddle")
    # Its critic estimates D_f: weight clipping or a 1-centred penalty would make it a
    # Lipschitz-bounded IPM critic instead (train.check_lipschitz_regularizers refuses them).
    refuses_lipschitz_critic = True

    def __init__(self, divergence: str = "gan", generator_loss: str = "non_saturating") -> None:
        self.divergence = find_divergence(divergence)
        if generator_loss not in self.generator_losses:
            raise ValueError(
                f"generator_loss={generator_loss!r} is unknown; choose one of "
                f"{', '.join(self.generator_losses)}"
            )
        self.saddle = generator_loss == "saddle"

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        d = self.divergence  # −(E_P[g_f(V)] − E_Q[f*(g_f(V))])
        return -(d.activation(real).mean() - d.conjugate_of_activation(fake).mean())

    def generator_loss(self, fake: Tensor, real: Tensor | None = None) -> Tensor:
        if self.saddle:
            return -self.divergence.conjugate_of_activation(fake).mean()  # −E_Q[f*(g_f(V))]
        return -self.divergence.activation(fake).mean()  # −E_Q[g_f(V)]

    def log_density_ratio(self, scores: Tensor) -> Tensor | None:
        # T* = f′(p/q): where f′ inverts in closed form the raw score gives log p/q.
        log_ratio = self.divergence.log_ratio
        return None if log_ratio is None else log_ratio(scores)

    def critic_logs(self, real: Tensor, fake: Tensor, loss: Tensor) -> dict[str, Tensor]:
        # The critic's loss is −F on this batch: its negation estimates D_f(P‖Q) from below.
        return {"divergence_bound": -loss.detach()}
