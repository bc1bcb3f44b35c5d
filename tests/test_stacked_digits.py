"""Stacked digits (Stacked MNIST on the embedded digits) and its mode protocol, on known answers.

The data set stacks three digits, one per channel, labelled by the 1,000-way mode; the metric
names each channel's digit with a classifier of the digits and counts the modes. Sample sets with
known answers: the real data (every mode, near-uniform), one triple (1 mode, KL = ln 1000) and
ten triples (10 modes, KL = ln 100). Training the recipe is marked slow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import call_console
from gan_runner import cli
from gan_runner.bench.stacked import SeedRow, markdown, summarize
from gan_runner.callbacks.metrics import infer_mode
from gan_runner.data.digits import digits_at
from gan_runner.data.module import GANDataModule, to_model_range
from gan_runner.data.stacked_digits import StackedDigits, channel_labels, mode_of
from gan_runner.metrics.extractors import ClassifierFeatures
from gan_runner.metrics.fidelity import class_modes
from gan_runner.metrics.stacked_modes import StackedModes, mode_coverage, ranking_score
from gan_runner.train import assemble, build

RESOLUTION = 8  # the digits' own size: the classifier trains in seconds
QUICK = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger=none"]


@pytest.fixture(scope="module")
def stacked() -> GANDataModule:
    module = GANDataModule(StackedDigits(), 64, [3, RESOLUTION, RESOLUTION], 1000)
    module.setup()
    return module


@pytest.fixture(scope="module")
def protocol(stacked, tmp_path_factory) -> StackedModes:
    """The protocol prepared on the stacked digits (its classifier cached in a temp folder)."""
    cache = tmp_path_factory.mktemp("stacked_cache")
    evaluation = StackedModes(ClassifierFeatures(cache_dir=str(cache)), n_samples=26000)
    evaluation.prepare(stacked)
    return evaluation


# ----------------------------------------------------------------- the data set
def test_samples_are_three_channels_labelled_by_their_mode(stacked) -> None:
    data = stacked.data
    assert data.samples.shape == (60000, 3, RESOLUTION, RESOLUTION)
    assert data.samples.dtype == torch.uint8
    assert int(data.labels.min()) >= 0 and int(data.labels.max()) < 1000
    # Each channel is one of the embedded digits, and its digit is the mode's decimal digit.
    digits = digits_at(RESOLUTION)
    label_of = {}
    for image, label in zip(digits.samples[:, 0], digits.labels):
        label_of.setdefault(image.numpy().tobytes(), set()).add(int(label))
    digits_of_mode = channel_labels(data.labels[:300])
    for sample, expected in zip(data.samples[:300], digits_of_mode):
        for channel in range(3):
            assert int(expected[channel]) in label_of[sample[channel].numpy().tobytes()]


def test_mode_index_is_one_hundred_a_plus_ten_b_plus_c() -> None:
    triples = torch.tensor([[0, 0, 0], [1, 2, 3], [9, 9, 9], [7, 0, 4]])
    assert mode_of(triples).tolist() == [0, 123, 999, 704]
    assert torch.equal(channel_labels(mode_of(triples)), triples)


def test_modes_are_near_uniform_and_the_set_is_fixed_by_its_own_seed(stacked) -> None:
    labels = stacked.data.labels
    counts = torch.bincount(labels, minlength=1000)
    assert int(counts.min()) > 0  # 60 expected per mode
    modes, kl = mode_coverage(labels)
    # A uniform draw of n over K modes has E[KL] ≈ (K − 1) / 2n = 0.008 at n = 60,000.
    assert modes == 1000 and kl < 0.02
    for channel in range(3):
        share = torch.bincount(channel_labels(labels)[:, channel], minlength=10) / len(labels)
        assert torch.allclose(share, torch.full((10,), 0.1), atol=0.01)
    again = StackedDigits(n_samples=500).load(RESOLUTION)
    assert torch.equal(again.samples, stacked.data.samples[:500])  # run seeds do not move it
    assert not torch.equal(StackedDigits(500, seed=1).load(RESOLUTION).labels, again.labels)


def test_the_data_config_composes_to_three_channels_and_a_thousand_classes(make_cfg) -> None:
    cfg = make_cfg("data=stacked_digits", "data.resolution=8", "data.source.n_samples=640")
    assert list(cfg.data.shape) == [3, 8, 8] and cfg.data.num_classes == 1000
    module = build(cfg, "data")
    module.setup()
    assert module.data.samples.shape == (640, 3, 8, 8)


# ----------------------------------------------------------------- the protocol
def test_kl_is_class_modes_kl_on_the_same_histogram() -> None:
    modes = torch.tensor([3, 3, 3, 7, 7, 999])
    logits = torch.nn.functional.one_hot(modes, 1000).float()
    assert mode_coverage(modes) == pytest.approx(class_modes(logits))


def test_real_stacked_digits_cover_every_mode_evenly(protocol, stacked) -> None:
    real = protocol.provenance()
    assert real["real_modes"] >= 990 and real["real_kl_modes"] < 0.04
    assert real["classifier_accuracy"] > 0.95 and real["real_n"] == 26000
    # The classify path itself, on real images: the modes it names are the labels.
    images = to_model_range(stacked.data.samples[:2000])
    right = (protocol.classify(images) == stacked.data.labels[:2000]).float().mean()
    assert right > 0.9


class TableGenerator(nn.Module):
    """A 'generator' that draws from a fixed table of images: z is the row to draw."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.table[z]


