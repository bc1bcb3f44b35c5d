"""BiGAN/ALI's tools: gan-sample mode=reconstruct and mode=translate, the encoder's metrics
(reconstruction ratio, linear probe) and exact resume of model=bigan and model=ali.

One tiny BiGAN is trained per module on 8×8 digits. Measured (seed 0, 800 G steps, lr 4e-3,
batch 128, 64-wide MLPs, z_dim 16, one thread; ~10 s on a loaded 2-core box): EGr/EGr_b 1.000
untrained -> 0.880, held-out probe accuracy 0.891 (a random encoder: 0.872). Seed 1: 0.780.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import QUICK, TINY_DIGITS, call_console, compose_config, compose_named
from gan_runner import cli
from gan_runner.data.digits import Digits, DigitsUnpaired
from gan_runner.data.module import TensorData, held_out_indices, to_model_range
from gan_runner.errors import UserError
from gan_runner.metrics.encoder import LinearProbe, Reconstruction
from gan_runner.sample import sample
from gan_runner.sample_inverse import refuse_mode, translate_mode
from gan_runner.train import build, build_module, train
from test_resume import _assert_same_state, straight_and_resumed

TINY_BIGAN = [
    *QUICK,
    "data=digits",
    "data.resolution=8",
    "z_dim=16",
    "arch.generator.hidden=[64,64]",
    "arch.generator.norm=none",
    "arch.encoder.hidden=[64,64]",
    "arch.discriminator.x_hidden=[64]",
    "arch.discriminator.z_hidden=[64]",
    "arch.discriminator.joint_hidden=[128]",
    "callbacks.samples=null",
    "callbacks.loss_curve=null",
    "callbacks.progress=null",
]
TRAINED = [
    *TINY_BIGAN,
    "model=bigan",
    "data.batch_size=128",
    "optimizer.generator.lr=4e-3",
    "optimizer.discriminator.lr=4e-3",
    "callbacks.ema=null",
    "metrics=[reconstruction,linear_probe]",
    "callbacks.metrics.every=0",
    "train.g_steps=800",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The trained BiGAN (its checkpoint and end-of-run metrics) and a DCGAN without encoder."""
    bigan = tmp_path_factory.mktemp("bigan")
    values = train(compose_config(TRAINED, bigan))
    dcgan = tmp_path_factory.mktemp("dcgan")
    train(compose_config([*QUICK, *TINY_DIGITS, "train.g_steps=1", "metrics=[]"], dcgan))
    return {
        "bigan": bigan / "checkpoints" / "last.ckpt",
        "values": values,
        "dcgan": dcgan / "checkpoints" / "last.ckpt",
    }


def run_sample(path: Path, *overrides: str) -> list[Path]:
    return sample(compose_named("sample", [f"ckpt={path}", *overrides]))


def tiles(path: Path, size: int = 8) -> np.ndarray:
    """A grid PNG's tiles as (rows, cols, size, size) gray pixels (2-pixel padding)."""
    grid = np.asarray(Image.open(path).convert("L"))
    rows, cols = (grid.shape[0] - 2) // (size + 2), (grid.shape[1] - 2) // (size + 2)
    step = size + 2
    return np.array(
        [
            [grid[2 + r * step :][:size, 2 + c * step :][:, :size] for c in range(cols)]
            for r in range(rows)
        ]
    )


# ----------------------------------------------------------------------------- metrics
def test_trained_encoder_reconstructs_held_out_digits_better_than_untrained(runs, tmp_path):
    cfg = compose_config(TRAINED, tmp_path)
    untrained = Reconstruction().evaluate(build_module(cfg), build(cfg, "data"), None)
    trained = runs["values"]["val/reconstruction_ratio"]
    print(f"EGr/EGr_b: untrained {untrained['reconstruction_ratio']:.3f}, trained {trained:.3f}")
    assert untrained["reconstruction_ratio"] >= 0.98
    assert trained <= untrained["reconstruction_ratio"] - 0.05
    assert runs["values"]["val/reconstruction_mse"] < untrained["reconstruction_mse"]


def test_an_exact_inverse_scores_zero_on_both_reconstruction_numbers():
    identity = SimpleNamespace(
        encoder=nn.Flatten(),
        generator=Unflatten(),
        game=None,
        sample=lambda z: z.view(-1, 1, 8, 8),
    )
    identity.sampling_generator = identity.generator
    data = TensorData(Digits().load().samples)
    values = Reconstruction(n_samples=50).evaluate(identity, datamodule(data), None)
    assert values == {"reconstruction_ratio": 0.0, "reconstruction_mse": 0.0}


class Unflatten(nn.Module):
    def forward(self, z, labels=None):
        return z.view(-1, 1, 8, 8)


