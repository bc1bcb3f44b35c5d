"""FID/KID/IS/PR/DC: known answers on synthetic features, and the classifier protocol on digits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from hydra.errors import ConfigCompositionException

from gan_runner.data.digits import Digits
from gan_runner.data.module import GANDataModule, TensorData, resize_images, to_model_range
from gan_runner.errors import UserError
from gan_runner.metrics.base import to_uint8
from gan_runner.metrics.extractors import ClassifierFeatures, inception_input
from gan_runner.metrics.fidelity import FidelityEvaluation, class_modes, reference_data
from gan_runner.metrics.scores import (
    density_coverage,
    frechet_distance,
    inception_score,
    kernel_distance,
    precision_recall,
)
from gan_runner.train import build, build_module

RESOLUTION = 16
N_TRAIN = 1300  # digits the reference (and the classifier) see; the other 497 play a generator


def gaussian(n: int, dim: int = 16, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    noise = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=torch.Generator().manual_seed(99)) / math.sqrt(dim)
    return torch.randn(n, dim, generator=noise, dtype=torch.float64) @ mixing.double() + shift


# ----------------------------------------------------------------- conversions
def test_to_uint8_clamps_and_rounds_instead_of_wrapping():
    images = torch.tensor([-1.01, -1.0, 0.0, 0.999, 1.0, 1.01]).view(1, 1, 1, 6)
    assert to_uint8(images).flatten().tolist() == [0, 0, 128, 255, 255, 255]
    gray = inception_input(images)
    assert gray.dtype == torch.uint8 and gray.shape == (1, 3, 1, 6)


# ----------------------------------------------------------------- FID
def test_fid_of_a_set_against_itself_is_zero():
    features = gaussian(2000)
    typical = frechet_distance(features, gaussian(2000, shift=0.5, seed=1))
    assert abs(frechet_distance(features, features)) < 1e-3 * typical


def test_fid_grows_monotonically_as_noise_is_added():
    real, other = gaussian(2000), gaussian(2000, seed=1)
    noise = torch.randn(other.shape, generator=torch.Generator().manual_seed(2), dtype=other.dtype)
    values = [frechet_distance(real, other + sigma * noise) for sigma in (0, 0.1, 0.3, 1, 3)]
    assert values == sorted(values) and values[-1] > 10 * values[1]


def scipy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Heusel et al.'s formula written independently, with SciPy's matrix square root."""
    mu_r, mu_f = real.mean(0), fake.mean(0)
    sigma_r, sigma_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(sigma_r @ sigma_f).real
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(sigma_r + sigma_f - 2 * root))


def test_fid_matches_an_independent_numpy_scipy_computation():
    real, fake = gaussian(1500), gaussian(1200, shift=0.3, seed=1) * 1.2
    expected = scipy_fid(real.numpy(), fake.numpy())
    assert frechet_distance(real.float(), fake.float()) == pytest.approx(expected, rel=1e-3)


# ----------------------------------------------------------------- KID, IS
def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shifted_one():
    real = gaussian(1000)
    same = kernel_distance(real, gaussian(1000, seed=1), subsets=50, subset_size=500)
    shifted = kernel_distance(real, gaussian(1000, shift=1.0, seed=1), subsets=50, subset_size=500)
    assert shifted > 0.1 and abs(same) < 0.01 * shifted


@pytest.mark.filterwarnings("ignore:std\\(\\)")  # one split has no spread
def test_inception_score_known_answers_and_global_rng_untouched():
    state = torch.get_rng_state()
    confident = 50.0 * torch.eye(10).repeat(100, 1)  # every class equally often, each certain
    assert inception_score(confident, splits=1) == pytest.approx(10.0, rel=1e-4)
    assert 9 < inception_score(confident) < 10  # each split's class histogram is not quite flat
    assert inception_score(torch.zeros(1000, 10)) == pytest.approx(1.0, abs=1e-5)
    kernel_distance(gaussian(200), gaussian(200, seed=1), subsets=5, subset_size=100)
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------- PR and DC
def test_identical_sets_are_fully_precise_recalled_dense_and_covered():
    features = gaussian(1000, dim=8)
    precision, recall = precision_recall(features, features)
    density, coverage = density_coverage(features, features)
    assert (precision, recall, coverage) == (1.0, 1.0, 1.0)
    assert density == pytest.approx(1.0, abs=0.05)


def test_far_apart_sets_score_zero():
    real, fake = gaussian(500, dim=8), gaussian(500, dim=8, shift=100.0, seed=1)
    assert precision_recall(real, fake) == (0.0, 0.0)
    assert density_coverage(real, fake) == (0.0, 0.0)


