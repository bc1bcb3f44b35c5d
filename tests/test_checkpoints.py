"""Reading checkpoints: gan-run's rebuild with no data; anything else is one line naming it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import QUICK, TINY_DIGITS, compose_config
from gan_runner import cli
from gan_runner.checkpoints import check_targets_trusted, load_checkpoint, rebuild, run_config
from gan_runner.errors import UserError

TINY = [*TINY_DIGITS]


class Pickled:
    """A class torch.save pickles by reference: weights_only loading must refuse to import it."""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step gan-run checkpoint whose EMA generator lags the live one (no EMA ramp-up)."""
    from gan_runner.train import train

    run = tmp_path_factory.mktemp("run")
    overrides = [
        *QUICK,
        *TINY,
        "train.g_steps=2",
        "train.log_every=1",
        "callbacks.ema.rampup=null",
    ]
    train(compose_config(overrides, run))
    return run / "checkpoints" / "last.ckpt"


def test_load_checkpoint_returns_gan_runner_state(checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint)
    assert loaded["gan_runner"]["counters"]["g_steps"] == 2
    assert loaded["gan_runner"]["config"]["arch"]["generator"]["base_width"] == 8


def test_rebuild_restores_weights_in_eval_mode(checkpoint: Path) -> None:
    module, cfg = rebuild(checkpoint)
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert not module.training and not module.generator.training
    assert cfg.data.resolution == 8 and cfg.z_dim == module.z_dim
    for name, value in module.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert module.sampling_generator is module.generator_ema


def test_rebuild_without_ema_samples_the_live_generator(checkpoint: Path) -> None:
    with_ema, _ = rebuild(checkpoint, use_ema=True)
    live, _ = rebuild(checkpoint, use_ema=False)
    assert getattr(live, "generator_ema", None) is None
    assert live.sampling_generator is live.generator
    z = torch.randn(4, live.z_dim, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(with_ema.sample(z), live.sample(z))
    assert torch.equal(live.sample(z), with_ema.generator.eval()(z))


def test_rebuild_needs_no_data(checkpoint: Path, tmp_path: Path) -> None:
    """build_module reads only the model's nodes: a data source that cannot load is no obstacle."""
    loaded = torch.load(checkpoint, weights_only=True)
    data = loaded["gan_runner"]["config"]["data"]
    data["source"]["_target_"] = "nowhere.MissingSource"
    loaded["gan_runner"]["config"]["paths"]["data_dir"] = str(tmp_path / "absent")
    moved = tmp_path / "moved.ckpt"
    torch.save(loaded, moved)
    module, _ = rebuild(moved)
    assert module.sample(module.fixed_latent[:2]).shape == (2, 1, 8, 8)


def test_untrusted_targets_are_refused_before_anything_runs(checkpoint: Path, tmp_path) -> None:
    loaded = torch.load(checkpoint, weights_only=True)
    generator = loaded["gan_runner"]["config"]["arch"]["generator"]
    generator.clear()
    generator.update({"_target_": "os.system", "command": f"touch {tmp_path / 'ran'}"})
    hostile = tmp_path / "hostile.ckpt"
    torch.save(loaded, hostile)
    with pytest.raises(UserError, match=r"names arch.generator._target_=os.system.*\[os\.\]"):
        rebuild(hostile)
    assert not (tmp_path / "ran").exists()
    check_targets_trusted(run_config(load_checkpoint(hostile)), hostile, extra=["os."])


def _foreign_files(folder: Path, checkpoint: Path) -> dict[str, Path]:
    files = {"missing": folder / "absent.ckpt", "folder": folder}
    files["text"] = folder / "notes.txt"
    files["text"].write_text("not a checkpoint\n")
    files["empty"] = folder / "empty.ckpt"
    files["empty"].write_bytes(b"")
    files["truncated"] = folder / "truncated.ckpt"
    files["truncated"].write_bytes(checkpoint.read_bytes()[:4000])
    files["plain_dict"] = folder / "weights.pt"
    torch.save({"weight": torch.ones(3)}, files["plain_dict"])
    files["list"] = folder / "list.pt"
    torch.save([torch.ones(1)], files["list"])
    files["pickled_class"] = folder / "object.pt"
    torch.save({"model": Pickled()}, files["pickled_class"])
    files["other_format"] = folder / "future.ckpt"
    loaded = torch.load(checkpoint, weights_only=True)
    loaded["gan_runner"]["format"] = 99
    torch.save(loaded, files["other_format"])
    return files


EXPECTED = {
    "missing": "does not exist",
    "folder": "is a folder",
    "text": "not a readable torch checkpoint",
    "empty": "not a readable torch checkpoint",
    "truncated": "not a readable torch checkpoint",
    "plain_dict": "not a gan-run checkpoint (no 'gan_runner' entry)",
    "list": "not a gan-run checkpoint",
    "pickled_class": "holds pickled Python code (test_checkpoints.Pickled)",
    "other_format": "checkpoint format 99",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_foreign_or_corrupt_files_are_one_line_errors(
    kind: str, checkpoint: Path, tmp_path: Path
) -> None:
    path = _foreign_files(tmp_path, checkpoint)[kind]
    with pytest.raises(UserError) as caught:
        rebuild(path)
    message = str(caught.value)
    assert "\n" not in message and f"ckpt={path}" in message
    assert EXPECTED[kind] in message
    assert "gan-run" in message or "gan_runner version" in message  # what to pass instead


def test_run_folder_error_names_its_last_checkpoint(checkpoint: Path) -> None:
    run = checkpoint.parents[1]
    with pytest.raises(UserError, match=f"pass ckpt={checkpoint}"):
        load_checkpoint(run)


def test_console_reports_a_foreign_file_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    GlobalHydra.instance().clear()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["gan-sample", f"ckpt={text}"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop:
        cli.sample()
    GlobalHydra.instance().clear()
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith(f"error: ckpt={text} is not a readable torch checkpoint")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_checkpoint_from_before_games_rebuilds_and_resumes_as_the_adversarial_game(tmp_path):
    """Runs written before players/phases/games stored no game, terms or phase counts."""
    from gan_runner.train import train

    overrides = [*QUICK, *TINY, "callbacks.samples=null", "callbacks.loss_curve=null"]
    overrides += ["callbacks.progress=null", "callbacks.metrics=null", "schedule=constant"]
    train(compose_config([*overrides, "train.g_steps=6"], tmp_path / "straight"))
    train(compose_config([*overrides, "train.g_steps=3"], tmp_path / "old"))
    last = tmp_path / "old" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    for key in ("game", "terms"):
        del state["gan_runner"]["config"][key]
    del state["gan_runner"]["phase_due"], state["gan_runner"]["game"]
    torch.save(state, last)

    module, cfg = rebuild(last)
    assert cfg.game._target_.endswith("AdversarialGame") and module.game.phases[0].repeats == 1
    train(compose_config([*overrides, "train.g_steps=6", "resume=auto"], tmp_path / "old"))
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
