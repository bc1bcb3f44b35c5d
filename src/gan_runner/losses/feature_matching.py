"""Feature matching (Salimans et al. 2016, §3.1) as a generator-side term."""

from __future__ import annotations

from torch import Tensor

from gan_runner.losses.base import Play, Term

NORMS = ("l2_squared", "l1")


class FeatureMatching(Term):
    """G matches the batch mean of the critic's last hidden layer on real and on generated
    data (Salimans et al. 2016, §3.1): a distance between means, not a per-sample loss.

    openai/improved-gan uses the squared L2 distance on MNIST and the mean absolute difference
    of the means on CIFAR-10 and SVHN (`norm: l1`). With `replace_objective` it is the
    generator's whole adversarial loss, as in the paper's semi-supervised GAN.
    """

    needs_real_in_generator_phase = True

    def __init__(
        self, weight: float = 1.0, norm: str = "l2_squared", replace_objective: bool = False
    ) -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if weight <= 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        self.weight, self.norm = weight, norm
        self.replaces_generator_objective = replace_objective

    def generator_term(self, play: Play) -> Tensor | None:
        real = play.real_out.features.float().mean(dim=0)  # computed without a graph
        fake = play.fake_out.features.float().mean(dim=0)
        gap = real - fake
        if self.norm == "l1":
            return self.weight * gap.abs().mean()  # mean |E f(x) - E f(G(z))|
        return self.weight * gap.pow(2).sum()  # ||E f(x) - E f(G(z))||²
