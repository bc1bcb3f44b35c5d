"""Class-conditional GANs: labelled 2D mixtures, cGAN's concat critic, the projection critic and
AC-GAN's auxiliary classifier, their recipes, refusals, and the class accuracy of their samples.

The mechanisms are held to zoo-games.md §2.4's measurement: on ring8 with one class per mode, a
conditional generator puts the samples asked of class k on mode k (class→mode accuracy ~1),
where an unconditional one scores chance (1/8). The recipes train on digits, judged by the data
set's own classifier.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import open_dict
from torch import Tensor, nn

from conftest import QUICK, compose_config
from gan_runner.callbacks.metrics import EvaluateMetrics
from gan_runner.data.module import to_model_range
from gan_runner.data.toy import GaussianGrid, GaussianRing
from gan_runner.errors import UserError
from gan_runner.games.base import Game
from gan_runner.latent import Normal
from gan_runner.losses.auxiliary_classifier import AuxiliaryClassifier
from gan_runner.losses.base import Play
from gan_runner.metrics.class_accuracy import (
    ClassAccuracy,
    conditional_fakes,
    nearest_mode,
    requested_labels,
)
from gan_runner.metrics.extractors import ClassifierFeatures
from gan_runner.nets.layers import CriticOutput
from gan_runner.nets.mlp import MLPDiscriminator
from gan_runner.train import assemble, build, build_module, train
from helpers_quality import prepare

RING8_LABELLED = ["data=ring8", "data.num_classes=8"]
# Cheap classifier settings for 8x8 digits (test accuracy 0.989, ~5 s to train once).
CLASSIFIER = [
    "metrics.class_accuracy.extractor.steps=300",
    "metrics.class_accuracy.n_samples=1000",
]


def only_ema_and_metrics(cfg) -> None:
    with open_dict(cfg):
        for name in cfg.callbacks:
            if name not in ("ema", "metrics"):
                cfg.callbacks[name] = None


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- labelled mixtures
@pytest.mark.parametrize(
    ("source", "modes"), [(GaussianRing, 8), (GaussianGrid, 25)], ids=["ring8", "grid25"]
)
def test_a_mixture_labels_each_point_by_the_mode_that_drew_it(source, modes) -> None:
    unlabelled = source(n_samples=4096).load()
    labelled = source(n_samples=4096, num_classes=modes).load()
    assert unlabelled.labels is None
    # The same points either way: labelling never moves an unconditional run.
    assert torch.equal(labelled.samples, unlabelled.samples)
    means = source().means
    assert torch.equal(labelled.labels, nearest_mode(labelled.samples, means))  # std << gaps
    assert torch.bincount(labelled.labels, minlength=modes).min() > 4096 / modes / 2


def test_a_label_count_other_than_the_modes_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match=r"set data.num_classes=8 \(one class per mode\)") as err:
        GaussianRing(num_classes=5)
    one_line(err)


def test_ring8_serves_mode_labels_when_asked(tmp_path) -> None:
    cfg = compose_config([*QUICK, *RING8_LABELLED, "data.batch_size=64"], tmp_path)
    datamodule = build(cfg, "data")
    batch = next(iter(datamodule.train_dataloader()))
    labels = nearest_mode(batch["samples"], datamodule.source.means)
    assert torch.equal(batch["labels"], labels)
    plain = build(compose_config([*QUICK, "data=ring8"], tmp_path), "data")
    assert "labels" not in next(iter(plain.train_dataloader()))


# ----------------------------------------------------------------------------- ring8: mechanisms
# Measured (seeds 0 and 1, 100 G steps at batch 256, the 2D recipe's players, 4-6 s each):
# concat 1.000/1.000, projection 0.9995/0.9925, AC-GAN 1.000/1.000; at 50 steps projection
# fell to 0.975. An unconditional generator asked for balanced labels scores 1/8 by design.
RING8_RUN = ["train.g_steps=100", "data.batch_size=256", "metrics=[class_accuracy]"]
MECHANISMS = {
    "concat": ["++arch.discriminator.conditioning=concat"],
    "projection": ["++arch.discriminator.conditioning=projection"],
    "auxiliary_classifier": [
        "terms=[auxiliary_classifier]",
        "arch.discriminator.num_classes=0",
        "++arch.discriminator.heads={class_logits:8}",
    ],
}


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_a_conditional_generator_puts_each_class_on_its_mode(tmp_path, mechanism) -> None:
    overrides = [*QUICK, *RING8_LABELLED, "num_classes=8", *RING8_RUN, *MECHANISMS[mechanism]]
    cfg = compose_config([*overrides, "callbacks.metrics.every=0"], tmp_path / "run")
    only_ema_and_metrics(cfg)
    accuracy = train(cfg)["val/class_accuracy_2k"]
    print(f"ring8, {mechanism}, 100 G steps: class→mode accuracy {accuracy:.4f}")
    assert accuracy >= 0.95, accuracy


def test_an_unconditional_generator_makes_the_asked_mode_by_chance(tmp_path) -> None:
    cfg = compose_config([*QUICK, "data=ring8", *RING8_RUN[:2], "metrics=[]"], tmp_path / "run")
    only_ema_and_metrics(cfg)
    run = prepare(cfg)
    run.fit()
    labels = requested_labels(2000, 8)
    fakes = conditional_fakes(run.module, labels, 500, torch.Generator().manual_seed(0))
    accuracy = float((nearest_mode(fakes, run.datamodule.source.means) == labels).float().mean())
    print(f"ring8, unconditional, 100 G steps: class→mode accuracy {accuracy:.4f}")
    assert 0.08 <= accuracy <= 0.17, accuracy


# ----------------------------------------------------------------------------- AC-GAN's term
def lse(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


def play_of(real_logits: Tensor, real_labels, fake_logits: Tensor, fake_labels) -> Play:
    def out(logits: Tensor) -> CriticOutput:
        return CriticOutput(logits.new_zeros(len(logits)), logits, {"class_logits": logits})

    real_labels, fake_labels = torch.tensor(real_labels), torch.tensor(fake_labels)
    x = torch.zeros(len(real_logits), 2)
    return Play(None, x, real_labels, x, fake_labels, x, out(fake_logits), out(real_logits))


def test_auxiliary_classifier_is_the_hand_computed_cross_entropy() -> None:
    play = play_of(
        torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]]),
        [0, 2],
        torch.tensor([[0.0, 1.0, 0.0]]),
        [1],
    )
    real = ((lse(2.0, 0.0, -1.0) - 2.0) + math.log(3)) / 2  # mean of -log softmax(a)_y
    fake = lse(0.0, 1.0, 0.0) - 1.0
    term = AuxiliaryClassifier(weight=0.5)
    assert float(term.discriminator_term(play)) == pytest.approx(0.5 * (real + fake), rel=1e-6)
    assert float(term.generator_term(play)) == pytest.approx(0.5 * fake, rel=1e-6)
    reals_only = AuxiliaryClassifier(fake_in_discriminator=False)
    assert float(reals_only.discriminator_term(play)) == pytest.approx(real, rel=1e-6)


def test_the_class_head_returns_logits_read_by_one_cross_entropy() -> None:
    torch.manual_seed(0)
    critic = MLPDiscriminator([2], hidden=[16], heads={"class_logits": 8})
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in critic.modules())
    real, fake = torch.randn(32, 2), torch.randn(32, 2)
    y, c = torch.randint(8, (32,)), torch.randint(8, (32,))
    real_out, fake_out = critic.outputs(real), critic.outputs(fake)
    logits = real_out.heads["class_logits"]
    logits.retain_grad()
    play = Play(None, real, y, fake, c, fake, fake_out, real_out)
    AuxiliaryClassifier().discriminator_term(play).backward()
    # d CE / d logits = (softmax(a) - onehot(y)) / N: what F.cross_entropy on logits gives.
    expected = (logits.softmax(1) - F.one_hot(y, 8)) / 32
    assert torch.allclose(logits.grad, expected.detach(), atol=1e-7)
    # And every critic weight gets exactly F.cross_entropy's gradient on the head's outputs.
    ours = [p.grad for p in critic.parameters()]
    assert critic.score.weight.grad is None  # the class term never reaches the score layer
    critic.zero_grad(set_to_none=True)
    head = critic.heads["class_logits"]
    reference = F.cross_entropy(head(critic.features(real)), y)
    (reference + F.cross_entropy(head(critic.features(fake)), c)).backward()
    for mine, parameter in zip(ours, critic.parameters()):
        assert (mine is None) == (parameter.grad is None)
        assert mine is None or torch.allclose(mine, parameter.grad)
    assert (logits < 0).any() and not torch.allclose(logits.exp().sum(1), torch.ones(32))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["num_classes=10"], r"class_logits head.*add arch.discriminator.heads.class_logits"),
        (["++arch.discriminator.heads={class_logits:10}"], r"unconditional \(num_classes=0\)"),
        (
            ["num_classes=10", "++arch.discriminator.heads={class_logits:5}"],
            r"heads.class_logits=5, but num_classes=10; set arch.discriminator.heads",
        ),
    ],
    ids=["no_head", "no_labels", "head_size"],
)
def test_auxiliary_classifier_refuses_what_it_cannot_train(tmp_path, overrides, message) -> None:
    base = [*QUICK, "data=digits", "data.resolution=8", "terms=[auxiliary_classifier]"]
    cfg = compose_config([*base, *overrides], tmp_path)
    with pytest.raises(UserError, match=message) as err:
        build_module(cfg)
    assert one_line(err).startswith("game: ")


# ----------------------------------------------------------------------------- recipes
CONDITIONAL_RECIPES = ("cgan", "acgan", "sngan_projection")


@pytest.mark.parametrize("recipe", CONDITIONAL_RECIPES)
def test_a_conditional_recipe_takes_the_data_sets_classes(tmp_path, recipe) -> None:
    cfg = compose_config([*QUICK, f"model={recipe}", "data=digits"], tmp_path)
    assert cfg.num_classes == cfg.data.num_classes == 10
    assert cfg.arch.generator.num_classes == 10
    critic = cfg.arch.discriminator
    if recipe == "acgan":  # D's score is unconditional; its class head has K logits
        assert critic.num_classes == 0 and critic.heads.class_logits == 10
        assert list(cfg.terms) == ["auxiliary_classifier"]
    else:
        assert critic.num_classes == 10 and list(cfg.terms) == []
        assert critic.conditioning == {"cgan": "concat", "sngan_projection": "projection"}[recipe]


@pytest.mark.parametrize("recipe", CONDITIONAL_RECIPES)
@pytest.mark.parametrize("data", ["ring8", "grid25"])
def test_a_conditional_recipe_on_unlabelled_data_is_refused_in_one_line(tmp_path, recipe, data):
    cfg = compose_config([*QUICK, f"model={recipe}", f"data={data}"], tmp_path)
    with pytest.raises(UserError, match=rf"model={recipe} is class-conditional") as err:
        assemble(cfg)
    line = one_line(err)
    assert f"data={data} has no labels" in line and "set data.num_classes" in line, line


def test_a_conditional_recipe_on_1d_data_is_told_1d_data_has_no_classes(tmp_path) -> None:
    cfg = compose_config([*QUICK, "model=cgan", "data=gauss1d"], tmp_path)
    with pytest.raises(UserError, match=r"model=cgan is class-conditional") as err:
        assemble(cfg)
    line = one_line(err)
    assert "1D data sets have no classes" in line and "ring8" not in line, line


def test_class_accuracy_on_an_unconditional_run_is_refused_in_one_line(tmp_path) -> None:
    cfg = compose_config([*QUICK, "data=ring8", "metrics=[class_accuracy]"], tmp_path)
    with pytest.raises(UserError, match=r"unconditional \(num_classes=0\)") as err:
        assemble(cfg)
    assert "drop class_accuracy" in one_line(err)


# ----------------------------------------------------------------------------- the metric
class LookupGenerator(nn.Module):
    """A stand-in generator: the sample for label y is table[(y + shift) % K] (plus z's noise)."""

    def __init__(self, table: Tensor, shift: int = 0, noise: float = 0.0) -> None:
        super().__init__()
        self.table, self.shift, self.noise = table, shift, noise

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        picked = self.table[(labels + self.shift) % len(self.table)]
        return picked + self.noise * z[:, :2] if self.noise else picked


class Stub:
    """What an evaluation reads of a GANModule."""

    def __init__(self, generator: nn.Module, z_dim: int, num_classes: int) -> None:
        self.sampling_generator, self.latent, self.z_dim = generator, Normal(), z_dim
        self.num_classes, self.device = num_classes, torch.device("cpu")
        self.game = Game.__new__(Game)  # the base game's draw: p(z) and uniform labels


def test_class_accuracy_on_ring8_is_one_when_asked_modes_are_drawn_and_zero_when_shifted(
    tmp_path,
) -> None:
    datamodule = build(compose_config([*QUICK, *RING8_LABELLED], tmp_path), "data")
    means = datamodule.source.means
    evaluation = ClassAccuracy(ClassifierFeatures(), num_classes=8)
    evaluation.prepare(datamodule)
    noise = torch.Generator().manual_seed(0)
    for shift, expected in ((0, 1.0), (1, 0.0)):
        stub = Stub(LookupGenerator(means, shift, noise=0.01), z_dim=2, num_classes=8)
        assert evaluation.evaluate(stub, datamodule, noise) == {"class_accuracy_2k": expected}
    assert "nearest mode of GaussianRing (8 modes)" in evaluation.provenance()["judge"]


def test_class_accuracy_on_digits_uses_the_classifier_of_metrics_classifier(tmp_path) -> None:
    cfg = compose_config(
        [*QUICK, "data=digits", "data.resolution=8", "metrics=[classifier,class_accuracy]"],
        tmp_path,
    )
    ours, theirs = (
        instantiate(cfg.metrics[m].extractor) for m in ("class_accuracy", "classifier")
    )
    # One classifier for both: same settings and cache folder, so the same cached file.
    assert asdict(ours.settings) == asdict(theirs.settings) and ours.cache_dir == theirs.cache_dir
    datamodule = build(cfg, "data")
    datamodule.setup()
    data = datamodule.data
    # Real digits as the "generator": the first image of each class, asked as itself or not.
    table = to_model_range(torch.stack([data.samples[data.labels == k][0] for k in range(10)]))
    extractor = ClassifierFeatures(steps=300)  # the digits runs below load it from the cache
    evaluation = ClassAccuracy(extractor, num_classes=10, n_samples=2000)
    evaluation.prepare(datamodule)
    noise = torch.Generator().manual_seed(0)
    right = evaluation.evaluate(Stub(LookupGenerator(table), 64, 10), datamodule, noise)
    wrong = evaluation.evaluate(Stub(LookupGenerator(table, 1), 64, 10), datamodule, noise)
    seen = extractor.predict(table) == torch.arange(10)  # the classifier's verdict on the table
    assert right["class_accuracy_2k"] == pytest.approx(float(seen.float().mean()))
    assert right["class_accuracy_2k"] >= 0.9 and wrong["class_accuracy_2k"] <= 0.1
    # Per-class FID (~180 digits and 200 samples a class, over 2x the 64 features): a class's own
    # digit is far nearer its class than the next class's digit is.
    per_class = [f"fid_class{c}_classifier_2k" for c in range(10)]
    assert evaluation.names() == ["class_accuracy_2k", *per_class, "fid_classmean_classifier_2k"]
    assert all(right[name] < wrong[name] for name in per_class), (right, wrong)
    mean = sum(right[name] for name in per_class) / 10
    assert right["fid_classmean_classifier_2k"] == pytest.approx(mean)
    provenance = evaluation.provenance()
    assert provenance["classifier_accuracy"] > 0.9 and len(provenance["weights_sha256"]) == 16
    assert "skipped (under 128 samples): none" in provenance["class_fid"]


# ----------------------------------------------------------------------------- digits
# Measured at 8x8, live generator (the EMA lags in runs this short), seeds 0/1, from exactly 0.10
# untrained (the classifier puts every untrained sample in one class; each class is asked n/10
# times): cgan 0.54/0.67 and acgan 0.40/0.40 at 600 G steps (10-13 s, TINY_DIGITS widths).
# sngan_projection conditions G through BatchNorm scales that start as the identity, which Adam
# at the paper's lr 2e-4 moves ~2e-4 a step: at width 16 it stayed at chance (0.09-0.10) for
# 1,000 G steps (5,000 D steps, 4-5 min). At lr 2e-3 (constant) it reached 0.74/0.74 at 400
# G steps (~45 s of CPU), so that is the slow test; it checks the wiring, not the paper's pace.
DIGITS = {
    "cgan": (
        ["arch=dcgan", "arch.generator.base_width=8", "arch.discriminator.base_width=8"],
        600,
    ),
    "acgan": (["arch.generator.base_width=8", "arch.discriminator.base_width=8"], 600),
    "sngan_projection": (
        [
            "arch.generator.width=16",
            "arch.discriminator.width=16",
            "optimizer.generator.lr=2e-3",
            "optimizer.discriminator.lr=2e-3",
            "schedule=constant",
        ],
        400,
    ),
}


@pytest.mark.parametrize(
    "recipe",
    [pytest.param(r, marks=[pytest.mark.slow] if r == "sngan_projection" else []) for r in DIGITS],
)
def test_a_recipe_learns_to_draw_the_digit_asked_for(tmp_path, recipe) -> None:
    players, g_steps = DIGITS[recipe]
    overrides = [
        *QUICK,
        f"model={recipe}",
        "data=digits",
        "data.resolution=8",
        *players,
        f"train.g_steps={g_steps}",
        "callbacks.ema=null",
        "metrics=[class_accuracy]",
        "callbacks.metrics.every=0",
        *CLASSIFIER,
    ]
    built = assemble(compose_config(overrides, tmp_path / "untrained"))  # as train() builds it
    metrics = next(c for c in built.callbacks if isinstance(c, EvaluateMetrics))
    judge = metrics.evaluations["class_accuracy"]
    noise = torch.Generator().manual_seed(0)
    before = judge.evaluate(built.module, built.datamodule, noise)["class_accuracy_1k"]
    cfg = compose_config(overrides, tmp_path / "run")
    only_ema_and_metrics(cfg)
    after = train(cfg)["val/class_accuracy_1k"]
    print(f"{recipe} on digits, {g_steps} G steps: class accuracy {before:.3f} -> {after:.3f}")
    assert before <= 0.15 and after >= 0.3, (before, after)
    provenance = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "classifier of the data set" in provenance and "Odena et al. 2017" in provenance
