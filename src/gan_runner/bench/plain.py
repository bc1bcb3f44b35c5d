"""The baseline of `make bench`: the same GAN trained by a minimal hand-written PyTorch loop.

It takes its networks, latent and optimizers, and its adversarial game's objective, regularizers
and critic schedule, from a `GANModule` built from the same composed config, batches the same
in-memory tensors with the same seeded sampler, and draws its noise from the same seeded stream
in the same order, so after the same number of steps it holds the same weights as gan-run
(tests/test_bench.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from gan_runner.data.batches import IndexedTensors, ShuffledBatches
from gan_runner.data.module import TensorData, to_model_range
from gan_runner.module import GANModule
from gan_runner.regularizers import PenaltyInputs


@contextlib.contextmanager
def frozen(net: nn.Module) -> Iterator[None]:
    """No weight gradients for `net` while inside (gradients still flow through it)."""
    flags = [p.requires_grad for p in net.parameters()]
    net.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(net.parameters(), flags):
            p.requires_grad_(flag)


def index_batches(
    data: TensorData, batch_size: int, seed: int
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Endless (samples, labels) batches of a tensor data set: a reshuffle per epoch."""
    sampler, dataset = ShuffledBatches(len(data), batch_size, seed, 0, 1), IndexedTensors(data)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        for indices in sampler:
            batch = dataset[indices]
            yield to_model_range(batch["samples"]), batch.get("labels")
        epoch += 1


class PlainLoop:
    """A plain PyTorch GAN training loop over a GANModule's parts (no Lightning)."""

    def __init__(
        self,
        module: GANModule,
        data: TensorData,
        batch_size: int,
        device: torch.device,
        set_to_none: bool = True,
        autocast: torch.dtype | None = None,
    ) -> None:
        self.m = module.to(device)
        self.g, self.d = module.generator, module.discriminator
        make = module.optimizer_factories
        self.d_opt = make["discriminator"](self.d.parameters())
        self.g_opt = make["generator"](self.g.parameters())
        make = module.make_schedule
        self.schedulers = [make(self.d_opt), make(self.g_opt)] if make else []
        self.noise = torch.Generator(device=device).manual_seed(module.seed)
        self.batches = index_batches(data, batch_size, module.seed)
        self.set_to_none, self.device, self.autocast = set_to_none, device, autocast
        self.d_steps = self.g_steps = self.since_g = 0
        # The adversarial game's parts: its objective, penalties and the critic's n_critic.
        self.objective, self.regularizers = module.game.objective, module.game.regularizers
        self.critic_schedule = module.game.phases[0].schedule

    def latent(self, n: int) -> tuple[Tensor, Tensor | None]:
        z = self.m.latent.sample(n, self.m.z_dim, self.noise)
        if not self.m.num_classes:
            return z, None
        return z, torch.randint(self.m.num_classes, (n,), generator=self.noise, device=z.device)

    def critic(self, x: Tensor, labels: Tensor | None) -> Tensor:
        return self.d(x, labels if self.m.num_classes else None)

    def step(self) -> None:
        """One batch: a discriminator step, and a generator step every n_critic of them."""
        real, labels = next(self.batches)
        # As Lightning's bf16-mixed: the whole step under autocast, without its weight cache.
        with torch.autocast(
            self.device.type, self.autocast, enabled=self.autocast is not None, cache_enabled=False
        ):
            self._step(real, labels)

    def _step(self, real: Tensor, labels: Tensor | None) -> None:
        due = self.since_g + 1 >= self.critic_schedule.critic_steps(self.g_steps)
        log = due and (self.g_steps + 1) % self.m.log_every == 0
        logs = self.d_step(real, labels, log)
        if due:
            logs.update(self.g_step(real, labels, log))
        if log:
            torch.stack([v.float() for v in logs.values()]).tolist()  # gan-run's one host sync

    def d_step(self, real: Tensor, labels: Tensor | None, log: bool) -> dict[str, Tensor]:
        z, fake_labels = self.latent(real.shape[0])
        with torch.no_grad():
            fake = self.g(z, fake_labels)
        real_scores = self.critic(real, labels).float()
        fake_scores = self.critic(fake, fake_labels).float()
        loss = self.objective.discriminator_loss(real_scores, fake_scores)
        logs = {"d_loss": loss.detach()}
        inputs = PenaltyInputs(
            self.critic, real, fake, labels, fake_labels, self.d_steps, self.noise
        )
        for name, regularizer in self.regularizers.items():
            term = regularizer.discriminator_penalty(inputs)
            if term is not None:
                loss = loss + term
                logs[f"reg/{name}"] = term.detach()
        self._update(self.d_opt, loss, logs if log else None, "discriminator")
        for regularizer in self.regularizers.values():
            regularizer.after_discriminator_step(self.d)
        self.d_steps += 1
        self.since_g += 1
        logs.update(d_real=real_scores.detach().mean(), d_fake=fake_scores.detach().mean())
        return logs

    def g_step(self, real: Tensor, labels: Tensor | None, log: bool) -> dict[str, Tensor]:
        z, fake_labels = self.latent(real.shape[0])
        with frozen(self.d):
            fake_scores = self.critic(self.g(z, fake_labels), fake_labels).float()
            real_scores = None
            if getattr(self.objective, "generator_needs_real", False):
                real_scores = self.critic(real, labels).float()
            loss = self.objective.generator_loss(fake_scores, real_scores)
            logs = {"g_loss": loss.detach()}
            for regularizer in self.regularizers.values():  # BigGAN's orthogonal term
                term = regularizer.generator_penalty(self.g)
                if term is not None:
                    loss = loss + term
            self._update(self.g_opt, loss, logs if log else None, "generator")
        self.generator_stepped()
        return logs

    def generator_stepped(self) -> None:
        """A cycle ends: schedules advance in generator steps, the critic's count restarts."""
        for scheduler in self.schedulers:
            scheduler.step()
        self.g_steps += 1
        self.since_g = 0

    def _update(self, opt, loss: Tensor, logs: dict | None, name: str) -> None:
        opt.zero_grad(set_to_none=self.set_to_none)
        loss.backward()
        if logs is not None:
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            logs[f"grad_norm/{name}"] = torch.nn.utils.get_total_norm(grads)
        opt.step()
