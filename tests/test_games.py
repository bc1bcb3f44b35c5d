"""The players/phases/games loop's invariants: players partition the parameters, a phase moves
only its own player, order and laziness follow the config, an idle phase is skipped, and a
resume mid-cycle and mid-interval is bit-exact."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import open_dict

import gan_runner.train as train_py
from conftest import QUICK, compose_config
from gan_runner.errors import UserError
from gan_runner.games.adversarial import AdversarialGame
from gan_runner.games.base import Terms
from gan_runner.train import build_module, train

SMALL = (
    *QUICK,
    "optimizer=adam",
    "schedule=constant",
    "arch.generator.hidden=[16,16]",
    "arch.discriminator.hidden=[16,16]",
    "data.source.n_samples=512",
    "data.batch_size=64",
    "z_dim=4",
    "train.log_every=1",
    "callbacks.samples=null",
    "callbacks.metrics=null",
    "callbacks.loss_curve=null",
    "callbacks.progress=null",
)


def _cfg(tmp_path, *overrides, phases=None):
    cfg = compose_config([*SMALL, *overrides], tmp_path)
    if phases is not None:  # edit the game's phase list as a user's YAML would
        with open_dict(cfg):
            for index, changes in phases.items():
                cfg.game.phases[index].update(changes)
    return cfg


def _traced(monkeypatch, record):
    """Make train() record (phase name, every player's parameters before and after) per phase."""
    build = train_py.build_module

    def capture(cfg):
        module = build(cfg)
        inner = module._run_phase

        def run_phase(phase, *args):
            before = {
                n: [p.detach().clone() for p in module.parameters_of(n)] for n in module.players
            }
            inner(phase, *args)
            after = {
                n: [p.detach().clone() for p in module.parameters_of(n)] for n in module.players
            }
            record.append((phase.name, before, after))

        module._run_phase = run_phase
        return module

    monkeypatch.setattr(train_py, "build_module", capture)


def _changed(before, after) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, after))


# --------------------------------------------------------------------- players
def test_players_partition_the_trainable_parameters(tmp_path):
    module = build_module(_cfg(tmp_path))
    owned = [id(p) for player in module.players for p in module.parameters_of(player)]
    trainable = [
        id(p) for name in module.network_names for p in getattr(module, name).parameters()
    ]
    assert sorted(owned) == sorted(trainable) and len(set(owned)) == len(owned)


def test_a_head_can_belong_to_the_other_player_by_its_dotted_name(tmp_path):
    cfg = _cfg(tmp_path, "+arch.discriminator.heads={codes: 3}")
    with open_dict(cfg):
        cfg.game.players.generator = ["generator", "discriminator.heads.codes"]
    module = build_module(cfg)
    head = {id(p) for p in module.discriminator.heads["codes"].parameters()}
    assert head <= {id(p) for p in module.parameters_of("generator")}
    assert not head & {id(p) for p in module.parameters_of("discriminator")}


@pytest.mark.parametrize(
    ("players", "message"),
    [
        ({"generator": ["generator"], "discriminator": ["discriminator.features"]}, "no player"),
        (
            {"generator": ["generator", "discriminator"], "discriminator": ["discriminator"]},
            "claimed by players",
        ),
        ({"generator": ["generator"], "discriminator": ["critic"]}, "no such network"),
        ({"generator": ["generator"], "critic": ["discriminator"]}, "critic"),
    ],
)
def test_players_that_do_not_partition_are_refused_in_one_line(tmp_path, players, message):
    cfg = _cfg(tmp_path)
    with open_dict(cfg):
        cfg.game.players = players
    with pytest.raises(UserError, match=message):
        build_module(cfg)


# --------------------------------------------------------------------- phases
def test_each_phase_changes_only_its_own_players_parameters(tmp_path, monkeypatch):
    record = []
    _traced(monkeypatch, record)
    train(_cfg(tmp_path / "run", "n_critic=2", "train.g_steps=3", "regularizer=[zero_gp]"))
    assert [name for name, *_ in record] == ["discriminator", "discriminator", "generator"] * 3
    for name, before, after in record:
        assert _changed(before[name], after[name]), name
        for other in before:
            if other != name:
                assert all(torch.equal(a, b) for a, b in zip(before[other], after[other]))


