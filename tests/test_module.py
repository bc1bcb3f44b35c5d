"""GANModule's bookkeeping through the real config and train(): alternation counts, the critic
schedule, optimizer toggling, EMA, checkpoint state, latent streams and LR schedules."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import gan_runner.train as train_py
from gan_runner.callbacks.ema import GeneratorEMA
from gan_runner.errors import UserError
from gan_runner.module import CHECKPOINT_KEY, Counters, CriticSchedule
from gan_runner.train import build_module, train

BATCH, Z_DIM = 64, 8
SMALL = (
    # The base config's optimizer and schedule (ring8 brings the 2D recipe's adam_2d and a decay).
    "optimizer=adam",
    "schedule=constant",
    "train.log_every=1",
    "arch.generator.hidden=[32,32]",
    "arch.discriminator.hidden=[32,32]",
    "data.source.n_samples=1024",
    f"data.batch_size={BATCH}",
    f"z_dim={Z_DIM}",
)
FAST = ("callbacks=none", *SMALL)


def _only(callback: str) -> tuple[str, ...]:
    """The default callbacks with every one but `callback` switched off."""
    others = ("ema", "samples", "metrics", "checkpoint", "loss_curve", "progress")
    return (*SMALL, *(f"callbacks.{o}=null" for o in others if o != callback))


def _lrs(module) -> tuple[float, float]:
    return tuple(float(opt.param_groups[0]["lr"]) for opt in module.optimizers())


def _trace(module, events: list, latents: list) -> None:
    """Record every D/G step (counters, LRs, G weights after its batch) and every latent batch."""
    module.phase = None
    kinds = {"discriminator": "d", "generator": "g"}
    ran: list[str] = []
    run_phase, train_batch = module._run_phase, module._train_batch

    def phase_step(phase, *args):
        module.phase = kinds[phase.name]
        run_phase(phase, *args)
        module.phase = None
        ran.append(kinds[phase.name])

    def step(*args):  # one batch (train.batches_per_step groups several in a Lightning step)
        train_batch(*args)
        c = module.counters
        for kind in ran:
            params = [p.detach().clone() for p in module.generator.parameters()]
            events.append(
                SimpleNamespace(
                    kind=kind, d=c.d_steps, g=c.g_steps, lrs=_lrs(module), params=params
                )
            )
        ran.clear()

    module._run_phase, module._train_batch = phase_step, step
    draw = module.draw_latent

    def draw_latent(n):
        z, labels = draw(n)
        latents.append(z.clone())
        return z, labels

    module.draw_latent = draw_latent


@pytest.fixture
def fit(make_cfg, monkeypatch):
    """fit(*overrides, extra=None) -> (module, metrics, events, latents) via the real train()."""

    def _fit(*overrides, base=FAST, extra=None):
        cfg = make_cfg(*base, *overrides)
        built, events, latents = [], [], []

        def capture(c):
            module = build_module(c)
            _trace(module, events, latents)
            if extra is not None:
                extra(module)
            built.append(module)
            return module

        monkeypatch.setattr(train_py, "build_module", capture)
        metrics = train(cfg)
        return built[0], metrics, events, latents

    return _fit


def _g_events(events):
    return [e for e in events if e.kind == "g"]


# --------------------------------------------------------------------- alternation
@pytest.mark.parametrize(("n_critic", "log_every", "logged_g"), [(5, 2, 4), (5, 3, 3), (1, 1, 4)])
def test_n_critic_gives_one_generator_step_per_n_critic_discriminator_steps(
    fit, n_critic, log_every, logged_g
):
    module, metrics, events, _ = fit(
        f"n_critic={n_critic}", "train.g_steps=4", f"train.log_every={log_every}"
    )
    c = module.counters
    assert (c.d_steps, c.g_steps, c.critic_steps_since_g) == (4 * n_critic, 4, 0)
    assert c.images_seen == 4 * n_critic * BATCH
    assert [e.d for e in _g_events(events)] == [n_critic * k for k in (1, 2, 3, 4)]
    assert [e.kind for e in events].count("d") == 4 * n_critic
    # Logged every `log_every` G steps: the last log is at the last multiple of it.
    assert metrics["train/g_steps"] == logged_g
    assert metrics["train/d_steps"] == logged_g * n_critic
    assert metrics["train/kimg"] == pytest.approx(logged_g * n_critic * BATCH / 1000)


def test_critic_schedule_boost_counts():
    s = CriticSchedule(n_critic=2, boost_n_critic=7, boost_first_g_steps=2, boost_every_g_steps=3)
    assert [s.critic_steps(k) for k in range(10)] == [7, 7, 2, 7, 2, 2, 7, 2, 2, 7]
    wgan = CriticSchedule(5, 100, 25, 500)  # Arjovsky et al.'s reference schedule
    at = (0, 24, 25, 499, 500, 501, 1000)
    assert [wgan.critic_steps(k) for k in at] == [100, 100, 5, 5, 100, 5, 100]
    assert all(CriticSchedule(3).critic_steps(k) == 3 for k in range(20))
    assert all(CriticSchedule(3, 0, 5, 2).critic_steps(k) == 3 for k in range(20))  # boost off
    with pytest.raises(ValueError):
        CriticSchedule(n_critic=0)


def test_critic_boost_end_to_end(fit):
    module, _, events, _ = fit(
        "n_critic=2",
        "n_critic_boost.n_critic=7",
        "n_critic_boost.first_g_steps=2",
        "n_critic_boost.every_g_steps=3",
        "train.g_steps=6",
    )
    # Critic steps per G step: 7, 7, 2, 7 (g=3 is a multiple of 3), 2, 2.
    assert [e.d for e in _g_events(events)] == [7, 14, 16, 23, 25, 27]
    assert (module.counters.d_steps, module.counters.g_steps) == (27, 6)


# --------------------------------------------------------------------- toggling
def test_generator_step_leaves_critic_grads_alone_and_critic_step_builds_no_graph_through_g(fit):
    seen = {"d": [], "g": []}

    def hooks(module):
        for player in ("generator", "discriminator"):
            for p in getattr(module, player).parameters():
                p.register_post_accumulate_grad_hook(
                    lambda _, player=player: seen[module.phase].append(("grad", player))
                )
        module.generator.register_forward_hook(
            lambda m, i, out: seen[module.phase].extend(
                [
                    ("g_out_requires_grad", out.requires_grad),
                    ("grad_mode", torch.is_grad_enabled()),
                ]
            )
        )
        module.discriminator.register_forward_pre_hook(
            lambda m, i: seen[module.phase].append(
                ("d_trainable", all(p.requires_grad for p in m.parameters()))
            )
        )

    module, *_ = fit(
        "n_critic=2",
        "train.g_steps=3",
        "objective=wasserstein",
        "regularizer=[gradient_penalty]",
        extra=hooks,
    )
    d, g = set(seen["d"]), set(seen["g"])
    # D step: G runs under no_grad (its output carries no graph), only D's weights receive
    # gradients. Grad mode, not only frozen weights: torch.compile guards on it, and torch 2.11
    # reused a G graph traced with frozen weights in the G step (its loss had no grad_fn).
    assert d == {
        ("g_out_requires_grad", False),
        ("grad_mode", False),
        ("d_trainable", True),
        ("grad", "discriminator"),
    }
    # G step: D is frozen, gradients flow through it into G only.
    assert g == {
        ("g_out_requires_grad", True),
        ("grad_mode", True),
        ("d_trainable", False),
        ("grad", "generator"),
    }
    # Toggling is undone after each step.
    assert all(p.requires_grad for p in module.parameters())


# --------------------------------------------------------------------- regularizer wiring
def test_weight_clip_applies_after_every_critic_step_and_to_the_critic_only(fit):
    clipped = []

    def watch(module):
        inner = module._run_phase

        def step(phase, *args):
            inner(phase, *args)
            if phase.name == "discriminator":
                clipped.append(
                    max(p.abs().max().item() for p in module.discriminator.parameters())
                )

        module._run_phase = step

    module, *_ = fit(
        "objective=wasserstein", "regularizer=[weight_clip]", "n_critic=3", "train.g_steps=2",
        extra=watch,
    )  # fmt: skip
    assert len(clipped) == 6 and max(clipped) <= 0.01
    assert max(p.abs().max().item() for p in module.generator.parameters()) > 0.01


def test_spectral_norm_is_built_into_the_critic_only(make_cfg):
    module = build_module(make_cfg(*FAST, "regularizer=[spectral_norm]"))
    parametrized = torch.nn.utils.parametrize.is_parametrized
    d_layers = [m for m in module.discriminator.modules() if isinstance(m, nn.Linear)]
    assert d_layers and all(parametrized(m, "weight") for m in d_layers)
    assert not any(parametrized(m) for m in module.generator.modules())


# --------------------------------------------------------------------- EMA
def test_ema_beta_is_a_half_life_in_images_with_rampup_cap():
    assert GeneratorEMA(2.0, rampup=None).beta(64, 10) == pytest.approx(0.5 ** (64 / 2000))
    assert GeneratorEMA(2.0, rampup=None).beta(128, 10) == pytest.approx(0.5 ** (128 / 2000))
    ramp = GeneratorEMA(2.0, rampup=0.05)
    assert ramp.beta(64, 1000) == pytest.approx(0.5 ** (64 / 50))  # capped at 0.05 × 1000 images
    assert ramp.beta(64, 10**7) == pytest.approx(0.5 ** (64 / 2000))  # cap no longer binds
    assert ramp.beta(64, 0) == pytest.approx(0.0)  # no images yet: copy the live weights
    with pytest.raises(ValueError):
        GeneratorEMA(half_life_kimg=0)
    with pytest.raises(ValueError):
        GeneratorEMA(rampup=0)


def _holder(generator: nn.Module) -> SimpleNamespace:
    holder = SimpleNamespace(generator=generator, counters=Counters())
    GeneratorEMA().setup(None, holder, "fit")
    return holder


def test_ema_setup_makes_a_frozen_copy_once():
    torch.manual_seed(0)
    holder = _holder(nn.Linear(3, 2))
    ema = holder.generator_ema
    assert ema is not holder.generator and not ema.training
    assert not any(p.requires_grad for p in ema.parameters())
    torch.testing.assert_close(ema.weight, holder.generator.weight)
    GeneratorEMA().setup(None, holder, "fit")
    assert holder.generator_ema is ema  # a second setup (e.g. validate) keeps the average


def test_ema_update_is_repeated_lerp_closed_form():
    torch.manual_seed(0)
    holder, beta, k = _holder(nn.Linear(3, 2)), 0.8, 5
    p0 = [p.detach().double().clone() for p in holder.generator.parameters()]
    trajectory = [[torch.randn_like(p) for p in p0] for _ in range(k)]
    callback = GeneratorEMA(rampup=None)
    for values in trajectory:
        with torch.no_grad():
            for p, v in zip(holder.generator.parameters(), values):
                p.copy_(v)
        callback.update(holder, beta)
    for i, p_ema in enumerate(holder.generator_ema.parameters()):
        # ema_k = beta^k p0 + sum_j (1 - beta) beta^(k-j) p_j
        expected = beta**k * p0[i] + sum(
            (1 - beta) * beta ** (k - j) * trajectory[j - 1][i] for j in range(1, k + 1)
        )
        torch.testing.assert_close(p_ema.double(), expected, rtol=1e-6, atol=1e-6)


def test_ema_copies_buffers_instead_of_averaging_them():
    torch.manual_seed(0)
    holder = _holder(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    live = holder.generator.train()
    for _ in range(3):
        live(torch.randn(16, 3) * 5 + 2)
    with torch.no_grad():
        live[0].weight.add_(1.0)
    GeneratorEMA().update(holder, beta=0.9)
    ema = holder.generator_ema
    torch.testing.assert_close(ema[1].running_mean, live[1].running_mean, rtol=0, atol=0)
    torch.testing.assert_close(ema[1].running_var, live[1].running_var, rtol=0, atol=0)
    assert ema[1].num_batches_tracked.item() == 3
    assert not torch.allclose(ema[0].weight, live[0].weight)  # parameters are averaged


def test_ema_callback_updates_only_after_a_generator_step():
    torch.manual_seed(0)
    holder, callback = _holder(nn.Linear(3, 2)), GeneratorEMA(half_life_kimg=0.5, rampup=0.05)
    trainer, batch = SimpleNamespace(world_size=2), {"samples": torch.zeros(32, 2)}
    callback.on_train_start(trainer, holder)
    start = holder.generator_ema.weight.clone()
    with torch.no_grad():
        holder.generator.weight.add_(1.0)
    holder.counters.images_seen = 64 * 3
    callback.on_train_batch_end(trainer, holder, None, batch, 0)  # D step only
    torch.testing.assert_close(holder.generator_ema.weight, start, rtol=0, atol=0)
    holder.counters.g_steps = 1
    callback.on_train_batch_end(trainer, holder, None, batch, 1)
    # Batch counted over both ranks; the ramp-up counts G-side images (g_steps × batch).
    beta = 0.5 ** (64 / min(500, 1 * 64 * 0.05))
    torch.testing.assert_close(
        holder.generator_ema.weight, start.lerp(holder.generator.weight.detach(), 1 - beta)
    )


def test_ema_end_to_end_follows_generator_steps(fit):
    # half-life 64 images at batch 64: beta = 1/2 per G step, none per D-only batch.
    before = {}
    module, _, events, _ = fit(
        "n_critic=2",
        "train.g_steps=3",
        "callbacks.ema.rampup=null",
        f"callbacks.ema.half_life_kimg={BATCH / 1000}",
        base=_only("ema"),
        extra=lambda m: before.update(p0=[p.detach().clone() for p in m.generator.parameters()]),
    )
    trajectory = [e.params for e in _g_events(events)]
    assert len(trajectory) == 3
    for i, p_ema in enumerate(module.generator_ema.parameters()):
        expected = 0.125 * before["p0"][i] + sum(
            0.5 * 0.5 ** (3 - j) * trajectory[j - 1][i] for j in (1, 2, 3)
        )
        torch.testing.assert_close(p_ema, expected)


# --------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_restores_counters_noise_and_global_rng(make_cfg, tmp_path):
    cfg = make_cfg(*FAST)
    source = build_module(cfg)
    source.counters = Counters(d_steps=17, g_steps=3, critic_steps_since_g=2, images_seen=1088)
    source.noise = torch.Generator().manual_seed(5)
    torch.randn(3, generator=source.noise)
    checkpoint = {}
    source.on_save_checkpoint(checkpoint)
    next_noise = torch.randn(4, generator=source.noise)
    next_global = torch.randn(4)
    # Plain tensors and containers only: loadable with torch.load(weights_only=True).
    torch.save(checkpoint, tmp_path / "state.pt")
    checkpoint = torch.load(tmp_path / "state.pt", weights_only=True)

    fresh = build_module(cfg)
    fresh.noise = torch.Generator().manual_seed(99)
    torch.randn(10)
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.counters == source.counters and fresh.counters is not source.counters
    torch.testing.assert_close(torch.randn(4, generator=fresh.noise), next_noise)
    torch.testing.assert_close(torch.randn(4), next_global)

    pending = build_module(cfg)  # before on_fit_start: the state waits for the generator
    pending.on_load_checkpoint(checkpoint)
    assert pending.noise is None
    assert torch.equal(
        pending._pending_noise_state, checkpoint[CHECKPOINT_KEY]["ranks"][0]["noise"]
    )


def test_foreign_checkpoint_raises_user_error(make_cfg):
    module = build_module(make_cfg(*FAST))
    foreign = [{}, {"state_dict": {}}, {CHECKPOINT_KEY: {"format": 999}}, {CHECKPOINT_KEY: 1}]
    for checkpoint in foreign:
        with pytest.raises(UserError):
            module.on_load_checkpoint(checkpoint)


def test_resume_continues_counters_and_the_latent_stream(fit, tmp_path):
    fit("train.g_steps=2", base=_only("checkpoint"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.exists()
    resumed, _, _, resumed_z = fit("train.g_steps=4", f"resume='{last}'", base=_only("checkpoint"))
    assert (resumed.counters.d_steps, resumed.counters.g_steps) == (4, 4)
    shutil.rmtree(tmp_path / "run")  # a fresh run refuses to overwrite another's checkpoints
    _, _, _, straight_z = fit("train.g_steps=4")
    assert len(straight_z) == 8 and len(resumed_z) == 4  # one z batch per D and per G step
    for z_resumed, z_straight in zip(resumed_z, straight_z[4:]):
        torch.testing.assert_close(z_resumed, z_straight, rtol=0, atol=0)


# --------------------------------------------------------------------- latent streams
def test_latent_stream_is_fixed_by_the_seed(fit):
    module, _, _, first = fit("seed=3", "train.g_steps=2")
    _, _, _, again = fit("seed=3", "train.g_steps=2")
    _, _, _, other = fit("seed=4", "train.g_steps=2")
    assert len(first) == len(again) == len(other) == 4
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.allclose(a, b) for a, b in zip(first, other))
    # The stream is the run's own generator seeded from `seed`, independent of the global RNG
    # (drawn through the run's latent: ring8 brings the 2D recipe's islands).
    expected = module.latent.sample(BATCH, Z_DIM, torch.Generator().manual_seed(3))
    torch.testing.assert_close(first[0], expected, rtol=0, atol=0)
    assert not torch.allclose(first[0], first[1])  # D and G steps draw fresh codes


# --------------------------------------------------------------------- LR schedule
def test_linear_decay_steps_on_generator_steps(fit):
    _, metrics, events, _ = fit(
        "schedule=linear_decay", "n_critic=5", "train.g_steps=4", "train.log_every=1"
    )
    lr0 = 2e-4  # conf/optimizer/adam.yaml, both players
    for e in events:  # after every D and G step: lr0 (1 - g_steps / train.g_steps), both players
        assert e.lrs == pytest.approx((lr0 * (1 - e.g / 4),) * 2, abs=1e-12), (e.kind, e.d, e.g)
    halfway = next(e for e in events if e.kind == "g" and e.g == 2)
    assert halfway.d == 10 and halfway.lrs == pytest.approx((lr0 / 2, lr0 / 2))
    assert events[-1].lrs == pytest.approx((0.0, 0.0), abs=1e-12)
    assert metrics["train/lr/generator"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["train/lr/discriminator"] == pytest.approx(0.0, abs=1e-12)
