"""Two-domain data for translation: the embedded digit pairs, CycleGAN's and pix2pix's folder
layouts, batches that resume at the exact batch, and the one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import QUICK, compose_config
from gan_runner.data import GANDataModule
from gan_runner.data.digits import DigitsPaired, DigitsUnpaired, digits_at, edge_map
from gan_runner.data.module import held_out_indices
from gan_runner.data.translation_sets import PairedFolder, UnpairedFolders
from gan_runner.errors import UserError
from gan_runner.train import build_module


def test_unpaired_digits_leak_no_pair_and_pair_the_test_split() -> None:
    source = DigitsUnpaired()
    train, test = source.load(8), source.load(8, "test")
    assert not train.paired and test.paired
    # No B image is the restyling of an A image: the halves are disjoint digits.
    restyled_a = source.restyle(train.a).flatten(1)
    b = train.b.flatten(1)
    matches = (b[:, None, :] == restyled_a[None, :, :]).all(-1).any(1).float().mean()
    assert matches < 0.01
    assert torch.equal(test.b, source.restyle(test.a))
    assert torch.equal(test.a_labels, test.b_labels)
    assert len(test) == len(held_out_indices(1797))
    assert len(train.a) + len(train.b) + len(test) == 1797


def test_sqrt_restyling_is_near_identity_and_invert_is_not() -> None:
    a = DigitsUnpaired().load(8, "test").a.float() / 255
    sqrt = DigitsUnpaired("sqrt").restyle((a * 255).to(torch.uint8)).float() / 255
    inverted = DigitsUnpaired("invert").restyle((a * 255).to(torch.uint8)).float() / 255
    assert (sqrt - a).abs().mean() < 0.1 < (inverted - a).abs().mean()
    assert (sqrt >= a - 1 / 255).all()  # √x ≥ x on [0, 1]
    with pytest.raises(ValueError, match="transform='blur' is not one of"):
        DigitsUnpaired("blur")


def test_paired_digits_map_edges_to_the_digit() -> None:
    data = DigitsPaired().load(16, "test")
    assert data.paired and torch.equal(data.b, digits_at(16).samples[held_out_indices(1797)])
    assert torch.equal(data.a, edge_map(data.b))
    blank = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    assert edge_map(blank).max() == 0
    step = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    step[..., 4:] = 255  # a vertical edge: the outline lies on the step, not in flat regions
    edges = edge_map(step)[0, 0]
    assert edges[:, 3:5].min() == 255 and edges[:, 0:2].max() == 0 and edges[:, 6:].max() == 0


@pytest.mark.parametrize("paired", [False, True])
def test_batches_resume_at_the_exact_batch(paired: bool) -> None:
    source = DigitsPaired() if paired else DigitsUnpaired()
    module = GANDataModule(source, batch_size=32, shape=[1, 8, 8], domains=2, paired=paired)
    straight = [
        module.on_after_batch_transfer(b, 0) for b, _ in zip(module.train_dataloader(), range(5))
    ]
    assert set(straight[0]) == {"a", "b"}
    assert straight[0]["a"].min() >= -1 and straight[0]["b"].max() <= 1
    resumed = GANDataModule(source, batch_size=32, shape=[1, 8, 8], domains=2, paired=paired)
    loader = resumed.train_dataloader()
    loader.load_state_dict({"batches_served": 3, "batches_per_epoch": len(loader)})
    first = resumed.on_after_batch_transfer(next(iter(loader)), 0)
    assert torch.equal(first["a"], straight[3]["a"]) and torch.equal(first["b"], straight[3]["b"])
    if paired:  # each target is its own input's: edges of the digit it comes with
        digit = ((straight[0]["b"] + 1) * 127.5).round().to(torch.uint8)
        edges = ((straight[0]["a"] + 1) * 127.5).round().to(torch.uint8)
        assert torch.equal(edge_map(digit), edges)


def test_a_source_of_two_domains_needs_data_domains_2() -> None:
    module = GANDataModule(DigitsPaired(), batch_size=8, shape=[1, 8, 8])
    with pytest.raises(UserError, match="sets data.domains=1 but its source gives two image"):
        module.setup()


def _image(path: Path, width: int, height: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    for split in ("trainA", "trainB", "testA", "testB"):
        (tmp_path / "cycle" / split).mkdir(parents=True)
        for i in range(4):
            _image(tmp_path / "cycle" / split / f"{i}.png", 24, 20, hash(split) % 100 + i)
    for split in ("train", "val"):
        (tmp_path / "pairs" / split).mkdir(parents=True)
        for i in range(3):
            _image(tmp_path / "pairs" / split / f"{i}.jpg", 32, 16, i)
    return tmp_path


def test_unpaired_folders_read_both_domains_and_name_a_missing_half(folders: Path) -> None:
    data = UnpairedFolders(str(folders / "cycle"), dataset=None).load(8)
    assert data.a.shape == data.b.shape == (4, 3, 8, 8) and not data.paired
    gray = UnpairedFolders(str(folders / "cycle"), dataset=None, channels=1).load(8, "test")
    assert gray.a.shape == (4, 1, 8, 8)
    for image in (folders / "cycle" / "trainB").iterdir():
        image.unlink()
    (folders / "cycle" / "trainB").rmdir()
    with pytest.raises(UserError, match="has trainA/ but no trainB/") as refused:
        UnpairedFolders(str(folders / "cycle"), dataset=None).load(8)
    assert "\n" not in str(refused.value)


def test_paired_folder_splits_halves_and_refuses_odd_widths(folders: Path) -> None:
    root = folders / "pairs"
    forward = PairedFolder(str(root), dataset=None).load(8, "test")  # no test/: reads val/
    backward = PairedFolder(str(root), dataset=None, direction="BtoA").load(8, "test")
    assert forward.paired and forward.a.shape == (3, 3, 8, 8)
    assert torch.equal(forward.a, backward.b) and torch.equal(forward.b, backward.a)
    assert not torch.equal(forward.a, forward.b)
    _image(root / "train" / "odd.png", 31, 16, 0)
    with pytest.raises(UserError, match=r"odd.png is 31×16; a paired image holds A and B"):
        PairedFolder(str(root), dataset=None).load(8)


def test_a_missing_set_names_the_layout_and_the_fix(tmp_path: Path) -> None:
    source = UnpairedFolders(str(tmp_path / "absent"), dataset="horse2zebra", download=False)
    with pytest.raises(UserError, match="not found and data.source.download=false; put the"):
        source.load(8)
    with pytest.raises(UserError, match="data.source.dataset is null"):
        PairedFolder(str(tmp_path / "absent"), dataset=None).load(8)


def test_a_noise_model_on_two_domain_data_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = compose_config([*QUICK, "model=dcgan", "data=digits_paired"], tmp_path)
    with pytest.raises(UserError, match="holds two image domains .* use model=cyclegan") as no:
        build_module(cfg)
    assert "\n" not in str(no.value)


NARROW_TRANSLATORS = [
    "data.resolution=8",
    "data.batch_size=2",
    "metrics=[]",
    "train.g_steps=2",
    "train.log_every=1",
    "callbacks=none",
]


def test_translators_train_on_folder_sets(folders: Path, tmp_path: Path) -> None:
    """CycleGAN on trainA/trainB folders and pix2pix on A|B images, two steps each."""
    from gan_runner.train import train

    cycle = [
        "model=cyclegan",
        "data=unpaired_folders",
        f"data.source.root={folders / 'cycle'}",
        "data.source.dataset=null",
        *[f"arch.{net}.width=4" for net in ("generator", "generator_ba")],
        *[f"arch.{net}.width=4" for net in ("discriminator", "discriminator_a")],
        "arch.generator.n_blocks=1",
        "arch.generator_ba.n_blocks=1",
    ]
    pairs = [
        "model=pix2pix",
        "data=paired_folder",
        f"data.source.root={folders / 'pairs'}",
        "data.source.dataset=null",
        "arch.generator.base_width=4",
        "arch.discriminator.width=4",
    ]
    for overrides in (cycle, pairs):
        metrics = train(compose_config([*QUICK, *overrides, *NARROW_TRANSLATORS], tmp_path))
        assert metrics["train/g_steps"] == 2
        assert all(np.isfinite(metrics[k]) for k in ("train/d_loss", "train/g_loss"))
