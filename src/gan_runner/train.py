"""train(cfg): build everything a composed config names, fit it, and report where results are."""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from gan_runner.callbacks.checkpoint import AtomicCheckpointIO, GStepCheckpoint
from gan_runner.callbacks.metrics import EvaluateMetrics
from gan_runner.callbacks.preemption import Interrupted, Preemption
from gan_runner.callbacks.samples import SampleGrid
from gan_runner.config import (
    check_launch,
    check_run_settings,
    check_targets,
    chosen_option,
    flat_keys,
)
from gan_runner.errors import UserError
from gan_runner.loggers import fail_soft, finish_wandb
from gan_runner.module import CHECKPOINT_KEY, Counters, GANModule
from gan_runner.nets.layers import MinibatchDiscrimination
from gan_runner.resume import ResumePlan, plan_resume, trim_history
from gan_runner.speed import apply_speed_options

log = logging.getLogger(__name__)


def build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """Instantiate one config node; a constructor's complaint becomes a line naming the key."""
    try:
        return instantiate(cfg[key], **kwargs)
    except InstantiationException as error:
        cause = error.__cause__ or error
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            raise UserError(f"{key}: {cause}") from None
        raise


def build_each(cfg: DictConfig, group: str, **kwargs: Any) -> list[Any]:
    """Instantiate every entry of a dict-of-objects group (callbacks, logger); null skips one."""
    objects = []
    nodes = {name: node for name, node in cfg[group].items() if node is not None}
    # callbacks=none selects no object: settings a recipe gave them (its EMA's) fall away.
    none_selected = not any("_target_" in node for node in nodes.values())
    for name, node in nodes.items():
        if "_target_" not in node:
            if none_selected:
                log.info("%s=none: %s.%s's settings are not used", group, group, name)
                continue
            raise UserError(
                f"{group}.{name} sets {', '.join(map(str, node))} but {group}.{name} is not "
                f"selected (it has no _target_); select a {group} option that has it, or drop it"
            )
        objects.append(build(cfg[group], name, **kwargs))
    return objects


# BatchNorm and minibatch discrimination: each sample's output depends on the others'.
BATCH_COUPLING = (nn.modules.batchnorm._BatchNorm, MinibatchDiscrimination)


def build_discriminator(cfg: DictConfig, regularizers: dict[str, Any]) -> nn.Module:
    discriminator = build(cfg.arch, "discriminator")
    for regularizer in regularizers.values():
        discriminator = regularizer.build_network("discriminator", discriminator)
    per_sample = [n for n, r in regularizers.items() if getattr(r, "per_sample_gradient", False)]
    # Layers that mix the samples of a batch make a per-sample input gradient meaningless.
    coupling = next(
        ((n, m) for n, m in discriminator.named_modules() if isinstance(m, BATCH_COUPLING)), None
    )
    if per_sample and coupling is not None:
        name, layer = coupling
        fix = (
            "drop arch.discriminator.minibatch_discrimination"
            if isinstance(layer, MinibatchDiscrimination)
            else "set arch.discriminator.norm to layer, instance or none (heads: no hidden layers)"
        )
        raise UserError(
            f"regularizer={per_sample[0]} penalizes per-sample gradients, which a layer that "
            f"couples the samples of a batch invalidates (discriminator.{name}); {fix}, or drop "
            "the penalty"
        )
    return discriminator


def reparametrize(networks: dict[str, nn.Module], regularizers: dict[str, Any]) -> None:
    """Regularizers' reparametrizations of the networks beside the critic (SN on G: SAGAN),
    after every network is built, so the critic-only recipes draw their weights as before."""
    for key, regularizer in regularizers.items():
        for name in getattr(regularizer, "networks", ()):
            if name not in networks:
                raise UserError(
                    f"regularizer.{key}.networks names {name}, which the architecture does not "
                    f"build (it builds {', '.join(networks)}); name one of those"
                )
        for name in networks:
            if name != "discriminator":
                networks[name] = regularizer.build_network(name, networks[name])