def test_phases_run_in_the_configured_order_with_n_critic(tmp_path, monkeypatch):
    record = []
    _traced(monkeypatch, record)
    train(_cfg(tmp_path / "d_first", "n_critic=3", "train.g_steps=2"))
    assert [name for name, *_ in record] == ["discriminator"] * 3 + ["generator"] + [
        "discriminator"
    ] * 3 + ["generator"]
    record.clear()
    cfg = _cfg(tmp_path / "g_first", "train.g_steps=2")
    with open_dict(cfg):
        cfg.game.phases = [cfg.game.phases[1], cfg.game.phases[0]]
    train(cfg)
    assert [name for name, *_ in record] == ["generator", "discriminator"] * 2


def test_a_lazy_phase_runs_every_kth_time_and_weights_its_terms_by_k(tmp_path, monkeypatch):
    record = []
    _traced(monkeypatch, record)
    module_box = []
    build = train_py.build_module
    monkeypatch.setattr(
        train_py, "build_module", lambda cfg: module_box.append(build(cfg)) or module_box[-1]
    )
    train(_cfg(tmp_path / "run", "train.g_steps=7", phases={1: {"every": 3}}))
    module = module_box[0]
    ran = [name for name, *_ in record if name == "generator"]
    assert len(ran) == 7  # due every cycle; the loop itself skips the idle ones
    moved = [_changed(b["generator"], a["generator"]) for n, b, a in record if n == "generator"]
    assert moved == [True, False, False, True, False, False, True]
    assert module.phase_due == {"discriminator": 7, "generator": 7}
    # The gain: the same draws give k times the terms.
    game = module.game
    batch = {"samples": torch.randn(8, 2)}
    phase = game.phases[1]
    state = module.noise.get_state()
    once = game.terms(phase, batch, module, 1).losses["adversarial"]
    module.noise.set_state(state)
    thrice = game.terms(phase, batch, module, 3).losses["adversarial"]
    torch.testing.assert_close(thrice, 3 * once, rtol=0, atol=0)


def test_a_phase_with_no_active_term_is_skipped(tmp_path, monkeypatch):
    record = []
    _traced(monkeypatch, record)
    monkeypatch.setattr(
        AdversarialGame, "_generator_terms", lambda self, batch, module: Terms({"g": None})
    )
    metrics = train(_cfg(tmp_path / "run", "train.g_steps=3"))
    for name, before, after in record:
        assert _changed(before[name], after[name]) == (name == "discriminator")
    assert "train/g_loss" not in metrics and "train/d_loss" in metrics
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    d_state, g_state = last["optimizer_states"]
    assert d_state["state"] and not g_state["state"]  # G's optimizer never stepped


# --------------------------------------------------------------------- resume
class _StopAt(pl.Callback):
    """SIGTERM once `d_steps` batches have run: mid-cycle when d_steps is not a multiple."""

    def __init__(self, d_steps: int) -> None:
        self.d_steps = d_steps

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if pl_module.counters.d_steps == self.d_steps:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_resume_mid_cycle_and_mid_lazy_interval_is_bit_exact(tmp_path, monkeypatch):
    lazy = {1: {"every": 2}}
    overrides = ("n_critic=3", "train.g_steps=8", "regularizer=[zero_gp]")
    train(_cfg(tmp_path / "straight", *overrides, phases=lazy))
    build_trainer = train_py.build_trainer
    monkeypatch.setattr(
        train_py,
        "build_trainer",
        lambda cfg, callbacks, loggers: build_trainer(cfg, [_StopAt(10), *callbacks], loggers),
    )
    with pytest.raises(SystemExit):
        train(_cfg(tmp_path / "stopped", *overrides, phases=lazy))
    saved = torch.load(tmp_path / "stopped/checkpoints/last.ckpt", weights_only=True)
    assert saved["gan_runner"]["counters"]["critic_steps_since_g"] == 1  # mid n_critic cycle
    assert saved["gan_runner"]["phase_due"]["generator"] % 2 == 1  # mid lazy interval
    monkeypatch.undo()
    train(_cfg(tmp_path / "stopped", *overrides, "resume=auto", phases=lazy))
    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "stopped/checkpoints/last.ckpt", weights_only=True)
    assert a["gan_runner"]["phase_due"] == b["gan_runner"]["phase_due"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for pa, pb in zip(opt_a["state"].values(), opt_b["state"].values(), strict=True):
            assert all(torch.equal(torch.as_tensor(pa[k]), torch.as_tensor(pb[k])) for k in pa)
