"""`gan-eval` end to end: checkpoints trained here, folder comparisons, gan-sample interop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from conftest import QUICK, TINY_DIGITS, call_console, compose_config, compose_named
from gan_runner import cli
from gan_runner.data.digits import Digits
from gan_runner.errors import UserError
from gan_runner.evaluate import evaluate
from gan_runner.sample import sample

TINY = [*TINY_DIGITS, "train.g_steps=3", "train.log_every=1"]
RUNS = {
    # An EMA that lags the live generator (no ramp-up); the run's own metrics on a cheap
    # classifier, which gan-eval then reuses (settings and cached weights).
    "digits": [
        *TINY,
        "callbacks.ema.rampup=null",
        "metrics=[classifier]",
        "metrics.classifier.extractor.steps=100",
        "metrics.classifier.n_fake=100",
        "metrics.classifier.show_progress=false",
    ],
    "ring": ["data=ring8", "arch.generator.hidden=[16]", "arch.discriminator.hidden=[16]"]
    + ["train.g_steps=3", "train.log_every=1"],
}
# Inception runs at ~5 images/s on these CPUs: folder tests use this weightless extractor, which
# also exercises extractor={_target_: ...}.
TINY_EXTRACTOR = "extractor={_target_:test_evaluate.TinyFeatures}"
FAST = ["show_progress=false", "num_workers=0"]


class TinyFeatures:
    """Gray levels pooled on a 4×4 grid: 16 features, no weights, microseconds per batch."""

    name, num_features = "tiny", 16

    def prepare(self, datamodule: object = None, device: torch.device | None = None) -> None:
        pass

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = F.adaptive_avg_pool2d(images.mean(1, keepdim=True), 4).flatten(1)
        return features, features[:, :10]  # the "logits" IS reads: any 10 numbers will do

    def weights_hash(self) -> str:
        return "no-weights"

    def provenance(self) -> dict[str, str]:
        return {"features": "4×4 mean pooling"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from gan_runner.train import train

    paths = {}
    with pytest.MonkeyPatch.context() as patch:
        # conftest's cache, set before its function-scoped fixture runs: the classifier the
        # run trains is the one gan-eval finds.
        patch.setenv("GAN_RUNNER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        for name, overrides in RUNS.items():
            run = tmp_path_factory.mktemp(name)
            train(compose_config([*QUICK, *overrides], run))
            paths[name] = run / "checkpoints" / "last.ckpt"
    return paths


@pytest.fixture(scope="module")
def digits_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 real digits as 16×16 grayscale PNGs."""
    folder = tmp_path_factory.mktemp("digits_png")
    images = F.interpolate(Digits().load().samples[:200].float(), size=16, mode="nearest")
    for i, image in enumerate(images.to(torch.uint8)):
        Image.fromarray(image[0].numpy()).save(folder / f"{i:04d}.png")
    return folder


def run_eval(*overrides: str) -> list[Path]:
    """gan-eval's logic on conf/eval.yaml composed with overrides, in this process."""
    return evaluate(compose_named("eval", [*FAST, *overrides]))


def console(monkeypatch: pytest.MonkeyPatch, capsys, *args: str) -> tuple[int, str, str]:
    return call_console(cli.evaluate, "gan-eval", monkeypatch, capsys, *args)


def metrics_of(path: Path) -> dict[str, float]:
    return json.loads(path.read_text())["metrics"]


# ----------------------------------------------------------------- checkpoints
def test_checkpoint_report_has_named_values_and_provenance(ckpt, monkeypatch, capsys) -> None:
    args = [f"ckpt={ckpt['digits']}", "metrics=[fid,kid,pr]", "extractor=classifier"]
    code, out, err = console(monkeypatch, capsys, *args, "n_samples=200", *FAST)
    assert code == 0, err
    base = ckpt["digits"].parents[1] / "eval" / "last-classifier_200_train-ema"
    report = json.loads(base.with_suffix(".json").read_text())
    names = ["fid", "kid", "precision", "recall"]
    assert list(report["metrics"]) == [f"{name}_classifier_200_train" for name in names]
    assert all(math.isfinite(value) for value in report["metrics"].values())
    assert report["checkpoint"] == str(ckpt["digits"].resolve())
    assert (report["g_steps"], report["generator"]) == (3, "ema") and report["kimg"] > 0
    provenance = report["provenance"]
    assert provenance["classifier_accuracy"] > 0.5 and provenance["steps"] == 100  # the run's
    assert provenance["n_fake"] == provenance["n_samples"] == 200 and provenance["seed"] == 0
    assert provenance["split"].startswith("train") and len(provenance["weights_sha256"]) == 16
    assert provenance["versions"]["torch"] and provenance["date"]
    table = base.with_suffix(".md").read_text()
    for name, value in report["metrics"].items():
        assert f"| {name} | {value:.6g} |" in table
        assert f"{name} = {value:.6g} (ema generator)" in out
    assert "classifier_accuracy" in table and f"Wrote {base.with_suffix('.json')}" in out