def augment_critics(cfg: DictConfig, game: Any, networks: dict[str, nn.Module]) -> None:
    """Attach the `aug` group's differentiable augmentation to each critic the game names, so
    real and generated images pass through it in every phase (Zhao et al. 2020)."""
    node = cfg.get("aug")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    critics = getattr(game, "augmented_critics", ())
    if not critics:
        raise UserError(
            f"aug={chosen_option(cfg, 'aug')} augments the images a critic judges, but "
            f"model={chosen_option(cfg, 'model')}'s critic reads {game.critic_input}; use aug=none"
        )
    if len(cfg.data.shape) != 3:
        raise UserError(
            f"aug={chosen_option(cfg, 'aug')} augments images, but data="
            f"{chosen_option(cfg, 'data')} is not image data (shape {list(cfg.data.shape)}); "
            "use aug=none"
        )
    from gan_runner.augment import attach_augmentation

    if hasattr(build(cfg, "aug"), "observe") and not game.observes_real_scores:
        raise UserError(
            f"aug={chosen_option(cfg, 'aug')} adapts its strength to the critic's scores on real "
            f"images, which {type(game).__name__} does not report; use aug=diffaug"
        )
    for name in critics:
        attach_augmentation(networks[name], build(cfg, "aug"))


def check_lipschitz_regularizers(
    cfg: DictConfig, objective: Any, regularizers: dict[str, Any]
) -> None:
    """Refuse a Lipschitz constraint of the Wasserstein critic (weight clipping, the 1-centred
    gradient penalty) with an objective whose critic estimates a divergence (f-GAN): it bounds
    the critic to an IPM's, so the bound no longer estimates D_f. Zero-centred penalties (zero_gp,
    r1) only smooth the critic; they are fine."""
    if not getattr(objective, "refuses_lipschitz_critic", False):
        return
    for name, regularizer in regularizers.items():
        if hasattr(regularizer, "clip_value") or getattr(regularizer, "target", 0) != 0:
            raise UserError(
                f"regularizer={name} makes the critic a Lipschitz-bounded Wasserstein critic, "
                "so its bound no longer estimates the divergence of "
                f"objective={chosen_option(cfg, 'objective')}; drop it, or use a zero-centred "
                "penalty (regularizer=[zero_gp] or [r1])"
            )


def check_domains(cfg: DictConfig, game: Any) -> None:
    """Refuse a translation game on one-domain data, the reverse, and unpaired data for a game
    that learns from aligned pairs, before any network is built."""
    domains, paired = int(cfg.data.get("domains", 1)), bool(cfg.data.get("paired", False))
    data, model = chosen_option(cfg, "data"), chosen_option(cfg, "model")
    if game.domains == 2 and domains == 1:
        raise UserError(
            f"model={model} translates between two image domains, but data={data} has one; use "
            "data=digits_unpaired, data=digits_paired, data=unpaired_folders or data=paired_folder"
        )
    if game.domains == 1 and domains == 2:
        raise UserError(
            f"data={data} holds two image domains (a translation set), but model={model} "
            "generates from noise; use model=cyclegan or model=pix2pix, or a one-domain data set"
        )
    if game.needs_pairs and not paired:
        raise UserError(
            f"model={model} learns from aligned (a, b) pairs, but data={data} is unpaired; use "
            "data=digits_paired or data=paired_folder, or model=cyclegan for unpaired sets"
        )


def check_arch_channels(cfg: DictConfig) -> None:
    """Refuse players whose image channels differ from the data's (arch.<net>.data_shape set by
    hand): a one-channel generator on data=stacked_digits would fail at its first batch."""
    data_shape = list(cfg.data.get("shape") or [])
    for name, node in cfg.arch.items():
        shape = node.get("data_shape") if isinstance(node, DictConfig) else None
        if shape is None or len(shape) != 3 or len(data_shape) != 3:
            continue  # latent-code critics (AAE) and non-image data are not images
        if int(shape[0]) != int(data_shape[0]):
            raise UserError(
                f"arch.{name}.data_shape={list(shape)} gives the {name} {shape[0]} image "
                f"channel(s), but data={chosen_option(cfg, 'data')} has {data_shape[0]} "
                f"(data.shape {data_shape}); drop arch.{name}.data_shape so that it follows "
                "data.shape"
            )


