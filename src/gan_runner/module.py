"""GANModule: two players, their alternation, and the counters that schedule a run.

One LightningModule for every recipe. What differs between papers (networks, objective,
regularizers, optimizers, critic schedule) comes in as objects; this file never asks which.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from gan_runner.errors import UserError
from gan_runner.objectives import Objective
from gan_runner.regularizers import PenaltyInputs, Regularizer

CHECKPOINT_KEY = "gan_runner"
CHECKPOINT_FORMAT = 2  # 2: random states per rank
FIXED_LATENT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class CriticSchedule:
    """How many discriminator steps precede each generator step.

    `boost_*` reproduces Arjovsky et al. 2017's schedule: `boost_n_critic` critic steps for the
    first `boost_first_g_steps` generator steps and at every `boost_every_g_steps`-th one.
    """

    n_critic: int = 1
    boost_n_critic: int = 0
    boost_first_g_steps: int = 0
    boost_every_g_steps: int = 0

    def __post_init__(self) -> None:
        if self.n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {self.n_critic}")

    def critic_steps(self, g_steps: int) -> int:
        boosted = g_steps < self.boost_first_g_steps or (
            self.boost_every_g_steps > 0 and g_steps % self.boost_every_g_steps == 0
        )
        return self.boost_n_critic if self.boost_n_critic and boosted else self.n_critic


@dataclass
class Counters:
    """Progress in the units a GAN run is scheduled in (not Lightning's global_step)."""

    d_steps: int = 0
    g_steps: int = 0
    critic_steps_since_g: int = 0  # the n_critic phase, so a resume continues mid-cycle
    images_seen: int = 0  # real samples consumed by the discriminator, over all ranks


class GANModule(pl.LightningModule):
    """Trains a generator against a discriminator with manual optimization."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        objective: Objective,
        latent: Any,
        z_dim: int,
        generator_optimizer: Callable[..., Optimizer],
        discriminator_optimizer: Callable[..., Optimizer],
        regularizers: Mapping[str, Regularizer] | None = None,
        schedule: Callable[[Optimizer], Any] | None = None,
        critic_schedule: CriticSchedule | None = None,
        num_classes: int = 0,
        log_every: int = 50,
        grad_clip: Mapping[str, float | None] | None = None,
        n_fixed_samples: int = 64,
        seed: int = 0,
        run_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator, self.discriminator = generator, discriminator
        self.objective, self.latent, self.z_dim = objective, latent, z_dim
        self.regularizers = dict(regularizers or {})
        self.make_generator_optimizer = generator_optimizer
        self.make_discriminator_optimizer = discriminator_optimizer
        self.make_schedule = schedule
        self.critic_schedule = critic_schedule or CriticSchedule()
        self.num_classes, self.log_every, self.seed = num_classes, log_every, seed
        self.grad_clip = dict(grad_clip or {})
        self.run_config = run_config or {}
        self.counters = Counters()
        self.noise: torch.Generator | None = None
        self._grad_norms: dict[str, Tensor] = {}
        self.logs_this_step = self.step_was_generator = False
        self.step_losses: dict[str, Tensor] = {}
        # The fixed latent batch behind every sample grid: a persistent buffer, so grids stay
        # comparable across resumes and the EMA generator draws the same points.
        # Offset from the run seed so the grid's z is not the first training batch's z.
        fixed = torch.Generator().manual_seed(seed + FIXED_LATENT_SEED_OFFSET)
        self.register_buffer("fixed_latent", latent.sample(n_fixed_samples, z_dim, fixed))
        labels = torch.arange(n_fixed_samples) % num_classes if num_classes else torch.empty(0)
        self.register_buffer("fixed_labels", labels.long())

    # ----------------------------------------------------------------- sampling
    @property
    def sampling_generator(self) -> nn.Module:
        """The generator used for samples and evaluation: the EMA copy when one exists."""
        ema = getattr(self, "generator_ema", None)
        return self.generator if ema is None else ema

    def draw_latent(self, n: int) -> tuple[Tensor, Tensor | None]:
        """Latent codes (and uniform class labels when conditional) from the run's generator."""
        z = self.latent.sample(n, self.z_dim, self.noise)
        if not self.num_classes:
            return z, None
        labels = torch.randint(self.num_classes, (n,), generator=self.noise, device=z.device)
        return z, labels

    @torch.no_grad()
    def sample(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Generated samples from the sampling generator in eval mode, as a float32 tensor."""
        net = self.sampling_generator
        was_training = net.training
        net.eval()
        try:
            return net(z, labels if self.num_classes else None).float()
        finally:
            net.train(was_training)

    def fixed_samples(self) -> Tensor:
        labels = self.fixed_labels if self.num_classes else None
        return self.sample(self.fixed_latent, labels)

    # ----------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        # Per-rank stream: ranks draw different z; a resume restores its state afterwards.
        if self.noise is None or self.noise.device != self.device:
            self.noise = torch.Generator(device=self.device)
            self.noise.manual_seed(self.seed * max(self.trainer.world_size, 1) + self.global_rank)
            if getattr(self, "_pending_noise_state", None) is not None:
                self.noise.set_state(self._pending_noise_state)
                self._pending_noise_state = None

    def critic(self, samples: Tensor, labels: Tensor | None) -> Tensor:
        return self.discriminator(samples, labels if self.num_classes else None)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        real, real_labels = batch["samples"], batch.get("labels")
        g_step_due = self.counters.critic_steps_since_g + 1 >= self.critic_schedule.critic_steps(
            self.counters.g_steps
        )
        self.logs_this_step = g_step_due and (self.counters.g_steps + 1) % self.log_every == 0
        self.step_was_generator = g_step_due
        logs = self._discriminator_step(real, real_labels)
        if g_step_due:
            logs.update(self._generator_step(real, real_labels))
        self.step_losses = logs  # device tensors: the divergence guard checks them unsynced
        if self.logs_this_step:
            self._log_step(logs)

    def _discriminator_step(self, real: Tensor, real_labels: Tensor | None) -> dict[str, Tensor]:
        d_opt, _ = self.optimizers()
        z, fake_labels = self.draw_latent(real.shape[0])
        # No graph through G for the critic's step. no_grad, not only the toggle's frozen
        # weights: torch.compile guards on grad mode, while torch 2.11 reused G's graph traced
        # here (weights frozen) in the generator step, whose loss then had no grad_fn.
        with self.toggled_optimizer(d_opt):
            with torch.no_grad():
                fake = self.generator(z, fake_labels)
            real_scores = self.critic(real, real_labels).float()
            fake_scores = self.critic(fake, fake_labels).float()
            loss = self.objective.discriminator_loss(real_scores, fake_scores)
            logs = {"d_loss": loss.detach()}
            inputs = PenaltyInputs(
                self.critic,
                real,
                fake,
                real_labels,
                fake_labels,
                self.counters.d_steps,
                self.noise,
            )
            for name, regularizer in self.regularizers.items():
                term = regularizer.discriminator_penalty(inputs)
                if term is not None:
                    loss = loss + term
                    logs[f"reg/{name}"] = term.detach()
            d_opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            d_opt.step()
        for regularizer in self.regularizers.values():
            regularizer.after_discriminator_step(self.discriminator)
        self.counters.d_steps += 1
        self.counters.critic_steps_since_g += 1
        self.counters.images_seen += real.shape[0] * self.trainer.world_size
        logs.update(d_real=real_scores.detach().mean(), d_fake=fake_scores.detach().mean())
        return logs

    def _generator_step(self, real: Tensor, real_labels: Tensor | None) -> dict[str, Tensor]:
        _, g_opt = self.optimizers()
        z, fake_labels = self.draw_latent(real.shape[0])
        # Toggling freezes D: gradients flow through it to G but D's weights get none.
        with self.toggled_optimizer(g_opt):
            fake_scores = self.critic(self.generator(z, fake_labels), fake_labels).float()
            real_scores = None
            if getattr(self.objective, "generator_needs_real", False):
                real_scores = self.critic(real, real_labels).float()
            loss = self.objective.generator_loss(fake_scores, real_scores)
            g_opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            g_opt.step()
        for scheduler in self._schedulers():
            scheduler.step()  # schedules advance in generator steps
        self.counters.g_steps += 1
        self.counters.critic_steps_since_g = 0
        return {"g_loss": loss.detach()}

    def _schedulers(self) -> list:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # Lightning calls this inside opt.step(), after AMP unscaling: clipping and norms act
        # on the true gradients (clipping between backward and step would clip scaled ones).
        name = self._optimizer_names.get(id(optimizer), "unknown")
        clip = self.grad_clip.get(name)
        if not (clip or self.logs_this_step):
            return
        params = [
            p for group in optimizer.param_groups for p in group["params"] if p.grad is not None
        ]
        if not params:
            return
        # A fused optimizer unscales inside its own step under 16-mixed, so its gradients are
        # still scaled here: compare and report them in true units.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        fused = scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False)
        scale = float(scaler.get_scale()) if fused else 1.0
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if clip:
            torch.nn.utils.clip_grads_with_norm_(params, clip * scale, norm)
        if self.logs_this_step:
            self._grad_norms[name] = norm / scale  # before clipping: the update it wanted

    def _log_step(self, logs: dict[str, Tensor]) -> None:
        values = {f"train/{key}": value for key, value in logs.items()}
        values.update({f"train/grad_norm/{k}": v for k, v in self._grad_norms.items()})
        values["train/g_steps"] = float(self.counters.g_steps)
        values["train/d_steps"] = float(self.counters.d_steps)
        values["train/kimg"] = self.counters.images_seen / 1000.0
        for opt_name, opt in zip(("discriminator", "generator"), self.optimizers()):
            values[f"train/lr/{opt_name}"] = float(opt.param_groups[0]["lr"])
        values = {key: float(value) for key, value in values.items()}  # one host sync per log
        # Straight to the loggers with step = generator steps: Lightning's own step counts
        # batches, and its on-step results would be re-logged on every later batch.
        for logger in self.loggers:
            logger.log_metrics(values, step=self.counters.g_steps)
        shown = {"train/d_loss", "train/g_loss", "train/g_steps"}
        for key, value in values.items():
            self.log(key, value, prog_bar=key in shown, logger=False, on_step=True, batch_size=1)
        self._grad_norms.clear()

    def configure_optimizers(self) -> Any:
        # Only G's and D's own parameters: never self.parameters(), which holds the EMA copy.
        d_opt = self.make_discriminator_optimizer(self.discriminator.parameters())
        g_opt = self.make_generator_optimizer(self.generator.parameters())
        self._optimizer_names = {id(d_opt): "discriminator", id(g_opt): "generator"}
        if self.make_schedule is None:
            return [d_opt, g_opt]
        return [d_opt, g_opt], [self.make_schedule(d_opt), self.make_schedule(g_opt)]

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Every rank runs this hook (only rank 0 writes), so each rank's random state is
        # gathered: ranks draw different noise, and a resume must give each its own back.
        mine = {
            "noise": self.noise.get_state() if self.noise is not None else None,
            "rng": _global_rng_state(),
        }
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "counters": asdict(self.counters),
            "ranks": self._gather_from_ranks(mine),
            "config": self.run_config,
        }

    def _gather_from_ranks(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return [state]
        import torch.distributed as dist

        gathered: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(gathered, state)
        return gathered

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(
                "the checkpoint was not written by this version of gan_runner (no "
                f"'{CHECKPOINT_KEY}' format {CHECKPOINT_FORMAT} entry); pass a gan-run checkpoint"
            )
        self.counters = Counters(**state["counters"])
        ranks = state["ranks"]
        rank = self._trainer.global_rank if self._trainer is not None else 0
        mine = ranks[rank] if rank < len(ranks) else None
        if mine is None:  # more ranks than when saved: seeded afresh from (seed, rank)
            return
        self._pending_noise_state = mine["noise"]
        if self.noise is not None and mine["noise"] is not None:
            self.noise.set_state(mine["noise"])
            self._pending_noise_state = None
        _set_global_rng_state(mine["rng"])


def _global_rng_state() -> dict[str, Any]:
    # Plain tensors and ints only, so the checkpoint loads with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": list(random.getstate()),
    }


def _set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
