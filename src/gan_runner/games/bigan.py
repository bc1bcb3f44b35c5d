"""BiGAN (Donahue, Krähenbühl & Darrell 2017, arXiv:1605.09782) and ALI (Dumoulin et al. 2017,
arXiv:1606.00704): a generator G: z -> x and an encoder E: x -> z play one side, a joint critic
on (x, z) pairs the other, so that at the optimum E inverts G.

The critic tells real pairs (x, E(x)) from fake pairs (G(z), z); the generator+encoder player
minimizes the critic's own loss with the two pairs' roles swapped (ALI's code and BiGAN's
inverted labels: on logits sp(D(x, E(x))) + sp(-D(G(z), z)) with objective=non_saturating).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gan_runner.games.adversarial import AdversarialGame
from gan_runner.games.base import Terms


class BiGANGame(AdversarialGame):
    """BiGAN/ALI's game (Donahue et al. 2017; Dumoulin et al. 2017): min over G, E, max over D
    of E_x[log D(x, E(x))] + E_z[log(1 - D(G(z), z))], with alternating phases.

    Players: `generator: [generator, encoder]` and `discriminator: [discriminator]`. The critic
    must take the latent (`takes_latent`, nets/encoder.py's JointCritic). ALI updates both
    players from one forward pass (simultaneous); here they alternate, with fresh latents in
    each phase, as every other game of this package does.
    """

    observes_real_scores = False  # its critic phase is its own: it shows ADA no scores

    def check(self, module: Any) -> None:
        if not hasattr(module, "encoder"):
            raise ValueError(
                "game=bigan needs an encoder network (arch.encoder with a _target_); use "
                "arch=bigan_mlp"
            )
        if not getattr(module.discriminator, "takes_latent", False):
            raise ValueError(
                f"game=bigan needs a critic on (x, z) pairs, but arch.discriminator is "
                f"{type(module.discriminator).__name__}; use arch=bigan_mlp (JointCritic)"
            )
        if module.num_classes:
            raise ValueError(
                f"game=bigan is unconditional, got num_classes={module.num_classes}; set "
                "num_classes=0"
            )
        extras = [*self.regularizers, *self.extra_terms]
        if extras:
            raise ValueError(
                f"game=bigan takes no regularizers or terms (got {', '.join(extras)}); set "
                "regularizer=[] terms=[]"
            )

    def critic(self, module: Any, samples: Tensor, labels: Tensor | None) -> Tensor:
        """A lone sample scored as the critic scores a real pair: D(x, E(x))."""
        return module.discriminator(samples, None, z=module.encoder(samples))

    def _pairs(self, batch: dict[str, Tensor], module: Any, detach: bool) -> tuple[Tensor, ...]:
        """Critic scores of the real pairs (x, E(x)) and the fake pairs (G(z), z)."""
        real = batch["samples"]
        z, _ = module.draw_latent(real.shape[0])
        with torch.set_grad_enabled(not detach):  # the critic's step: no graph through G or E
            encoded, fake = module.encoder(real), module.generator(z, None)
        real_scores = module.discriminator(real, None, z=encoded).float()
        fake_scores = module.discriminator(fake, None, z=z).float()
        return real_scores, fake_scores

    def _discriminator_terms(self, batch: dict[str, Tensor], module: Any) -> Terms:
        real_scores, fake_scores = self._pairs(batch, module, detach=True)
        loss = self.objective.discriminator_loss(real_scores, fake_scores)
        logs = {"d_real": real_scores.detach().mean(), "d_fake": fake_scores.detach().mean()}
        logs.update(self.objective.critic_logs(real_scores, fake_scores, loss))
        return Terms({"adversarial": loss}, logs)

    def _generator_terms(self, batch: dict[str, Tensor], module: Any) -> Terms:
        real_scores, fake_scores = self._pairs(batch, module, detach=False)
        # The critic's loss with the pairs' roles swapped: real pairs labelled fake and fake
        # pairs real (ALI's V'); non-saturating: sp(D(x, E(x))) + sp(-D(G(z), z)).
        return Terms({"adversarial": self.objective.discriminator_loss(fake_scores, real_scores)})


@torch.no_grad()
def reconstruction_ratio(module: Any, samples: Tensor, seed: int = 0) -> float:
    """EGr / EGr_b of BiGAN's official code: mean ‖G(E(x)) - x‖ over the same against a random
    permutation of x (1 for a G∘E that knows nothing of its input), networks in eval mode."""
    networks = (module.encoder, module.generator)
    modes = [net.training for net in networks]
    for net in networks:
        net.eval()
    try:
        reconstructed = module.generator(module.encoder(samples), None).flatten(1)
    finally:
        for net, mode in zip(networks, modes):
            net.train(mode)
    flat = samples.flatten(1)
    order = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))
    error = (reconstructed - flat).norm(dim=1).mean()  # EGr
    baseline = (reconstructed - flat[order]).norm(dim=1).mean()  # EGr_b
    return float(error / baseline)
