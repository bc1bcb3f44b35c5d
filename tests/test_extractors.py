"""Feature extractors: the digits classifier (accuracy, cache) and the offline Inception path."""

from __future__ import annotations

import math
import urllib.error
from pathlib import Path

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

import gan_runner.metrics.extractors as extractors
from gan_runner.data.digits import Digits
from gan_runner.data.module import GANDataModule, TensorData
from gan_runner.errors import UserError
from gan_runner.metrics.extractors import (
    INCEPTION_FILE,
    ClassifierFeatures,
    InceptionFeatures,
    inception_input,
    tensor_digest,
)
from gan_runner.metrics.fidelity import FidelityEvaluation
from gan_runner.train import build, build_module

# The accuracy the classifier extractor is stated to reach on digits (held-out 20%, 16×16).
DIGITS_ACCURACY = 0.9
QUICK = {"steps": 300}  # the test's training budget; the config's 1000 steps reach ~0.99


def digits(resolution: int = 16) -> GANDataModule:
    return GANDataModule(Digits(), 64, [1, resolution, resolution], 10)


def fail(*args, **kwargs):
    raise AssertionError("trained again instead of loading the cached classifier")


# ----------------------------------------------------------------- classifier
def test_the_digits_classifier_reaches_its_stated_accuracy_and_is_cached(tmp_path, monkeypatch):
    datamodule = digits()
    first = ClassifierFeatures(tmp_path, **QUICK)
    with torch.no_grad():  # as inside the metrics callback: training must enable grads itself
        first.prepare(datamodule)
    assert first.accuracy >= DIGITS_ACCURACY
    assert list(tmp_path.glob("classifier-*.pt"))
    images = datamodule.data.samples[:200].float() / 127.5 - 1
    features, logits = first.extract(images)
    assert features.shape == (200, first.num_features) and logits.shape == (200, 10)
    agree = (first.predict(images) == datamodule.data.labels[:200]).float().mean()
    assert agree >= DIGITS_ACCURACY

    monkeypatch.setattr(extractors, "train_classifier", fail)
    second = ClassifierFeatures(tmp_path, **QUICK)
    second.prepare(datamodule)
    assert second.accuracy == first.accuracy and second.weights_hash() == first.weights_hash()
    assert torch.equal(second.extract(images)[0], features)
    # Other training settings, or another resolution, make another classifier.
    with pytest.raises(AssertionError, match="trained again"):
        ClassifierFeatures(tmp_path, steps=301).prepare(datamodule)
    with pytest.raises(AssertionError, match="trained again"):
        ClassifierFeatures(tmp_path, **QUICK).prepare(digits(resolution=8))


class Unlabelled:
    def load(self, resolution: int | None = None) -> TensorData:
        return TensorData(torch.zeros(64, 1, 8, 8, dtype=torch.uint8))


def test_data_without_labels_suggest_the_inception_extractor(tmp_path):
    datamodule = GANDataModule(Unlabelled(), 8, [1, 8, 8])
    with pytest.raises(UserError, match="labelled.*metrics=inception") as error:
        ClassifierFeatures(tmp_path).prepare(datamodule)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------- inception
@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file of the 2015 InceptionV3's shapes (random values): what the offline path needs."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    with pytest.MonkeyPatch.context() as patch:
        # Build the architecture only: no download, and no state dict to load into it.
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", no_op)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
            # He init keeps activations alive through 90 layers, so features differ per image.
            for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("weights") / "inception.pth"
    torch.save(net.state_dict(), path)
    return path


def no_op(*args, **kwargs) -> None:
    return None


def offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_inception_offline_without_weights_says_which_file_and_where_in_one_line(monkeypatch):
    monkeypatch.setattr(
        "torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", offline
    )
    with pytest.raises(UserError) as error:
        InceptionFeatures().prepare()
    message = str(error.value)
    assert "\n" not in message and INCEPTION_FILE in message
    assert "hub/checkpoints" in message and "metrics.inception.extractor.weights_path" in message
    assert "https://github.com/toshas/torch-fidelity/releases" in message


def test_inception_weights_that_are_missing_or_of_other_shapes_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="could not be read.*FileNotFoundError"):
        InceptionFeatures(str(tmp_path / "missing.pth")).prepare()
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3)}, wrong)
    with pytest.raises(UserError, match="is not the InceptionV3 weights") as error:
        InceptionFeatures(str(wrong)).prepare()
    assert "\n" not in str(error.value)


def test_the_inception_path_runs_end_to_end_with_a_weights_file(
    inception_weights, make_cfg, tmp_path
):
    cfg = make_cfg("data=digits", "arch=dcgan", "data.resolution=16")
    datamodule, module = build(cfg, "data"), build_module(cfg)
    extractor = InceptionFeatures(str(inception_weights))
    evaluation = FidelityEvaluation(
        extractor,
        ["fid", "kid", "is", "pr", "dc"],
        n_fake=6,
        n_real=6,
        batch_size=8,
        cache_dir=tmp_path,
        show_progress=False,
    )
    values = evaluation.evaluate(module, datamodule, torch.Generator().manual_seed(0))
    assert set(values) == set(evaluation.names()) and "fid_inception_6_train" in values
    assert all(math.isfinite(value) for value in values.values())
    assert values["fid_inception_6_train"] > 0

    # The features of torchmetrics' own Inception path with these weights, paper settings.
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    features, logits = extractor.extract(images)
    assert features.shape == (3, 2048) and logits.shape == (3, 1008)
    native = FrechetInceptionDistance(
        feature=2048, feature_extractor_weights_path=str(inception_weights), antialias=False
    )
    assert torch.allclose(native.inception(inception_input(images)), features, rtol=1e-5)
    saved = torch.load(inception_weights, weights_only=True)
    provenance = evaluation.provenance()
    assert provenance["weights_sha256"] == tensor_digest(*saved.values())[:16]
    assert provenance["antialias"] is False and provenance["n_real"] == 6
