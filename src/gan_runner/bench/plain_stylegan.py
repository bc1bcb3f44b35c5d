"""The baseline of `make bench` for StyleGAN2: a minimal hand-written four-phase loop.

stylegan2-ada's loop (Karras et al. 2020) written out plainly: Gmain, Greg every 4 batches (path
length), Dmain, Dreg every 16 (R1), lazy optimizers adjusted by k/(k+1). It takes its networks,
latent, optimizers, objective and R1 object from a `GANModule` built from the same composed
config, and draws its noise from the same seeded streams in the same order, so after the same
number of batches it holds the same weights, w_avg and pl_mean as gan-run
(tests/test_bench_stylegan.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from gan_runner.bench.plain import frozen, index_batches
from gan_runner.data.module import TensorData
from gan_runner.errors import UserError
from gan_runner.module import GANModule
from gan_runner.regularizers import LazyPenalty, PenaltyInputs

PHASES = ("generator", "generator_reg", "discriminator", "discriminator_reg")


def lazy_optimizer(
    make: Callable[..., Optimizer], params: Iterable[nn.Parameter], interval: int
) -> Optimizer:
    """An optimizer for a player regularized every `interval` batches: lr·k/(k+1), β^(k/(k+1))
    (StyleGAN2 App. B), so the extra steps do not move it further per batch."""
    optimizer = make(params)
    if interval > 1:
        ratio = interval / (interval + 1)
        for group in [*optimizer.param_groups, optimizer.defaults]:
            group["lr"] = group["lr"] * ratio
            if "betas" in group:
                group["betas"] = tuple(beta**ratio for beta in group["betas"])
    return optimizer


class PlainStyleGANLoop:
    """A plain PyTorch StyleGAN2 training loop (Karras et al. 2020) over a GANModule's parts."""

    def __init__(
        self,
        module: GANModule,
        data: TensorData,
        batch_size: int,
        device: torch.device,
        set_to_none: bool = True,
        autocast: torch.dtype | None = None,
    ) -> None:
        game = module.game
        phases = {phase.name: phase for phase in game.phases}
        if tuple(phases) != PHASES or any(p.repeats != 1 for p in game.phases):
            raise UserError(
                f"bench: the plain StyleGAN2 loop runs {', '.join(PHASES)} once a batch, not "
                f"{', '.join(f'{p.name}×{p.repeats}' for p in game.phases)}; use game=stylegan"
            )
        self.m = module.to(device)
        self.g, self.d = module.generator, module.discriminator
        # An interval of 0: that regularizer is off (its phase never steps, nothing adjusted).
        self.g_reg_every = phases["generator_reg"].every if game.pl_weight > 0 else 0
        self.d_reg_every = phases["discriminator_reg"].every if game.regularizers else 0
        make = module.optimizer_factories
        self.g_opt = lazy_optimizer(make["generator"], self.g.parameters(), self.g_reg_every)
        self.d_opt = lazy_optimizer(make["discriminator"], self.d.parameters(), self.d_reg_every)
        make = module.make_schedule
        self.schedulers = [make(self.g_opt), make(self.d_opt)] if make else []
        self.noise = torch.Generator(device=device).manual_seed(module.seed)
        self.batches = index_batches(data, batch_size, module.seed)
        self.set_to_none, self.device, self.autocast = set_to_none, device, autocast
        self.objective, self.regularizers = game.objective, game.regularizers
        self.mixing_prob = game.style_mixing
        self.pl_weight, self.pl_decay = game.pl_weight, game.pl_decay
        self.pl_batch_shrink = game.pl_batch_shrink
        self.pl_mean = torch.zeros([], device=device)
        self.d_steps = self.g_steps = 0  # batches, and generator steps (one per batch)

    # ----------------------------------------------------------------- the generator
    def latent(self, n: int) -> tuple[Tensor, Tensor | None]:
        z = self.m.latent.sample(n, self.m.z_dim, self.noise)
        if not self.m.num_classes:
            return z, None
        return z, torch.randint(self.m.num_classes, (n,), generator=self.noise, device=z.device)

    def mapping(self, z: Tensor, labels: Tensor | None) -> Tensor:
        """ws for z; with probability `style_mixing` the layers from a random cutoff on take a
        second z's w (one cutoff per batch, without a host sync, as S2A's run_G)."""
        ws = self.g.mapping(z, labels)
        if self.mixing_prob <= 0:
            return ws
        num_ws = ws.shape[1]
        cutoff = torch.randint(1, num_ws, [], generator=self.noise, device=z.device)
        mixes = torch.rand([], generator=self.noise, device=z.device) < self.mixing_prob
        cutoff = torch.where(mixes, cutoff, torch.full_like(cutoff, num_ws))
        other = self.m.latent.sample(z.shape[0], z.shape[1], self.noise).to(z)
        mixed = self.g.mapping(other, labels, update_w_avg=False)
        later = torch.arange(num_ws, device=z.device)[None, :, None] >= cutoff
        return torch.where(later, mixed, ws)

    def fakes(self, n: int) -> tuple[Tensor, Tensor | None]:
        z, labels = self.latent(n)
        return self.g.synthesis(self.mapping(z, labels)), labels

    def critic(self, x: Tensor, labels: Tensor | None) -> Tensor:
        return self.d(x, labels if self.m.num_classes else None)

    # ----------------------------------------------------------------- the four phases
    def step(self) -> None:
        """One batch: Gmain, Greg when due, Dmain, Dreg when due."""
        real, labels = next(self.batches)
        # As Lightning's bf16-mixed: the whole step under autocast, without its weight cache.
        with torch.autocast(
            self.device.type, self.autocast, enabled=self.autocast is not None, cache_enabled=False
        ):
            self._step(real, labels)

    def _step(self, real: Tensor, labels: Tensor | None) -> None:
        log = (self.g_steps + 1) % self.m.log_every == 0
        batch, logs = self.d_steps, {}
        logs.update(self.g_main(real.shape[0], log))
        if self.g_reg_every and batch % self.g_reg_every == 0:
            logs.update(self.g_reg(real.shape[0], log))
        logs.update(self.d_main(real, labels, log))
        if self.d_reg_every and batch % self.d_reg_every == 0:
            logs.update(self.d_reg(real, labels, log))
        for scheduler in self.schedulers:
            scheduler.step()
        self.d_steps += 1
        self.g_steps += 1
        if log:
            torch.stack([v.float() for v in logs.values()]).tolist()  # gan-run's one host sync

    def g_main(self, n: int, log: bool) -> dict[str, Tensor]:
        with frozen(self.d):
            fake, labels = self.fakes(n)
            loss = self.objective.generator_loss(self.critic(fake, labels).float(), None)
            logs = {"g_loss": loss.detach()}
            self._update(self.g_opt, loss, logs if log else None, "generator")
        return logs

    def g_reg(self, n: int, log: bool) -> dict[str, Tensor]:
        """Path length (StyleGAN2 §3.2): E(‖J_wᵀ y‖ − a)², y ~ N(0, I)/√(HW), on n/shrink."""
        z, labels = self.latent(max(n // self.pl_batch_shrink, 1))
        ws = self.mapping(z, labels)
        images = self.g.synthesis(ws)
        noise = torch.randn(images.shape, generator=self.noise, device=images.device)
        noise = noise / math.sqrt(images.shape[2] * images.shape[3])
        (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()
        self.pl_mean = self.pl_mean.lerp(lengths.mean().detach(), self.pl_decay)
        penalty = (lengths - self.pl_mean).square()
        # images·0 keeps every synthesis parameter in the graph, as S2A.
        loss = self.g_reg_every * (images[:, 0, 0, 0] * 0 + penalty * self.pl_weight).mean()
        logs = {"path_length": loss.detach(), "pl_mean": self.pl_mean}
        self._update(self.g_opt, loss, logs if log else None, "generator")
        return logs

    def d_main(self, real: Tensor, labels: Tensor | None, log: bool) -> dict[str, Tensor]:
        with torch.no_grad():
            fake, fake_labels = self.fakes(real.shape[0])
        real_scores = self.critic(real, labels).float()
        fake_scores = self.critic(fake, fake_labels).float()
        loss = self.objective.discriminator_loss(real_scores, fake_scores)
        logs = {"d_loss": loss.detach()}
        self._update(self.d_opt, loss, logs if log else None, "discriminator")
        logs.update(d_real=real_scores.detach().mean(), d_fake=fake_scores.detach().mean())
        return logs

    def d_reg(self, real: Tensor, labels: Tensor | None, log: bool) -> dict[str, Tensor]:
        """R1 on the reals, through the configured regularizer objects, × the interval."""
        fake, fake_labels = real, labels  # R1 reads no fakes: no generator pass
        if any(r.reads_fake for r in self.regularizers.values()):
            with torch.no_grad():
                fake, fake_labels = self.fakes(real.shape[0])
        inputs = PenaltyInputs(
            self.critic, real, fake, labels, fake_labels, self.d_steps, self.noise
        )
        logs, loss = {}, None
        for name, regularizer in self.regularizers.items():
            if isinstance(regularizer, LazyPenalty):
                term = regularizer.penalty(inputs)
            else:
                term = regularizer.discriminator_penalty(inputs)
            if term is not None:
                term = self.d_reg_every * term
                loss = term if loss is None else loss + term
                logs[f"reg/{name}"] = term.detach()
        if loss is not None:
            self._update(self.d_opt, loss, logs if log else None, "discriminator")
        return logs

    def hand_back(self) -> None:
        """Leave the loop's pl_mean in the module's game, as gan-run's run leaves its own."""
        self.m.game.load_state_dict({"pl_mean": self.pl_mean})

    def _update(self, opt: Optimizer, loss: Tensor, logs: dict | None, name: str) -> None:
        opt.zero_grad(set_to_none=self.set_to_none)
        loss.backward()
        if logs is not None:
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            logs[f"grad_norm/{name}"] = torch.nn.utils.get_total_norm(grads)
        opt.step()