def datamodule(data: TensorData, name: str = "digits") -> SimpleNamespace:
    return SimpleNamespace(
        setup=lambda: None, data=data, source=SimpleNamespace(name=name), held_out=None
    )


def test_linear_probe_reads_digit_classes_from_the_trained_encoder(runs):
    values = runs["values"]
    print({k: round(v, 3) for k, v in values.items() if "probe" in k})
    assert values["val/probe_accuracy"] >= 0.6  # chance: 0.1
    assert 0.1 < values["val/probe_accuracy_random"] <= 1.0


def test_linear_probe_on_raw_pixels_fits_train_and_scores_the_held_out_20_percent():
    digits = Digits().load()
    probe = LinearProbe()
    module = SimpleNamespace(encoder=nn.Flatten())
    values = probe.evaluate(module, datamodule(digits), None)
    assert len(probe.test) == len(held_out_indices(len(digits))) == 359
    assert len(probe.train) == len(digits) - 359
    assert torch.equal(probe.test.samples[0], digits.samples[held_out_indices(len(digits))[0]])
    assert values["probe_accuracy"] >= 0.9  # logistic regression on 8x8 digits' pixels


def test_metrics_refuse_a_run_without_encoder_or_labels_in_one_line():
    no_encoder = SimpleNamespace(game=SimpleNamespace())
    data = datamodule(Digits().load())
    for metric, name in ((Reconstruction(), "reconstruction"), (LinearProbe(), "linear_probe")):
        with pytest.raises(UserError) as refused:
            metric.evaluate(no_encoder, data, None)
        message = str(refused.value)
        assert f"metrics.{name}" in message and "model=bigan, model=ali or model=aae" in message
        assert "\n" not in message
    # Before training: the callbacks prepare each metric with the trainer's module at hand.
    data.trainer = SimpleNamespace(lightning_module=no_encoder)
    with pytest.raises(UserError, match="metrics.reconstruction scores an encoder"):
        Reconstruction().prepare(data)
    unlabelled = datamodule(TensorData(Digits().load().samples), name="imagefolder")
    with pytest.raises(UserError, match="data=imagefolder has not got; drop linear_probe"):
        LinearProbe().evaluate(SimpleNamespace(encoder=nn.Flatten()), unlabelled, None)


# ----------------------------------------------------------------------------- mode=reconstruct
def test_reconstruct_writes_held_out_digits_beside_their_reconstructions(runs, tmp_path, capsys):
    out = tmp_path / "rec.png"
    assert run_sample(runs["bigan"], "mode=reconstruct", "n=10", "nrow=4", f"out={out}") == [out]
    assert Image.open(out).size == (4 * 10 + 2, 6 * 10 + 2)  # 3 pairs of rows of 4
    grid = tiles(out)
    held = Digits().load().samples[held_out_indices(1797)[:10], 0].numpy()
    originals = np.concatenate([grid[0], grid[2], grid[4]])[:10]
    reconstructions = np.concatenate([grid[1], grid[3], grid[5]])[:10]
    assert np.array_equal(originals, held)
    assert np.abs(reconstructions.astype(int) - originals).mean() > 5
    assert (grid[4, 2:] == 255).all() and (grid[5, 2:] == 255).all()  # blank tiles fill
    assert "EGr/EGr_b on these 10 images" in capsys.readouterr().out


def test_reconstruct_reads_an_input_folder_at_the_run_resolution(runs, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):  # 16x16 RGB files: converted to gray and resized to 8x8
        pixels = np.zeros((16, 16, 3), np.uint8)
        pixels[:, 4 * i : 4 * i + 4] = 255
        Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "rec.png"
    run_sample(runs["bigan"], "mode=reconstruct", f"input={folder}", f"out={out}")
    grid = tiles(out)
    assert grid.shape[:2] == (2, 3)
    assert grid[0, 0, :, :2].min() >= 200 and grid[0, 0, :, 3:].max() <= 50  # columns 0-1 lit