def test_a_generator_dropping_one_of_two_modes_is_precise_with_half_recall():
    one, two = gaussian(1000, dim=8), gaussian(1000, dim=8, shift=50.0, seed=1)
    real = torch.cat([one, two])
    assert precision_recall(real, one) == (1.0, 0.5)  # fakes: exactly the first mode's reals
    density, coverage = density_coverage(real, one)
    assert density == pytest.approx(1.0, abs=0.05) and coverage == 0.5
    # Fresh draws of the first mode: k-NN balls miss a few, as the estimator does at k=3.
    precision, recall = precision_recall(real, gaussian(1000, dim=8, seed=2))
    assert precision > 0.85 and 0.85 * 0.5 < recall <= 0.5


# ----------------------------------------------------------------- the evaluation
class Named:
    name, num_features = "inception", 4


def test_names_state_extractor_sample_count_and_split():
    evaluation = FidelityEvaluation(Named(), ["fid", "kid", "is", "pr", "dc"], 10000, split="test")
    assert evaluation.names() == [
        "fid_inception_10k_test",
        "kid_inception_10k_test",
        "is_inception_10k",
        "precision_inception_10k_test",
        "recall_inception_10k_test",
        "density_inception_10k_test",
        "coverage_inception_10k_test",
    ]
    assert FidelityEvaluation(Named(), ["fid"], 2500).primary == "fid_inception_2500_train"


@pytest.mark.parametrize(
    ("metrics", "primary"),
    [
        (["is", "pr", "fid"], "fid_inception_10k_train"),
        (["pr", "kid"], "kid_inception_10k_train"),  # not precision, listed first
        (["pr", "dc"], "coverage_inception_10k_train"),  # not precision, nor density
        (["modes", "is"], "is_inception_10k"),
    ],
)
def test_headline_is_one_that_a_collapsed_generator_cannot_win(metrics, primary):
    assert FidelityEvaluation(Named(), metrics).primary == primary


@pytest.mark.parametrize("metrics", [["pr"], ["modes"], ["pr", "modes"]])
def test_no_headline_without_a_collapse_proof_metric(metrics):
    with pytest.raises(UserError, match="set callbacks.metrics.best_metric to one of"):
        FidelityEvaluation(Named(), metrics).primary  # noqa: B018
    with pytest.raises(ValueError, match="fjd"):
        FidelityEvaluation(Named(), ["fid", "fjd"])


def test_points_instead_of_images_are_a_one_line_error():
    datamodule = GANDataModule(TwoSplits(), batch_size=4, shape=[2])
    with pytest.raises(UserError, match=r"needs image data.*metrics=\[mixture\]"):
        FidelityEvaluation(Named(), ["fid"]).prepare(datamodule)


class TwoSplits:
    """A source with train and test splits of different content, like the vision sets."""

    splits = ("train", "test")

    def __init__(self, split: str = "train") -> None:
        self.split = split

    def load(self, resolution: int | None = None) -> TensorData:
        value = 10 if self.split == "train" else 200
        return TensorData(torch.full((20, 1, 8, 8), value, dtype=torch.uint8))


def test_the_reference_split_is_loaded_from_a_copy_of_the_source_and_resized():
    datamodule = GANDataModule(TwoSplits(), batch_size=4, shape=[1, 4, 4])
    test = reference_data(datamodule, "test")
    assert test.samples.shape == (20, 1, 4, 4) and int(test.samples.max()) == 200
    assert (
        datamodule.source.split == "train"
        and reference_data(datamodule, "train").samples.max() == 10
    )
    digits = GANDataModule(Digits(), batch_size=4, shape=[1, 8, 8])
    with pytest.raises(UserError, match="no 'test' split.*train") as error:
        reference_data(digits, "test")
    assert "\n" not in str(error.value)


class FirstDigits:
    """The first n of scikit-learn's digits, so that the rest can play a perfect generator."""

    def __init__(self, n: int) -> None:
        self.n = n

    def load(self, resolution: int | None = None) -> TensorData:
        digits = Digits().load()
        return TensorData(digits.samples[: self.n], digits.labels[: self.n])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gan_runner_cache")


