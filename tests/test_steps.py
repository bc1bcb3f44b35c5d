"""The step fast path (steps.py): Lightning's backward and step wrappers skipped where they would
do nothing, with the same weights, step counts, clipping and logged values as through them."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from gan_runner.steps import direct_steps
from gan_runner.train import assemble, build_trainer

SMALL = (
    "data=ring8",
    "optimizer=adam",
    "schedule=constant",
    "arch.generator.hidden=[16]",
    "arch.discriminator.hidden=[16]",
    "data.source.n_samples=512",
    "data.batch_size=32",
    "train.g_steps=12",
    "train.log_every=4",
    "grad_clip.discriminator=0.05",  # clipping runs in on_before_optimizer_step: both paths
    "callbacks=none",
)


class CountsBackward(pl.Callback):
    """A callback with a backward hook: Lightning's wrappers must then run to call it."""

    def __init__(self) -> None:
        self.calls = 0

    def on_after_backward(self, trainer, pl_module) -> None:
        self.calls += 1


def trained(cfg, *callbacks: pl.Callback):
    run = assemble(cfg)
    trainer = build_trainer(cfg, [*run.callbacks, *callbacks], [])
    trainer.fit(run.module, datamodule=run.datamodule)
    return run.module, trainer


def test_the_fast_path_trains_exactly_what_lightnings_wrappers_train(make_cfg) -> None:
    cfg = make_cfg(*SMALL)
    fast, fast_trainer = trained(cfg)
    counter = CountsBackward()
    wrapped, wrapped_trainer = trained(cfg, counter)
    assert fast._direct and not wrapped._direct
    assert counter.calls == 2 * 12  # a D and a G backward per batch, all seen by the hook
    for a, b in zip(fast.state_dict().values(), wrapped.state_dict().values()):
        assert torch.equal(a, b)
    # Lightning's global_step counts optimizer steps on both paths; the logged values agree.
    assert fast_trainer.global_step == wrapped_trainer.global_step == 2 * 12
    for key in ("train/d_loss", "train/g_loss", "train/grad_norm/discriminator"):
        assert float(fast_trainer.callback_metrics[key]) == float(
            wrapped_trainer.callback_metrics[key]
        )
    assert fast_trainer.progress_bar_metrics["train/d_loss"] == float(
        fast_trainer.callback_metrics["train/d_loss"]
    )
    assert float(fast_trainer.callback_metrics["train/g_steps"]) == 12


def test_the_fast_path_is_taken_only_where_the_wrappers_do_nothing() -> None:
    quiet = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False}
    assert direct_steps(pl.Trainer(**quiet, enable_model_summary=False))
    assert not direct_steps(pl.Trainer(**quiet, precision="bf16-mixed"))  # scales and casts
    assert not direct_steps(pl.Trainer(**quiet, callbacks=[CountsBackward()]))

    class ClipsItself(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            pass

    assert not direct_steps(pl.Trainer(**quiet, callbacks=[ClipsItself()]))


def test_speed_direct_steps_false_keeps_lightnings_wrappers_with_the_same_weights(
    make_cfg, monkeypatch
) -> None:
    fast, _ = trained(make_cfg(*SMALL))
    calls = []
    original = pl.LightningModule.manual_backward

    def counted(self, loss, *args, **kwargs):
        calls.append(1)
        return original(self, loss, *args, **kwargs)

    monkeypatch.setattr(pl.LightningModule, "manual_backward", counted)
    wrapped, _ = trained(make_cfg(*SMALL, "speed.direct_steps=false"))
    assert fast._direct and not wrapped._direct
    assert len(calls) == 2 * 12  # every backward went through Lightning's wrapper
    for a, b in zip(fast.state_dict().values(), wrapped.state_dict().values()):
        assert torch.equal(a, b)
