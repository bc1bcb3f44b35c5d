"""The plain loop for InfoGAN (`make bench` case infogan_digits): PlainLoop with the codes written
into z and the mutual-information loss on the critic's Q head, by hand.

Chen et al. 2016 as openai/InfoGAN trains it: z = [noise | one-hot categorical codes | U(-1, 1)
continuous codes]; the critic's step adds λ·L_I on its fakes (Q trains with the critic), the
generator's step too. It takes the code layout and λs from the GANModule's game, and draws the
same noise in the same order, so both sides end with identical weights (tests/test_bench.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_runner.bench.plain import PlainLoop, frozen
from gan_runner.losses.mutual_information import MutualInformation, gaussian_nll
from gan_runner.module import GANModule


class PlainInfoGANLoop(PlainLoop):
    """InfoGAN's two players by hand: the critic and its Q head, and the generator."""

    def __init__(self, module: GANModule, *args, **kwargs) -> None:
        super().__init__(module, *args, **kwargs)
        self.layout = module.game.layout
        terms = module.game.extra_terms.values()
        term = next(t for t in terms if isinstance(t, MutualInformation))
        if not term.q_with_critic(module):
            raise ValueError("the plain InfoGAN loop trains Q with the critic (openai/InfoGAN)")
        self.lambdas = (term.lambda_categorical, term.lambda_continuous)
        self.fix_std = term.fix_std

    def latent(self, n: int) -> tuple[Tensor, None]:
        noise = self.m.latent.sample(n, self.m.z_dim - self.layout.dims, self.noise)
        return torch.cat([noise, self.layout.sample(n, self.noise, noise.device)], dim=1), None

    def information(self, q: Tensor, z: Tensor) -> Tensor:
        """λ_cat Σ_k CE(logits_k, c_k) + λ_cont Σ_j E[-log N(c_j; μ_j, 1)]."""
        codes = z[:, z.shape[1] - self.layout.dims :]
        logits, means, log_std = self.layout.split(q.float(), self.fix_std)
        ce, start = 0, 0
        for k, y in zip(self.layout.categorical, logits):
            ce = ce + F.cross_entropy(y, codes[:, start : start + k].argmax(dim=1))
            start += k
        nll = gaussian_nll(codes[:, start:].float(), means, log_std).sum(1).mean()
        return self.lambdas[0] * ce + self.lambdas[1] * nll

    def d_step(self, real: Tensor, labels: Tensor | None, log: bool) -> dict[str, Tensor]:
        z, _ = self.latent(real.shape[0])
        with torch.no_grad():
            fake = self.g(z, None)
        real_scores = self.d.outputs(real, None).scores.float()
        fake_out = self.d.outputs(fake, None)
        fake_scores = fake_out.scores.float()
        loss = self.objective.discriminator_loss(real_scores, fake_scores)
        loss = loss + self.information(fake_out.heads["codes"], z)
        logs = {"d_loss": loss.detach()}
        self._update(self.d_opt, loss, logs if log else None, "discriminator")
        self.d_steps += 1
        self.since_g += 1
        return logs

    def g_step(self, real: Tensor, labels: Tensor | None, log: bool) -> dict[str, Tensor]:
        z, _ = self.latent(real.shape[0])
        with frozen(self.d):
            fake_out = self.d.outputs(self.g(z, None), None)
            loss = self.objective.generator_loss(fake_out.scores.float(), None)
            loss = loss + self.information(fake_out.heads["codes"], z)
            logs = {"g_loss": loss.detach()}
            self._update(self.g_opt, loss, logs if log else None, "generator")
        self.generator_stepped()
        return logs