@pytest.fixture(scope="module")
def digits_scores(cache: Path) -> dict[str, dict[str, float]]:
    """Classifier FID/KID/PR/DC of held-out digits, noise and a collapsed generator."""
    datamodule = GANDataModule(FirstDigits(N_TRAIN), 64, [1, RESOLUTION, RESOLUTION], 10)
    extractor = ClassifierFeatures(cache, steps=300)
    evaluation = FidelityEvaluation(
        extractor, ["fid", "kid", "pr", "modes"], 497, cache_dir=cache, show_progress=False
    )
    evaluation.prepare(datamodule)
    held_out = to_model_range(resize_images(Digits().load().samples[N_TRAIN:], RESOLUTION))
    noise = torch.rand(held_out.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fakes = {"held_out": held_out, "noise": noise, "collapsed": held_out[:1].expand_as(held_out)}
    return {name: evaluation.score(images.split(100)) for name, images in fakes.items()}


def test_held_out_digits_score_far_better_than_noise_or_a_collapsed_generator(digits_scores):
    fid = {name: scores["fid_classifier_497_train"] for name, scores in digits_scores.items()}
    assert fid["held_out"] < 0.05 * min(fid["noise"], fid["collapsed"])
    kid = {name: scores["kid_classifier_497_train"] for name, scores in digits_scores.items()}
    assert kid["held_out"] < 0.05 * min(kid["noise"], kid["collapsed"])
    held_out = digits_scores["held_out"]
    assert held_out["precision_classifier_497_train"] > 0.7  # ~0.8: k=3 balls miss a few
    assert held_out["recall_classifier_497_train"] > 0.7
    assert digits_scores["collapsed"]["recall_classifier_497_train"] < 0.05


def test_the_classifier_counts_modes_a_collapsed_generator_drops(digits_scores):
    held_out, collapsed = digits_scores["held_out"], digits_scores["collapsed"]
    assert held_out["modes_classifier_497"] == 10 and held_out["rkl_classifier_497"] < 0.05
    assert collapsed["modes_classifier_497"] == 1
    assert collapsed["rkl_classifier_497"] == pytest.approx(math.log(10))  # all mass on one


def test_class_modes_closed_form():
    logits = torch.zeros(8, 4)
    logits[torch.arange(8), torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])] = 1.0  # p = (½, ¼, ¼, 0)
    modes, kl = class_modes(logits)
    expected = 0.5 * math.log(0.5 * 4) + 2 * 0.25 * math.log(0.25 * 4)
    assert modes == 3 and kl == pytest.approx(expected)


def compose_with_metrics(make_cfg, *overrides: str):
    # `metrics: []` may not be in train.yaml's defaults yet: then the group is appended.
    try:
        return make_cfg(*overrides)
    except ConfigCompositionException:
        return make_cfg(*(f"+{o}" if o.startswith("metrics=") else o for o in overrides))


def test_an_untrained_generator_scores_far_worse_than_real_digits(make_cfg, cache, monkeypatch):
    cfg = compose_with_metrics(
        make_cfg,
        "data=digits",
        "arch=dcgan",
        f"data.resolution={RESOLUTION}",
        "metrics=[classifier]",
        f"metrics.classifier.cache_dir={cache}",
        "metrics.classifier.extractor.steps=300",
        "metrics.classifier.n_fake=500",
        "metrics.classifier.show_progress=false",
    )
    datamodule, module = build(cfg, "data"), build_module(cfg)
    evaluation = build(cfg.metrics, "classifier")
    values = evaluation.evaluate(module, datamodule, torch.Generator().manual_seed(0))
    assert list(values) and set(values) == set(evaluation.names())
    assert all(math.isfinite(value) for value in values.values())
    real = evaluation.score(real_digits(datamodule, 500, seed=1))
    assert values["fid_classifier_500_train"] > 20 * real["fid_classifier_500_train"]
    assert real["is_classifier_500"] > 5 > values["is_classifier_500"]
    provenance = evaluation.provenance()
    assert provenance["classifier_accuracy"] >= 0.9 and provenance["n_real"] == 1797
    assert "no splits" in provenance["split"] and provenance["torchmetrics"]

    # A second evaluation finds the real statistics (and the classifier) on disk.
    again = build(cfg.metrics, "classifier")
    monkeypatch.setattr(again, "_real_statistics", fail)
    monkeypatch.setattr("gan_runner.metrics.extractors.train_classifier", fail)
    assert again.evaluate(module, datamodule, torch.Generator().manual_seed(0)) == values


def real_digits(datamodule, n: int, seed: int) -> list[torch.Tensor]:
    datamodule.setup()
    pick = torch.randperm(len(datamodule.data), generator=torch.Generator().manual_seed(seed))
    return list(to_model_range(datamodule.data.samples[pick[:n]]).split(100))


def fail(*args, **kwargs):
    raise AssertionError("recomputed instead of read from the cache")