def build_module(cfg: DictConfig) -> GANModule:
    """The LightningModule for a composed config (also used to rebuild from a checkpoint)."""
    settings = check_run_settings(cfg)
    check_arch_channels(cfg)
    regularizers = {name: build(cfg.regularizer, name) for name in cfg.regularizer}
    objective = build(cfg, "objective")
    check_lipschitz_regularizers(cfg, objective, regularizers)
    if any(hasattr(r, "clip_value") for r in regularizers.values()) and not getattr(
        objective, "wasserstein", False
    ):
        log.warning(
            "regularizer=weight_clip constrains a Wasserstein critic, but objective=%s is not "
            "one; use objective=wasserstein or drop weight_clip",
            chosen_option(cfg, "objective"),
        )
    terms = {name: build(cfg.terms, name) for name in cfg.get("terms") or {}}
    game = build(cfg, "game", objective=objective, regularizers=regularizers, terms=terms)
    check_domains(cfg, game)
    networks = {  # G first, then D: the order their weights are initialized in
        "generator": build(cfg.arch, "generator"),
        "discriminator": build_discriminator(cfg, regularizers),
    }
    for name, node in cfg.arch.items():  # a game's further networks (an encoder, a Q head)
        if name not in networks and isinstance(node, DictConfig) and "_target_" in node:
            networks[name] = build(cfg.arch, name)
    reparametrize(networks, regularizers)
    augment_critics(cfg, game, networks)
    optimizers = {p: build(cfg.optimizer, p) for p in game.players if p in cfg.optimizer}
    try:
        module = GANModule(
            networks=networks,
            game=game,
            optimizers=optimizers,
            latent=build(cfg, "latent"),
            z_dim=settings.z_dim,
            schedule=build(cfg, "schedule") if cfg.get("schedule") else None,
            num_classes=settings.num_classes,
            log_every=settings.train.log_every,
            grad_clip=asdict(settings.grad_clip),
            seed=settings.seed,
            run_config=OmegaConf.to_container(cfg, resolve=True),
            accumulate=settings.accumulate,
        )
        game.check(module)
    except ValueError as error:  # players that do not partition the networks, a missing head
        raise UserError(f"game: {error}") from None
    return module


class StopAtGSteps(pl.Callback):
    """Ends the fit after `g_steps` generator steps: run length is counted in G steps.

    It runs first among the callbacks, so the others see `trainer.should_stop` on the run's
    last batch and save and evaluate there, mid-epoch, as at any periodic point.
    """

    def __init__(self, g_steps: int) -> None:
        self.g_steps = g_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.counters.g_steps >= self.g_steps:
            trainer.should_stop = True

    def on_train_start(self, trainer, pl_module) -> None:
        if pl_module.counters.g_steps >= self.g_steps:
            trainer.should_stop = True


# Lightning's DDP launchers, by the name a user picks; each has a registered twin that lets DDP
# find unused parameters.
DDP_LAUNCHERS = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def gan_strategy(strategy: str) -> str:
    """The user's trainer.strategy, with DDP allowed to see unused parameters (G or D idles).

    Each step back-propagates into one player only, which Lightning's plain DDP refuses
    (PITFALLS.md 1.8): `ddp` becomes `ddp_find_unused_parameters_true`, and so on.
    """
    if strategy in DDP_LAUNCHERS:
        return f"{strategy}_find_unused_parameters_true"
    if strategy.startswith("ddp") and strategy.endswith("_find_unused_parameters_false"):
        raise UserError(
            f"trainer.strategy={strategy} cannot train a GAN: each step leaves one player's "
            "parameters unused, which DDP then refuses; use trainer.strategy="
            f"{strategy.removesuffix('_find_unused_parameters_false')}"
        )
    return strategy


