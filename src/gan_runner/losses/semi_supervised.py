"""The K+1 semi-supervised GAN's critic loss (Salimans et al. 2016, §5) on the class head."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.data.module import UNLABELED
from gan_runner.errors import UserError
from gan_runner.losses.base import Play, Term

HEAD = "class_logits"


def unlabeled_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """½(−E log D(x) − E log(1 − D(G(z)))) with D = Z/(Z+1), Z = Σ_k exp l_k: the fake class's
    logit l_{K+1} is fixed at 0 (openai/improved-gan's loss_unl, in its stable form)."""
    real, fake = real_logits.logsumexp(dim=1), fake_logits.logsumexp(dim=1)  # log Z(x)
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())  # −log D = sp(−lse)


def labeled_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """−E log p(y | x, y ≤ K): cross-entropy over the K real classes, on logits (one softmax);
    hidden labels (-1) are skipped."""
    return F.cross_entropy(logits, labels, ignore_index=UNLABELED)  # −l_y + logsumexp_k l_k


class SemiSupervised(Term):
    """The critic as a K+1-way classifier whose fake class has logit 0 (Salimans et al. 2016,
    §5): cross-entropy on labelled reals plus `unlabeled_weight` times the GAN loss of
    D(x) = Z(x)/(Z(x)+1), which replaces the objective's critic loss.

    Labelled reals are the batch's labelled stream (`data.labeled_per_class`: a batch of the
    labelled subset beside every batch of all samples, as in openai/improved-gan); without one,
    the batch's own labelled samples. `unlabeled_weight: 0` leaves the supervised classifier
    alone: the same network, data and steps, the control of the semi-supervised gain.
    """

    heads = (HEAD,)
    replaces_discriminator_objective = True

    def __init__(self, num_classes: int, unlabeled_weight: float = 1.0) -> None:
        if num_classes < 1:
            raise ValueError(
                f"the semi-supervised GAN needs labelled data, but data.num_classes="
                f"{num_classes}; use a labelled data set (data=digits, mnist, cifar10, svhn)"
            )
        if unlabeled_weight < 0:
            raise ValueError(f"unlabeled_weight must be >= 0, got {unlabeled_weight}")
        self.num_classes, self.unlabeled_weight = num_classes, unlabeled_weight

    def check(self, module: Any) -> None:
        super().check(module)
        if module.num_classes:
            raise ValueError(
                f"terms.semi_supervised trains unconditional players (labels reach only the "
                f"critic's {HEAD} head), but num_classes={module.num_classes}; set num_classes=0"
            )
        head = [m for m in module.discriminator.heads[HEAD].modules() if isinstance(m, nn.Linear)]
        if head[-1].out_features != self.num_classes:
            raise ValueError(
                f"arch.discriminator.heads.{HEAD} gives {head[-1].out_features} logits for "
                f"data.num_classes={self.num_classes} classes; set it to {self.num_classes}"
            )

    def discriminator_term(self, play: Play) -> Tensor:
        logits, labels = self._labelled(play)
        loss = labeled_loss(logits.float(), labels)
        if self.unlabeled_weight:
            real = play.real_out.heads[HEAD].float()
            fake = play.fake_out.heads[HEAD].float()
            loss = loss + self.unlabeled_weight * unlabeled_loss(real, fake)
        return loss

    def _labelled(self, play: Play) -> tuple[Tensor, Tensor]:
        """(class logits, labels) of this batch's labelled reals."""
        batch = play.batch
        if "labeled_samples" in batch:  # the critic sees them as it sees every input
            module = play.module
            out = module.game.critic_outputs(module, batch["labeled_samples"], None)
            logits, labels = out.heads[HEAD], batch["labeled_labels"]
        elif play.real_labels is not None:
            logits, labels = play.real_out.heads[HEAD], play.real_labels
        else:
            raise UserError(
                "terms.semi_supervised needs labelled data, but this data set has no labels; "
                "use a labelled one (data=digits)"
            )
        return logits, labels