def console(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    return call_console(cli.sample, "gan-sample", monkeypatch, capsys, *args)


@pytest.mark.parametrize(
    ("ckpt", "args", "expected"),
    [
        ("dcgan", ["mode=reconstruct"], "no encoder network (AdversarialGame); train with "),
        ("dcgan", ["mode=translate"], "from latent codes (AdversarialGame); use mode=grid"),
        ("bigan", ["mode=translate", "direction=up"], "direction=up is unknown; choose a2b"),
        ("bigan", ["mode=reconstruct", "input=nowhere"], "input=nowhere is not a folder"),
    ],
)
def test_refusals_are_one_line(runs, tmp_path, monkeypatch, capsys, ckpt, args, expected):
    monkeypatch.chdir(tmp_path)
    code, _, err = console(monkeypatch, capsys, f"ckpt={runs[ckpt]}", *args)
    assert code == 2 and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------- mode=translate
class Negate(nn.Module):
    """A stand-in translation network: x -> -x (on [0, 255]: u -> 255 - u), its own inverse."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x, labels=None):
        return -x + self.anchor


class FakeTranslation:
    translates = True


def translation_module(cycle: bool) -> SimpleNamespace:
    source = {"_target_": "gan_runner.data.digits.DigitsUnpaired"}
    module = SimpleNamespace(
        game=FakeTranslation(),
        sampling_generator=Negate(),
        run_config={"data": {"shape": [1, 8, 8], "source": source}},
    )
    if cycle:
        module.generator_ba = Negate()
    return module


def translate(module, tmp_path: Path, *overrides: str) -> np.ndarray:
    cfg = compose_named("sample", ["ckpt=fake.ckpt", "mode=translate", "n=5", *overrides])
    out = tmp_path / "translate.png"
    assert translate_mode(module, cfg, torch.Generator(), out) == [out]
    return tiles(out)


def test_translate_shows_source_translation_and_cycle_from_the_test_split(tmp_path, capsys):
    grid = translate(translation_module(cycle=True), tmp_path)
    # x -> -x against the true restyling x -> sqrt(x) of the test split, by hand:
    truth = DigitsUnpaired().load(resolution=8, split="test")
    a, b = (to_model_range(d[:5]) for d in (truth.a, truth.b))
    expected = (-a - b).abs().mean()
    assert f"true translations (on [-1, 1]): {float(expected):.4f}" in capsys.readouterr().out
    assert grid.shape[:2] == (5, 3)  # one row per source image
    test_a = DigitsUnpaired().load(resolution=8, split="test").a[:5, 0].numpy()
    assert np.array_equal(grid[:, 0], test_a)
    assert np.array_equal(grid[:, 1].astype(int), 255 - test_a.astype(int))
    assert np.array_equal(grid[:, 2], test_a)  # F(G(a)) = a
    b2a = translate(translation_module(cycle=True), tmp_path, "direction=b2a")
    test_b = DigitsUnpaired().load(resolution=8, split="test").b[:5, 0].numpy()
    assert np.array_equal(b2a[:, 0], test_b)


def test_translate_without_reverse_generator_has_two_columns_and_refuses_b2a(tmp_path):
    module = translation_module(cycle=False)
    assert translate(module, tmp_path).shape[:2] == (5, 2)
    with pytest.raises(UserError, match="direction=b2a needs a B -> A generator.*direction=a2b"):
        translate(module, tmp_path, "direction=b2a")


@pytest.mark.parametrize("mode", ["grid", "folder", "interpolate", "arithmetic", "reconstruct"])
def test_every_other_mode_refuses_a_translation_checkpoint_naming_translate(mode):
    cfg = compose_named("sample", ["ckpt=cyclegan.ckpt", f"mode={mode}"])
    with pytest.raises(UserError) as refused:
        refuse_mode(translation_module(cycle=True), cfg)
    message = str(refused.value)
    assert f"mode={mode} is for models that generate from latent codes" in message
    assert "use mode=translate" in message
    assert "\n" not in message


# ----------------------------------------------------------------------------- resume
RESUME = [*TINY_BIGAN, "data.batch_size=64", "callbacks.metrics=null", "train.log_every=5"]


@pytest.mark.parametrize("model", ["bigan", "ali"])
def test_resume_of_bigan_and_ali_is_bit_exact(tmp_path, model):
    # 28 batches an epoch: the resume point (g_steps 15) lies mid-epoch and the run crosses into
    # the next; ALI's stochastic encoder draws from torch's global stream, restored on resume.
    common = [*RESUME, f"model={model}", "callbacks.checkpoint.every=15", "train.g_steps=35"]
    a, b = straight_and_resumed(tmp_path, common, at=15)
    assert a["gan_runner"]["counters"]["g_steps"] == 35
    assert any(key.startswith("encoder.") for key in a["state_dict"])
    assert any(key.startswith("generator_ema.") for key in a["state_dict"])
    _assert_same_state(a, b)


def test_truncation_of_a_translation_checkpoint_is_one_line():
    # A translator maps images and draws no latent: there is nothing for ψ to truncate.
    cfg = compose_named("sample", ["ckpt=cyclegan.ckpt", "mode=translate", "truncation=0.5"])
    with pytest.raises(UserError) as refused:
        refuse_mode(translation_module(cycle=True), cfg)
    message = str(refused.value)
    assert "truncation=0.5 truncates a latent code" in message and "drop truncation" in message
    assert "\n" not in message