def _let_ddp_find_unused(trainer: pl.Trainer) -> None:
    # `auto` on several devices, or a DDPStrategy object, reaches DDP without the flag; the
    # model is wrapped only when fit starts, so setting it now still applies.
    if isinstance(trainer.strategy, DDPStrategy):
        trainer.strategy._ddp_kwargs.setdefault("find_unused_parameters", True)


def build_trainer(
    cfg: DictConfig, callbacks: list[pl.Callback], loggers: list, plugins: Sequence[Any] = ()
) -> pl.Trainer:
    """The configured Trainer, with a DDP strategy that tolerates the idle player.

    `plugins` adds Lightning plugins, e.g. a MixedPrecision with its own GradScaler.
    """
    strategy = cfg.trainer.get("strategy")
    overrides = {"strategy": gan_strategy(strategy)} if isinstance(strategy, str) else {}
    trainer = build(
        cfg,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO(), *plugins],
        **overrides,
    )
    _let_ddp_find_unused(trainer)
    return trainer


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


def quiet_library_noise() -> None:
    """Keep the console to what a GAN user acts on: one copy of each line, no adverts."""
    lightning_root = logging.getLogger("lightning")
    if logging.getLogger().handlers:  # inside Hydra: its handler already prints everything once
        for handler in list(lightning_root.handlers):
            lightning_root.removeHandler(handler)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        _DropMessages("litlogger", "TPU available", "HPU available")
    )
    # The EMA generator is in eval mode on purpose; it has no gradients and never trains.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


@dataclass
class Assembled:
    """Everything train(cfg) builds before fitting (tests keep it to score before and after)."""

    datamodule: pl.LightningDataModule
    module: GANModule
    callbacks: list[pl.Callback]
    loggers: list


def check_metrics_fit_game(callbacks: list, game: Any) -> None:
    """Latent-sample metrics cannot score a translator, nor translation metrics a sampler."""
    translates = getattr(game, "translates", False)
    for callback in callbacks:
        for name, evaluation in (getattr(callback, "evaluations", None) or {}).items():
            if getattr(evaluation, "translates", False) == translates:
                continue
            if translates:
                raise UserError(
                    f"metrics.{name} scores samples drawn from latents, but "
                    f"{type(game).__name__} translates images; use metrics=[translation]"
                )
            raise UserError(
                f"metrics.{name} scores an image translator, but {type(game).__name__} samples "
                "from latents; drop translation from metrics"
            )


def assemble(cfg: DictConfig) -> Assembled:
    """Check the config, seed, and build data, module, callbacks and loggers."""
    quiet_library_noise()
    check_launch(cfg)
    check_targets(cfg)
    settings = check_run_settings(cfg)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    datamodule = build(cfg, "data")
    datamodule.batches_per_step = settings.train.batches_per_step
    module = build_module(cfg)
    apply_speed_options(module, cfg.get("speed"))
    callbacks = build_each(cfg, "callbacks")
    check_metrics_fit_game(callbacks, module.game)
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar it must hide
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    # First: the checkpoint and metrics callbacks read its stop on the run's last batch.
    callbacks.insert(0, StopAtGSteps(settings.train.g_steps))
    # A logger that fails (W&B unreachable) warns once and is dropped; training goes on.
    return Assembled(datamodule, module, callbacks, fail_soft(build_each(cfg, "logger")))


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the configured GAN; returns the final logged metrics as floats."""
    plan = continue_where(cfg)
    run = assemble(cfg)
    datamodule, module, callbacks, loggers = run.datamodule, run.module, run.callbacks, run.loggers
    fitted = False
    try:  # the W&B run starts at log_hyperparams: end it even if the trainer fails to build
        for logger in loggers:
            logger.log_hyperparams(flat_keys(OmegaConf.to_container(cfg, resolve=True)))
        trainer = build_trainer(cfg, callbacks, loggers)
        checkpoint = str(plan.checkpoint) if plan else None
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
        _collect_spawned_state(trainer, module, callbacks)
        fitted = True
    except Interrupted as stop:
        _exit_on_signal(stop, callbacks)
    finally:
        # WandbLogger.finalize does not end the run: without finish(), the next job of a
        # multirun would log into this one.
        last = next((c.last_path for c in callbacks if isinstance(c, GStepCheckpoint)), None)
        finish_wandb(loggers, checkpoint=last if fitted else None, exit_code=0 if fitted else 1)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if _is_scalar(v)}
    report(cfg, module, callbacks, metrics)
    return metrics


def _collect_spawned_state(trainer: pl.Trainer, module: GANModule, callbacks: list) -> None:
    """ddp_spawn trains in child processes and sends back only the weights: read the counters
    and callback records (best metric) back from the run's last checkpoint for the summary."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    last = next((c.last_path for c in callbacks if isinstance(c, GStepCheckpoint)), None)
    if not isinstance(trainer.strategy.launcher, _MultiProcessingLauncher) or last is None:
        return
    if not last.is_file():
        return
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    module.counters = Counters(**checkpoint[CHECKPOINT_KEY]["counters"])
    for callback in callbacks:
        saved = checkpoint.get("callbacks", {}).get(callback.state_key)
        if saved is not None:
            callback.load_state_dict(saved)