def table_module(table: torch.Tensor) -> SimpleNamespace:
    """What the protocol reads of a GANModule: rows drawn in turn, so each row equally often."""

    def draw_latent(module, n, generator):
        return torch.arange(n) % len(table), None

    return SimpleNamespace(
        sampling_generator=TableGenerator(table),
        game=SimpleNamespace(draw_latent=draw_latent),
        device=torch.device("cpu"),
    )


def triples(stacked, modes: list[int]) -> torch.Tensor:
    """One real stacked image of each requested mode, in [-1, 1]."""
    rows = [int(torch.nonzero(stacked.data.labels == m)[0]) for m in modes]
    return to_model_range(stacked.data.samples[rows])


@pytest.mark.parametrize("chosen", [[421], [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]])
def test_a_collapsed_generator_covers_its_modes_at_the_closed_form_kl(
    protocol, stacked, chosen
) -> None:
    module = table_module(triples(stacked, chosen))
    values = protocol.evaluate(module, stacked, torch.Generator().manual_seed(0))
    modes, kl, score = (values[name] for name in protocol.names())
    # n/k samples on each of k modes: KL(p ‖ uniform over 1,000) = ln(1000 / k).
    assert modes == len(chosen)
    assert kl == pytest.approx(math.log(1000 / len(chosen)), abs=1e-9)
    assert score == pytest.approx(ranking_score(len(chosen), kl))


def test_names_carry_the_count_and_the_score_ranks_modes_first() -> None:
    evaluation = StackedModes(ClassifierFeatures(), n_samples=26000)
    assert evaluation.names() == [
        "modes_stacked_26k",
        "kl_modes_stacked_26k",
        "score_stacked_26k",
    ]
    assert evaluation.primary == "score_stacked_26k"
    assert [infer_mode(name) for name in evaluation.names()] == ["max", "min", "max"]
    assert ranking_score(1000, 0.5) > ranking_score(999, 0.0)  # more modes always win
    assert ranking_score(1000, 0.02) > ranking_score(1000, 0.05)  # then the lower KL
    assert ranking_score(1, math.log(1000)) == pytest.approx(1.0)


# ----------------------------------------------------------------- refusals
def one_line(monkeypatch, capsys, tmp_path, *args: str) -> str:
    monkeypatch.chdir(tmp_path)
    code, out, err = call_console(
        cli.run, "gan-run", monkeypatch, capsys, *QUICK, "train.g_steps=1", *args
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err + out, (code, out, err)
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["arch.generator.data_shape=[1,16,16]"],
            "arch.generator.data_shape=[1, 16, 16] gives the generator 1 image channel(s), but "
            "data=stacked_digits has 3",
        ),
        (["arch.discriminator.data_shape=[1,16,16]"], "drop arch.discriminator.data_shape"),
        (["data.channels=1"], "does not match data.channels=1"),
    ],
)
def test_a_one_channel_architecture_is_refused_in_one_line(
    monkeypatch, capsys, tmp_path, args, expected
) -> None:
    line = one_line(monkeypatch, capsys, tmp_path, "experiment=stacked_digits", *args)
    assert expected in line, line