def test_ema_live_and_seeds(ckpt, tmp_path) -> None:
    # No extractor given: the run's own (the classifier of metrics=[classifier]).
    common = [f"ckpt={ckpt['digits']}", "scores=[fid,kid]", "n_samples=200"]
    both = run_eval(*common, "also_live=true", f"out={tmp_path / 'both.json'}")
    assert [p.name for p in both] == ["both.json", "both.md", "both-live.json", "both-live.md"]
    ema, live = metrics_of(both[0]), metrics_of(both[2])
    assert list(ema) == ["fid_classifier_200_train", "kid_classifier_200_train"]
    assert json.loads(both[2].read_text())["generator"] == "live"
    assert ema != live  # the EMA lags the live generator in this run
    again = run_eval(*common, f"out={tmp_path / 'again'}")
    assert metrics_of(again[0]) == ema  # same seed, same numbers
    unsmoothed = run_eval(*common, "use_ema=false", f"out={tmp_path / 'live'}")
    assert metrics_of(unsmoothed[0]) == live
    other = run_eval(*common, "seed=1", f"out={tmp_path / 'seed1'}")
    assert metrics_of(other[0]) != ema


def test_points_checkpoint_gets_the_mixture_protocol(ckpt, tmp_path) -> None:
    written = run_eval(f"ckpt={ckpt['ring']}", "n_samples=500", f"out={tmp_path / 'ring'}")
    report = json.loads(written[0].read_text())
    assert list(report["metrics"]) == ["modes_500", "hq_percent_500", "rkl_500", "score_500"]
    assert "mixture protocol" in report["note"] and "mixture protocol" in written[1].read_text()
    assert report["provenance"]["n_modes"] == 8


def test_data_root_override_finds_moved_data(ckpt, digits_png, tmp_path, monkeypatch, capsys):
    # The digits checkpoint, as if trained on an image folder that is not on this machine.
    checkpoint = torch.load(ckpt["digits"], weights_only=True)
    data = checkpoint["gan_runner"]["config"]["data"]
    data["source"] = {
        "_target_": "gan_runner.data.vision.ImageFolder",
        "root": str(tmp_path / "gone"),
        "channels": 1,
    }
    data.update(num_classes=0, resolution=16, shape=[1, 16, 16], keep_on_device=False)
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    args = [f"ckpt={moved}", TINY_EXTRACTOR, "scores=[fid,kid]", "n_samples=50", *FAST]
    code, _, err = console(monkeypatch, capsys, *args)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: data=imagefolder: no images") and "data.source.root" in err
    written = run_eval(*args, f"data.source.root={digits_png}", f"out={tmp_path / 'found'}")
    report = json.loads(written[0].read_text())
    assert report["provenance"]["n_real"] == 200 and "fid_tiny_50_train" in report["metrics"]


# ----------------------------------------------------------------- folders
@pytest.fixture(scope="module")
def noise_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("noise_png")
    noise = torch.randint(0, 256, (200, 16, 16), generator=torch.Generator().manual_seed(0))
    for i, image in enumerate(noise.to(torch.uint8)):
        Image.fromarray(image.numpy()).save(folder / f"{i:04d}.png")
    return folder


