"""AC-GAN's auxiliary classifier (Odena et al. 2017) as a loss term of both players."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.losses.base import Play, Term

HEAD = "class_logits"


class AuxiliaryClassifier(Term):
    """The class log-likelihood L_C of AC-GAN (Odena, Olah & Shlens 2017, arXiv:1610.09585).

    The critic's `class_logits` head classifies real samples by their labels and generated
    ones by the labels G was asked for; G is rewarded when its samples are classified as asked.
    The head returns logits, read by one cross-entropy: a softmax before it (PyTorch-GAN's
    acgan.py) would squash the gradients. `fake_in_discriminator: false` trains the head on
    real samples only, StudioGAN's ACGAN-Mod default ("W/O"), which is not the paper's game.
    """

    heads = (HEAD,)

    def __init__(self, weight: float = 1.0, fake_in_discriminator: bool = True) -> None:
        if weight <= 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        self.weight, self.fake_in_discriminator = weight, fake_in_discriminator

    def check(self, module: Any) -> None:
        if not module.num_classes:
            raise ValueError(
                "terms.auxiliary_classifier classifies samples by their labels, but the run is "
                "unconditional (num_classes=0); use model=acgan on a labelled data set "
                "(data=digits), or set num_classes to the data set's classes"
            )
        super().check(module)
        size = _out_features(module.discriminator.heads[HEAD])
        if size != module.num_classes:
            raise ValueError(
                f"arch.discriminator.heads.{HEAD}={size}, but num_classes={module.num_classes}; "
                f"set arch.discriminator.heads.{HEAD}={module.num_classes}"
            )

    def discriminator_term(self, play: Play) -> Tensor:
        real = play.real_out.heads[HEAD].float()
        loss = F.cross_entropy(real, play.real_labels)  # E[-log P(C=y | x)]
        if self.fake_in_discriminator:
            fake = play.fake_out.heads[HEAD].float()
            loss = loss + F.cross_entropy(fake, play.fake_labels)  # + E[-log P(C=c | G(z, c))]
        return self.weight * loss

    def generator_term(self, play: Play) -> Tensor:
        fake = play.fake_out.heads[HEAD].float()
        return self.weight * F.cross_entropy(fake, play.fake_labels)  # E[-log P(C=c | G(z, c))]


def _out_features(head: nn.Module) -> int:
    return [m for m in head.modules() if isinstance(m, nn.Linear)][-1].out_features