def test_the_protocol_on_other_data_is_refused_in_one_line(monkeypatch, capsys, tmp_path) -> None:
    line = one_line(
        monkeypatch,
        capsys,
        tmp_path,
        "data=digits",
        "arch=dcgan",
        "data.resolution=8",
        "metrics=[stacked_modes]",
    )
    assert "metrics=[stacked_modes] counts the 1,000 modes" in line
    assert "data.source is Digits (data.shape [1, 8, 8])" in line
    assert "use data=stacked_digits" in line


# ----------------------------------------------------------------- the bench's report
def test_bench_summary_and_table_put_the_seeds_beside_pacgan() -> None:
    rows = [
        SeedRow(0, 1000, 0.03, 8.0, 7.5, 9000, 1.0),
        SeedRow(1, 998, 0.06, 9.5, 8.0, 9000, 2.0),
    ]
    summary = summarize(rows)
    assert summary["min_modes"] == 998 and summary["max_kl_modes"] == 0.06
    assert summary["modes"]["mean"] == 999 and not summary["passed"]
    machine = {"platform": "x", "cpu_count": 2, "torch": "t", "torch_threads": 2}
    report = {
        "rows": [row.__dict__ for row in rows],
        "summary": summary,
        "overrides": [],
        "jobs": 2,
        "threads_per_seed": 1,
        "n_samples": 26000,
        "real_data": {
            "real_n": 26000,
            "real_modes": 1000,
            "real_kl_modes": 0.02,
            "classifier_accuracy": 0.99,
            "resolution": 16,
        },
        "machine_start": {**machine, "load_average_1m": 0.5},
        "machine_end": {**machine, "load_average_1m": 1.5},
    }
    table = markdown(report)
    assert "| stacked digits, seed 1 | 1 | 9000 | 998 | 0.060 | 9.5 | 8.0 |" in table
    assert "PacDCGAN2 on Stacked MNIST (Lin et al. 2018, Table 2) | 10 | – | 1000 | 0.06" in table
    assert "missed all_1000_modes_every_seed, kl_at_most_0.05_every_seed" in table


# ----------------------------------------------------------------- training (slow)
@pytest.mark.slow
def test_training_the_recipe_covers_more_modes_than_the_untrained_generator(
    make_cfg, monkeypatch, capsys, tmp_path
) -> None:
    cfg = make_cfg(
        "experiment=stacked_digits",
        "data.resolution=8",
        "train.g_steps=600",
        "callbacks.metrics.every=0",
        "callbacks.samples=null",
        "metrics.stacked_modes.n_samples=5000",
    )
    run = assemble(cfg)
    evaluation = build(cfg.metrics, "stacked_modes")
    before = evaluation.evaluate(run.module, run.datamodule, torch.Generator().manual_seed(0))
    from gan_runner.train import train

    after = train(cfg)
    modes, kl = "modes_stacked_5k", "kl_modes_stacked_5k"
    assert after[f"val/{modes}"] > before[modes] + 100, (before, after)
    assert after[f"val/{kl}"] < before[kl]
    # gan-eval scores the checkpoint with the run's own protocol and judge.
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    code, out, err = call_console(
        cli.evaluate, "gan-eval", monkeypatch, capsys, f"ckpt={ckpt}", "n_samples=1000"
    )
    assert code == 0 and "Traceback" not in err, err
    report = json.loads((ckpt.parent.parent / "eval" / "last-stacked_1k-ema.json").read_text())
    assert set(report["metrics"]) == {
        "modes_stacked_1k",
        "kl_modes_stacked_1k",
        "score_stacked_1k",
    }
    assert report["provenance"]["classifier_accuracy"] > 0.95
