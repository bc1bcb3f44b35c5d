"""Mixed precision on the CPU: bf16-mixed, and 16-mixed through a GradScaler (PITFALLS.md 1.3,
1.6, 1.7). The gradient penalty is computed in float32 with autocast off, gradient clipping acts
on unscaled gradients, and the two optimizers step without `No inf checks` failures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision

from gan_runner.module import GANModule
from gan_runner.regularizers import GradientPenalty, PenaltyInputs
from gan_runner.train import assemble, build_trainer

CLIP = 1e-3
WGAN_GP = (
    "model=wgan_gp",
    "arch.generator.hidden=[32,32]",
    "arch.discriminator.hidden=[32,32]",
    "data.source.n_samples=2048",
    "data.batch_size=64",
    "z_dim=8",
    "train.log_every=1",
    "callbacks=none",
    "metrics=[]",
    f"grad_clip.discriminator={CLIP}",
)


def float32_gradient_penalty(inputs: PenaltyInputs, weight: float, target: float) -> torch.Tensor:
    """Gulrajani et al. 2017's penalty written out in float32, autocast off: the reference."""
    with torch.autocast("cpu", enabled=False):
        real, fake = inputs.real.detach().float(), inputs.fake.detach().float()
        eps = torch.rand(real.shape[0], 1, generator=inputs.noise)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(inputs.critic(mixed, None).float().sum(), mixed)
        return weight * ((grad.pow(2).sum(1) + 1e-12).sqrt() - target).pow(2).mean()


@dataclass
class Record:
    """What the spies saw during one fit."""

    critic_calls: list[tuple[bool, torch.dtype]] = field(default_factory=list)
    penalties: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    clips: list[tuple[str, float, float]] = field(default_factory=list)  # name, before, after
    module: GANModule | None = None
    trainer: object = None


def spy(monkeypatch, record: Record) -> None:
    original_penalty = GradientPenalty.discriminator_penalty

    def penalty(self, inputs):
        state = inputs.noise.get_state()
        term = original_penalty(self, inputs)
        again = replace(inputs, noise=torch.Generator().set_state(state))
        expected = float32_gradient_penalty(again, self.weight, self.target)
        record.penalties.append((term.detach(), expected.detach()))
        return term

    original_hook = GANModule.on_before_optimizer_step

    def hook(self, optimizer):
        def norm():
            grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
            return float(torch.nn.utils.get_total_norm([g for g in grads if g is not None]))

        before = norm()
        original_hook(self, optimizer)
        record.clips.append((self._optimizer_names[id(optimizer)], before, norm()))

    monkeypatch.setattr(GradientPenalty, "discriminator_penalty", penalty)
    monkeypatch.setattr(GANModule, "on_before_optimizer_step", hook)


def fit(make_cfg, monkeypatch, *overrides: str, plugins=()) -> Record:
    record = Record()
    spy(monkeypatch, record)
    cfg = make_cfg(*WGAN_GP, *overrides)
    run = assemble(cfg)
    run.module.discriminator.register_forward_hook(
        lambda _m, _i, out: record.critic_calls.append(
            (torch.is_autocast_enabled("cpu"), out.dtype)
        )
    )
    trainer = build_trainer(cfg, run.callbacks, run.loggers, plugins=plugins)
    trainer.fit(run.module, datamodule=run.datamodule)
    record.module, record.trainer = run.module, trainer
    return record


def check_penalty_in_float32(record: Record, half: torch.dtype) -> None:
    autocast_dtypes = {dtype for autocast, dtype in record.critic_calls if autocast}
    assert autocast_dtypes == {half}  # the training forwards really ran in half precision
    assert (False, torch.float32) in record.critic_calls  # the penalty's critic: autocast off
    assert record.penalties
    for term, expected in record.penalties:
        assert term.dtype == torch.float32
        assert float(term) == pytest.approx(float(expected), rel=1e-6)


def check_clipped_after_unscaling(record: Record) -> None:
    critic = [(before, after) for name, before, after in record.clips if name == "discriminator"]
    finite = [(before, after) for before, after in critic if math.isfinite(before)]
    assert finite and all(before > 10 * CLIP for before, _ in finite)  # the clip binds
    # At the threshold itself, not CLIP / scale: the norm is measured after unscaling.
    for _, after in finite:
        assert CLIP * (1 - 1e-4) <= after <= CLIP * (1 + 1e-4)
    generator = [(b, a) for name, b, a in record.clips if name == "generator"]
    assert generator and all(b == a for b, a in generator)  # grad_clip.generator is null


def test_bf16_mixed_keeps_the_penalty_in_float32_and_clips_unscaled_norms(make_cfg, monkeypatch):
    record = fit(make_cfg, monkeypatch, "trainer.precision=bf16-mixed", "train.g_steps=3")
    assert record.module.counters.d_steps == 15 and record.module.counters.g_steps == 3
    metrics = record.trainer.callback_metrics
    for key in ("train/d_loss", "train/g_loss", "train/discriminator/gradient_penalty"):
        assert math.isfinite(float(metrics[key])), key
    check_penalty_in_float32(record, torch.bfloat16)
    check_clipped_after_unscaling(record)


def test_fp16_with_a_grad_scaler_steps_both_optimizers_and_clips_after_unscaling(
    make_cfg, monkeypatch
):
    # Lightning turns precision=16-mixed into bf16 on the CPU: a plugin forces fp16 and a scaler.
    scaler = torch.amp.GradScaler("cpu", init_scale=1024)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    # n_critic=2: every other batch is critic-only, where stepping G would fail "No inf checks".
    overrides = ("trainer.precision=null", "n_critic=2", "train.g_steps=4")
    record = fit(make_cfg, monkeypatch, *overrides, plugins=[plugin])
    assert record.trainer.precision_plugin.scaler is scaler
    assert record.module.counters.d_steps == 8 and record.module.counters.g_steps == 4
    assert scaler.get_scale() >= 1024 / 2**4  # at most a few overflow back-offs
    metrics = record.trainer.callback_metrics
    for key in ("train/d_loss", "train/g_loss", "train/discriminator/gradient_penalty"):
        assert math.isfinite(float(metrics[key])), key
    check_penalty_in_float32(record, torch.float16)
    check_clipped_after_unscaling(record)


def test_the_grad_scaler_state_is_checkpointed_and_restored_on_resume(make_cfg, tmp_path):
    def fit_fp16(init_scale: float, *overrides: str, ckpt: Path | None = None) -> list[float]:
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=3)
        seen: list[float] = []

        class ScaleAtStart(pl.Callback):
            def on_train_start(self, trainer, pl_module) -> None:
                seen.append(scaler.get_scale())

        cfg = make_cfg(*WGAN_GP, "trainer.precision=null", "n_critic=2", *overrides)
        run = assemble(cfg)
        plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
        trainer = build_trainer(cfg, [*run.callbacks, ScaleAtStart()], [], plugins=[plugin])
        trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=ckpt)
        trainer.save_checkpoint(tmp_path / "fp16.ckpt")
        return [*seen, scaler.get_scale()]

    _, trained_scale = fit_fp16(256.0, "train.g_steps=4")
    assert trained_scale != 256.0  # growth_interval=3: the scale moved while training
    saved = torch.load(tmp_path / "fp16.ckpt", weights_only=True)
    assert saved["MixedPrecision"]["scale"] == trained_scale
    resumed_start, _ = fit_fp16(1.0, "train.g_steps=5", ckpt=tmp_path / "fp16.ckpt")
    assert resumed_start == trained_scale  # not the fresh scaler's 1.0
