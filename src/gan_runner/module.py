"""GANModule: runs a game's phases, keeps the counters that schedule a run, and saves it all.

One LightningModule for every GAN family. What differs between papers (networks, players, phases,
loss terms, optimizers) comes in as objects and config; this file never asks which.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import reduce
from operator import add
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ProgressBar
from torch import Tensor, nn
from torch.optim import Optimizer

from gan_runner.errors import UserError
from gan_runner.games.base import CriticSchedule, Game, Phase, Terms, player_parameters
from gan_runner.steps import LastBatch, direct_steps, frozen

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_KEY", "Counters", "CriticSchedule", "GANModule"]

CHECKPOINT_KEY = "gan_runner"
CHECKPOINT_FORMAT = 2  # 2: random states per rank
FIXED_LATENT_SEED_OFFSET = 1_000_003


@dataclass
class Counters:
    """Progress in the units a GAN run is scheduled in (not Lightning's global_step).

    A batch is one discriminator step (`d_steps`); a cycle of n_critic batches ends with the
    generator's step (`g_steps`), whatever the game's phase order.
    """

    d_steps: int = 0
    g_steps: int = 0
    critic_steps_since_g: int = 0  # batches into the current cycle, so a resume continues there
    images_seen: int = 0  # real samples consumed by the discriminator, over all ranks


class GANModule(pl.LightningModule):
    """Trains a game's players, phase by phase, with manual optimization."""

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        game: Game,
        optimizers: Mapping[str, Callable[..., Optimizer]],
        latent: Any,
        z_dim: int,
        schedule: Callable[[Optimizer], Any] | None = None,
        num_classes: int = 0,
        log_every: int = 50,
        grad_clip: Mapping[str, float | None] | None = None,
        n_fixed_samples: int = 64,
        seed: int = 0,
        run_config: dict | None = None,
        accumulate: int = 1,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        for name, network in networks.items():  # state_dict keys: <network>.<parameter>
            self.add_module(name, network)
        self.network_names = tuple(networks)
        self.game, self.latent, self.z_dim = game, latent, z_dim
        self.players = dict(game.players)
        # Refuses players that do not partition the parameters.
        owned = player_parameters(self, self.players, self.network_names)
        # A player whose parameters are all frozen (requires_grad off) has nothing to step: its
        # phases are skipped, and the other players train against it as it is.
        self.frozen_players = frozenset(
            player for player, params in owned.items() if not any(p.requires_grad for p in params)
        )
        for player in sorted(self.frozen_players):
            log.info("player %s has no trainable parameters: its phases are skipped", player)
        missing = [player for player in self.players if player not in optimizers]
        if missing:
            raise ValueError(
                f"player {missing[0]} has no optimizer; add optimizer.{missing[0]} (the "
                f"optimizer group holds one per player: {', '.join(optimizers)})"
            )
        self.optimizer_factories = {name: optimizers[name] for name in self.players}
        self.make_schedule = schedule
        self.num_classes, self.log_every, self.seed = num_classes, log_every, seed
        if accumulate > 1 and not game.accumulates:
            raise ValueError(
                f"accumulate={accumulate} runs each phase on slices of its batch, but "
                f"{type(game).__name__} shares one pass over the whole batch between its "
                "phases; use accumulate=1"
            )
        self.accumulate = accumulate
        self.grad_clip = dict(grad_clip or {})
        self.run_config = run_config or {}
        self.counters = Counters()
        self.phase_due = {phase.name: 0 for phase in game.phases}  # lazy phases' cadence
        self.noise: torch.Generator | None = None
        self._grad_norms: dict[str, Tensor] = {}
        self.last_batch = LastBatch()
        self._by_player: dict[str, Any] | None = None  # per fit (on_fit_start)
        self._others: dict[str, list[nn.Parameter]] = {}
        self._world_size, self._direct = 1, False
        self.allow_direct_steps = True  # speed.direct_steps (speed.py)
        # The fixed latent batch behind every sample grid: a persistent buffer, so grids stay
        # comparable across resumes and the EMA generator draws the same points.
        # Offset from the run seed so the grid's z is not the first training batch's z.
        fixed = torch.Generator().manual_seed(seed + FIXED_LATENT_SEED_OFFSET)
        self.register_buffer("fixed_latent", game.draw_latent(self, n_fixed_samples, fixed)[0])
        labels = torch.arange(n_fixed_samples) % num_classes if num_classes else torch.empty(0)
        self.register_buffer("fixed_labels", labels.long())

    # ----------------------------------------------------------------- sampling
    @property
    def sampling_generator(self) -> nn.Module:
        """The generator used for samples and evaluation: the EMA copy when one exists."""
        ema = getattr(self, "generator_ema", None)
        return self.generator if ema is None else ema

    def draw_latent(self, n: int) -> tuple[Tensor, Tensor | None]:
        """Latent codes (and class labels when conditional) from the run's noise stream."""
        return self.game.draw_latent(self, n, self.noise)

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
        # Looked up once per fit, not per batch: the optimizers, what each phase freezes, the
        # world size, and whether Lightning's step wrappers may be skipped (steps.py).
        self._by_player, self._others = None, {}
        self._world_size = max(self.trainer.world_size, 1)
        self._direct = self.allow_direct_steps and direct_steps(self.trainer)

    def on_train_start(self) -> None:
        # train.batches_per_step > 1: each step brings k batches as (k, batch, ...) tensors.
        loader = self.trainer.train_dataloader
        self._loader = loader if getattr(loader, "group", 1) > 1 else None
        # Callbacks that run after each batch of a group but its last (Lightning runs that one):
        # gan_runner's and the user's; Lightning's own and progress bars count its steps.
        self._replayed = [
            callback
            for callback in self.trainer.callbacks
            if not type(callback).__module__.startswith("lightning.")
            and not isinstance(callback, ProgressBar)
        ]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loader = getattr(self, "_loader", None)
        if loader is None:
            self._train_batch(batch)
            return
        k = next(iter(batch.values())).shape[0]
        trainer = self.trainer
        for i in range(k):
            one = {key: value[i] for key, value in batch.items()}
            self._train_batch(one)
            loader.in_group_left = k - 1 - i  # what a checkpoint taken now has consumed
            if i == k - 1:
                return  # Lightning's on_train_batch_end follows for the group's last batch
            for callback in self._replayed:  # idempotent per step: a stop re-runs them once
                callback.on_train_batch_end(trainer, self, None, one, batch_idx)
            if trainer.should_stop:
                return

    def _train_batch(self, batch: dict[str, Tensor]) -> None:
        """One batch: each phase due in this critic cycle steps its player once."""
        counters = self.counters
        repeats = [phase.schedule.critic_steps(counters.g_steps) for phase in self.game.phases]
        batches_left = max(repeats) - counters.critic_steps_since_g  # in this cycle, this one too
        cycle_ends = batches_left <= 1
        last = self.last_batch
        last.logs = cycle_ends and (counters.g_steps + 1) % self.log_every == 0
        last.generator_stepped = cycle_ends
        self.game.rollout(batch, self)
        logs: dict[str, Tensor] = {}
        optimizers = self._optimizers_by_player
        for phase, phase_repeats in zip(self.game.phases, repeats):
            if batches_left <= phase_repeats:  # a phase steps on its cycle's last r batches
                self._run_phase(phase, batch, optimizers[phase.player], logs)
        counters.d_steps += 1
        # A batch's first entry is its real samples ("samples", or a translation batch's "a").
        last.images = next(iter(batch.values())).shape[0] * self._world_size
        counters.images_seen += last.images
        if cycle_ends:
            for scheduler in self._schedulers():
                scheduler.step()  # schedules advance in generator steps (cycles)
            counters.g_steps += 1
            counters.critic_steps_since_g = 0
        else:
            counters.critic_steps_since_g += 1
        last.losses = logs  # device tensors: the divergence guard checks them unsynced
        if last.logs:
            self._log_step(logs)

    def _run_phase(
        self, phase: Phase, batch: dict[str, Tensor], optimizer: Any, logs: dict[str, Tensor]
    ) -> None:
        """One optimizer step of the phase's player, unless lazy-idle, frozen, or no term is
        active."""
        if phase.player in self.frozen_players:
            return
        due = self.phase_due[phase.name]
        self.phase_due[phase.name] = due + 1
        if due % phase.every:
            return
        # The other players are frozen: gradients flow through them, their weights get none.
        with frozen(self._frozen_during(phase.player)):
            if self.accumulate > 1:
                stepped = self._accumulated_step(phase, batch, optimizer)
                if stepped is None:
                    return
                terms, active, total = stepped
            else:
                terms = self.game.terms(phase, batch, self, phase.every)
                active = {name: loss for name, loss in terms.losses.items() if loss is not None}
                if not active:  # stepping with no gradients would crash 16-mixed AMP
                    return
                total = reduce(add, active.values())
                optimizer.zero_grad(set_to_none=True)
                self._backward(total)
            self._step(optimizer)
        self.game.after_step(phase, self)
        for name, loss in active.items():
            logs[f"{phase.name}/{name}"] = loss.detach()
        if phase.total_as:
            logs[phase.total_as] = total.detach()
        logs.update(terms.logs)

    def _accumulated_step(
        self, phase: Phase, batch: dict[str, Tensor], optimizer: Any
    ) -> tuple[Terms, dict[str, Tensor], Tensor] | None:
        """Gradients of the phase's mean loss over `accumulate` slices of the batch, each with
        its own latents: k slices of b/k equal one batch of b up to float error, when nothing
        couples the samples of a slice (as BatchNorm does)."""
        k = self.accumulate
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, Tensor] = {}
        terms = None
        for part in range(k):
            piece = {key: value.tensor_split(k)[part] for key, value in batch.items()}
            terms = self.game.terms(phase, piece, self, phase.every)
            active = {name: loss for name, loss in terms.losses.items() if loss is not None}
            if not active:
                return None
            total = reduce(add, active.values()) / k
            self._backward(total)
            for name, loss in active.items():
                sums[name] = sums.get(name, 0) + loss.detach() / k
        return terms, sums, reduce(add, sums.values())

    def _backward(self, loss: Tensor) -> None:
        if self._direct:
            loss.backward()
        else:
            self.manual_backward(loss)

    def _step(self, optimizer: Any) -> None:
        """optimizer.step(), or what it would do: the clipping hook, the step, the step count
        (Lightning's global_step, which counts optimizer steps)."""
        if not self._direct:
            optimizer.step()
            return
        optimizer._on_before_step()
        self.on_before_optimizer_step(optimizer.optimizer)
        optimizer.optimizer.step()
        optimizer._on_after_step()

    def _frozen_during(self, player: str) -> list[nn.Parameter]:
        """The parameters of every other player's optimizer (Lightning's toggle_optimizer set)."""
        if player not in self._others:
            own = self._optimizers_by_player[player].param_groups
            mine = {id(p) for group in own for p in group["params"]}
            seen: set[int] = set()
            others = []
            for optimizer in self.trainer.optimizers:
                for p in (p for g in optimizer.param_groups for p in g["params"]):
                    if id(p) not in mine and id(p) not in seen:
                        seen.add(id(p))
                        others.append(p)
            self._others[player] = others
        return self._others[player]

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
        if not (clip or self.last_batch.logs):
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
        if self.last_batch.logs:
            self._grad_norms[name] = norm / scale  # before clipping: the update it wanted

    def _log_step(self, logs: dict[str, Tensor]) -> None:
        values = {f"train/{key}": value for key, value in logs.items()}
        values.update({f"train/grad_norm/{k}": v for k, v in self._grad_norms.items()})
        values["train/g_steps"] = float(self.counters.g_steps)
        values["train/d_steps"] = float(self.counters.d_steps)
        values["train/kimg"] = self.counters.images_seen / 1000.0
        for opt_name, opt in self._optimizers_by_player.items():
            values[f"train/lr/{opt_name}"] = float(opt.param_groups[0]["lr"])
        values = {key: float(value) for key, value in values.items()}  # one host sync per log
        # Straight to the loggers with step = generator steps: Lightning's own step counts
        # batches, and its on-step results would be re-logged on every later batch.
        for logger in self.loggers:
            logger.log_metrics(values, step=self.counters.g_steps)
        # Into the trainer's metrics directly, as self.log(on_step=True) would leave them: what
        # self.log puts in Lightning's result collection costs a pass over it every batch.
        trainer = self.trainer
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
        shown = ("train/d_loss", "train/g_loss", "train/g_steps")
        trainer.progress_bar_metrics.update({k: values[k] for k in shown if k in values})
        self._grad_norms.clear()

    def configure_optimizers(self) -> Any:
        # Each player's own networks only: never self.parameters(), which holds the EMA copy.
        owned = player_parameters(self, self.players, self.network_names)
        optimizers = [self.optimizer_factories[player](owned[player]) for player in self.players]
        intervals = self.game.lazy_intervals()
        for player, optimizer in zip(self.players, optimizers):
            if intervals.get(player, 1) > 1:
                _adjust_for_lazy_phase(optimizer, intervals[player])
        self._optimizer_names = {id(opt): name for name, opt in zip(self.players, optimizers)}
        if self.make_schedule is None:
            return optimizers
        return optimizers, [self.make_schedule(opt) for opt in optimizers]

    def parameters_of(self, player: str) -> list[nn.Parameter]:
        """The parameters `player`'s optimizer steps (its networks less claimed submodules)."""
        return player_parameters(self, self.players, self.network_names)[player]

    @property
    def _optimizers_by_player(self) -> dict[str, Optimizer]:
        if getattr(self, "_by_player", None) is None:
            optimizers = self.optimizers()
            optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
            self._by_player = dict(zip(self.players, optimizers))
        return self._by_player

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
            "phase_due": dict(self.phase_due),
            "game": self.game.state_dict(),
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
        # Checkpoints from before phases had no lazy phase: every phase was due each time.
        self.phase_due.update(state.get("phase_due", {}))
        self.game.load_state_dict(state.get("game", {}))
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


def _adjust_for_lazy_phase(optimizer: Optimizer, interval: int) -> None:
    """lr·k/(k+1) and βᵢ^(k/(k+1)) for a player with a lazy phase every k batches (Karras et al.
    2020, App. B): its optimizer then moves as far per batch as without the extra steps."""
    ratio = interval / (interval + 1)
    for group in [*optimizer.param_groups, optimizer.defaults]:
        if "lr" in group:
            group["lr"] = group["lr"] * ratio
        if "betas" in group:
            group["betas"] = tuple(beta**ratio for beta in group["betas"])


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