def continue_where(cfg: DictConfig) -> ResumePlan | None:
    """Resolve `resume`; a run continued in its own folder has what it wrote after the save cut."""
    plan = plan_resume(cfg)
    if plan is not None and plan.folder is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(plan.folder)
        trim_history(plan.folder, plan.g_steps)
        log.info("Continuing %s from g_steps=%d (%s)", plan.folder, plan.g_steps, plan.checkpoint)
    elif plan is None:
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():  # a fresh start here would overwrite a run's checkpoints
            raise UserError(
                f"{last.parent.parent} already holds a run (checkpoints/last.ckpt); add "
                "resume=auto to continue it, or choose another hydra.run.dir"
            )
    return plan


def _exit_on_signal(stop: Interrupted, callbacks: list[pl.Callback]) -> None:
    """After the save: hand over to a cluster's own handler (submitit requeues), else exit."""
    print(f"gan-run: {stop}", file=sys.stderr, flush=True)
    preemption = next(c for c in callbacks if isinstance(c, Preemption))
    previous = preemption.previous_handler(stop.signum)
    if previous is not None:
        previous(stop.signum, None)
    raise SystemExit(128 + stop.signum)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) or value.numel() == 1


def report(cfg: DictConfig, module: GANModule, callbacks: list, metrics: dict[str, float]) -> None:
    """Print where the run's results are: folder, final metrics, latest samples, checkpoint."""
    if module.global_rank != 0:
        return
    lines = [f"Run folder: {Path(cfg.paths.output_dir).resolve()}"]
    lines.append(
        f"Trained {module.counters.g_steps} generator steps "
        f"({module.counters.d_steps} discriminator steps, "
        f"{module.counters.images_seen / 1000:.1f} kimg)"
    )
    shown = {k: v for k, v in sorted(metrics.items()) if not math.isnan(v)}
    if shown:
        lines.append("Final metrics: " + ", ".join(f"{k}={v:.6g}" for k, v in shown.items()))
    for callback in callbacks:
        if isinstance(callback, SampleGrid) and callback.last_path:
            lines.append(f"Samples: {callback.last_path.resolve()}")
        if isinstance(callback, GStepCheckpoint):
            lines.append(f"Checkpoint: {callback.last_path.resolve()}")
        if isinstance(callback, EvaluateMetrics):
            lines.extend(_metrics_lines(callback))
    print("\n".join(lines), flush=True)


def _metrics_lines(callback: EvaluateMetrics) -> list[str]:
    lines = []
    if callback.results_path.is_file():
        lines.append(f"Metrics with provenance: {callback.results_path.resolve()}")
    if callback.best_value is not None and callback.best_path.is_file():
        lines.append(
            f"Best checkpoint ({callback.best_metric}={callback.best_value:.6g} at g_steps="
            f"{callback.best_g_steps}): {callback.best_path.resolve()}"
        )
    return lines