def test_folder_against_its_copy_and_against_noise(digits_png, noise_png, tmp_path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in digits_png.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    scores = [TINY_EXTRACTOR, "scores=[fid,kid,pr]"]
    same = run_eval(f"folders=[{digits_png},{copy}]", *scores, f"out={tmp_path / 'same'}")
    report = json.loads(same[0].read_text())
    assert report["folders"] == {"reference": str(digits_png), "scored": str(copy)}
    values = report["metrics"]
    assert abs(values["fid_tiny_200_folder"]) < 1e-3
    assert values["precision_tiny_200_folder"] == values["recall_tiny_200_folder"] == 1.0
    noisy = run_eval(f"folders=[{digits_png},{noise_png}]", *scores, f"out={tmp_path / 'noise'}")
    noise = metrics_of(noisy[0])
    assert noise["fid_tiny_200_folder"] > 1.0 and noise["recall_tiny_200_folder"] < 0.5


def test_gan_sample_folders_feed_gan_eval(ckpt, digits_png, tmp_path, monkeypatch, capsys):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="gan_runner.conf", version_base="1.3"):
        cfg = compose("sample", overrides=[f"ckpt={ckpt['digits']}", "mode=folder", "n=40"])
    GlobalHydra.instance().clear()
    fakes = tmp_path / "fakes"
    cfg.out = str(fakes)
    sample(cfg)  # 8×8 PNGs: resized to the reference's 16×16
    monkeypatch.chdir(tmp_path)
    args = [f"folders=[{digits_png},{fakes}]", TINY_EXTRACTOR, "metrics=[fid,is,dc]", *FAST]
    code, out, err = console(monkeypatch, capsys, *args)
    assert code == 0, err
    report = json.loads((tmp_path / "eval_report.json").read_text())
    names = [
        "fid_tiny_40_folder",
        "is_tiny_40",
        "density_tiny_40_folder",
        "coverage_tiny_40_folder",
    ]
    assert list(report["metrics"]) == names
    assert "resized to 16×16" in report["note"] and "fid_tiny_40_folder = " in out
    assert (tmp_path / "eval_report.md").is_file()


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "error: neither ckpt nor folders is set; pass ckpt="),
        (["ckpt={ckpt}", "folders=[{a},{a}]"], "error: both ckpt and folders are set"),
        (["ckpt={ckpt}", "metrics=[fid,fjd]"], "error: unknown metric fjd in scores=[fid,fjd]"),
        (["folders={a}"], "error: folders={a} must list two image folders"),
        (["folders=[{a},{missing}]"], "error: folders: {missing} does not exist"),
        (["folders=[{empty},{a}]"], "error: folders: {empty} holds 0 images"),
        (["folders=[{a},{a}]", "extractor=classifier"], "error: extractor=classifier trains"),
        (["folders=[{a},{a}]", "extractor=vgg"], "error: extractor=vgg is unknown"),
        (
            ["folders=[{a},{a}]", "extractor={{_target_:torch.nn.Identity}}"],
            "error: extractor._target_=torch.nn.Identity is not a feature extractor: it lacks",
        ),
        (["ckpt={ckpt}", "n_samples=1"], "error: n_samples=1 is invalid"),
    ],
)
def test_console_errors_are_one_line(
    ckpt, digits_png, tmp_path, monkeypatch, capsys, args, expected
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    fill = {
        "ckpt": ckpt["digits"],
        "a": digits_png,
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
    }
    code, _, err = console(monkeypatch, capsys, *(a.format(**fill) for a in args), *FAST)
    assert code == 2
    assert err.startswith(expected.format(**fill)), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_messages_name_gan_evals_keys(ckpt, digits_png, tmp_path, monkeypatch, capsys) -> None:
    missing = tmp_path / "nope.pth"
    args = [f"folders=[{digits_png},{digits_png}]", f"weights_path={missing}", *FAST]
    code, _, err = console(monkeypatch, capsys, *args)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: metrics: the Inception weights {missing} could not be read")
    assert "or set weights_path=<file>" in err  # not gan-run's metrics.inception.extractor...
    code, _, err = console(monkeypatch, capsys, f"ckpt={ckpt['digits']}", "split=test", *FAST)
    assert code == 2 and err.startswith("error: metrics: data=Digits has no 'test' split")
    assert "set split to one of: train" in err


def test_scores_are_checked_before_anything_loads() -> None:
    with pytest.raises(UserError, match="choose from: fid, kid, is, pr, dc"):
        run_eval("ckpt=/nowhere.ckpt", "scores=[fid,precision]")
