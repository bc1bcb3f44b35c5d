"""The real image sets: tiny files in each set's on-disk format, read back through the sources."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from gan_runner.config import check_targets
from gan_runner.data.module import TensorData
from gan_runner.data.vision import (
    CIFAR10,
    CIFAR100,
    MNIST,
    STL10,
    SVHN,
    CelebA,
    FashionMNIST,
    ImageFolder,
)
from gan_runner.errors import UserError
from gan_runner.train import build, train

DATA_CONF = Path(__file__).resolve().parents[1] / "conf" / "data"
# Every data option whose source lives in gan_runner.data.vision, found by globbing.
VISION = sorted(
    p.stem for p in DATA_CONF.glob("*.yaml") if "gan_runner.data.vision." in p.read_text()
)
# Debian's dataset-fashion-mnist package (or a copy of its files named by FASHION_MNIST_DIR).
DEBIAN_FASHION = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
RNG = np.random.default_rng(0)


def write_idx(path: Path, array: np.ndarray) -> None:
    """LeCun's idx format: 0, 0, type 0x08 (ubyte), ndim, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def write_mnist(folder: Path, n: int = 20, prefix: str = "train", gz: bool = True):
    images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


def write_cifar(root: Path, n_per_batch: int = 4, keys: type = bytes):
    """cifar-10-batches-py as pickled dicts (Python 3 copies have bytes keys, Python 2's str)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = RNG.integers(0, 256, (5 * n_per_batch, 3072), dtype=np.uint8)
    labels = RNG.integers(0, 10, 5 * n_per_batch).tolist()
    key = (lambda k: k.encode()) if keys is bytes else (lambda k: k)
    for i in range(5):
        part = slice(i * n_per_batch, (i + 1) * n_per_batch)
        batch = {key("data"): rows[part], key("labels"): labels[part]}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    return rows, labels


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_mnist_idx_round_trip(tmp_path: Path, layout: str, gz: bool) -> None:
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    images, labels = write_mnist(folder, gz=gz)
    data = MNIST(str(tmp_path), download=False).load()
    assert data.samples.dtype == torch.uint8 and data.samples.shape == (20, 1, 28, 28)
    assert torch.equal(data.samples[:, 0], torch.from_numpy(images))
    assert torch.equal(data.labels, torch.from_numpy(labels).long())


def test_mnist_test_split_reads_t10k(tmp_path: Path) -> None:
    write_mnist(tmp_path, n=5)
    images, _ = write_mnist(tmp_path, n=7, prefix="t10k", gz=False)
    data = MNIST(str(tmp_path), split="test", download=False).load()
    assert torch.equal(data.samples[:, 0], torch.from_numpy(images))


def test_fashion_mnist_falls_back_to_a_folder_of_gz_files(tmp_path: Path) -> None:
    debian_like = tmp_path / "usr-share-datasets-fashion-mnist"
    images, labels = write_mnist(debian_like, gz=True)
    source = FashionMNIST(str(tmp_path / "empty"), download=True, fallback_root=str(debian_like))
    data = source.load()  # found in the fallback: nothing is downloaded
    assert torch.equal(data.samples[:, 0], torch.from_numpy(images))
    assert torch.equal(data.labels, torch.from_numpy(labels).long())


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_package_loads_60000_images() -> None:
    data = FashionMNIST(str(DEBIAN_FASHION), download=False).load()
    assert data.samples.shape == (60000, 1, 28, 28)
    assert sorted(data.labels.unique().tolist()) == list(range(10))


@pytest.mark.parametrize("keys", [bytes, str])
def test_cifar10_pickles_round_trip(tmp_path: Path, keys: type) -> None:
    rows, labels = write_cifar(tmp_path, keys=keys)
    data = CIFAR10(str(tmp_path), download=False).load()
    assert data.samples.shape == (20, 3, 32, 32)
    # A row is the red, green then blue plane, each 32 rows of 32 pixels.
    i, c, h, w = 13, 2, 5, 30
    assert data.samples[i, c, h, w] == rows[i, c * 1024 + h * 32 + w]
    assert torch.equal(data.samples.reshape(20, -1), torch.from_numpy(rows))
    assert data.labels.tolist() == labels and data.labels.dtype == torch.int64


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rows = RNG.integers(0, 256, (6, 3072), dtype=np.uint8)
    entry = {b"data": rows, b"fine_labels": [99, 0, 5, 42, 7, 63], b"coarse_labels": [0] * 6}
    (folder / "test").write_bytes(pickle.dumps(entry))
    data = CIFAR100(str(tmp_path), split="test", download=False).load()
    assert torch.equal(data.samples.reshape(6, -1), torch.from_numpy(rows))
    assert data.labels.tolist() == [99, 0, 5, 42, 7, 63]


def test_svhn_mat_round_trip_maps_10_to_0(tmp_path: Path) -> None:
    from scipy.io import savemat

    x = RNG.integers(0, 256, (32, 32, 3, 12), dtype=np.uint8)
    y = np.array([[10], [1], [2], [3], [4], [5], [6], [7], [8], [9], [10], [1]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    data = SVHN(str(tmp_path), download=False).load()
    assert data.samples.shape == (12, 3, 32, 32)
    for i in (0, 7, 11):
        assert torch.equal(data.samples[i], torch.from_numpy(x[..., i].transpose(2, 0, 1)))
    assert data.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_stl10_binary_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = RNG.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    # Stored column-major: each channel plane is written transposed.
    (folder / "train_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
    (folder / "train_y.bin").write_bytes(bytes([1, 10, 4]))
    (folder / "unlabeled_X.bin").write_bytes(images[:2].transpose(0, 1, 3, 2).tobytes())
    data = STL10(str(tmp_path), download=False).load()
    assert torch.equal(data.samples, torch.from_numpy(images))
    assert data.labels.tolist() == [0, 9, 3]
    both = STL10(str(tmp_path), split="train+unlabeled", download=False).load()
    assert both.samples.shape == (5, 3, 96, 96) and both.labels is None


def test_imagefolder_class_subfolders_become_labels(tmp_path: Path) -> None:
    pictures = RNG.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    for i, cls in enumerate(["cat", "cat", "dog", "zebra", "dog"]):
        write_png(tmp_path / cls / f"{i}.png", pictures[i])
    dataset = ImageFolder(str(tmp_path), num_classes=3).load(resolution=8)
    items = [dataset[i] for i in range(len(dataset))]  # sorted: cat/0, cat/1, dog/2, dog/4, zebra
    assert [item["labels"] for item in items] == [0, 0, 1, 1, 2]
    for item, i in zip(items, [0, 1, 2, 4, 3]):
        assert torch.equal(item["samples"], torch.from_numpy(pictures[i].transpose(2, 0, 1)))
    with pytest.raises(UserError, match="has 3 class subfolders; set data.num_classes=3"):
        ImageFolder(str(tmp_path), num_classes=10).load(resolution=8)


def test_imagefolder_flat_gray_centre_crop(tmp_path: Path) -> None:
    wide = np.arange(32, dtype=np.uint8).reshape(4, 8) * 7  # 8 wide, 4 tall
    write_png(tmp_path / "a.png", wide)
    write_png(tmp_path / "b.png", wide[::-1])
    dataset = ImageFolder(str(tmp_path), channels=1).load(resolution=4)
    item = dataset[0]
    assert "labels" not in item and item["samples"].shape == (1, 4, 4)
    assert torch.equal(item["samples"][0], torch.from_numpy(wide[:, 2:6]))


def write_celeba(folder: Path, n: int = 6) -> None:
    """Aligned 178×218 JPEGs: 20 red rows above and below a blue 178×178 centre."""
    face = np.zeros((218, 178, 3), dtype=np.uint8)
    face[:20, :, 0] = face[-20:, :, 0] = 255
    face[20:-20, :, 2] = 255
    (folder / "img_align_celeba").mkdir(parents=True)
    for i in range(1, n + 1):
        Image.fromarray(face).save(folder / "img_align_celeba" / f"{i:06d}.jpg", quality=95)
    lines = [f"{i:06d}.jpg {0 if i <= 4 else 1 + i % 2}" for i in range(1, n + 1)]
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("crop", [178, 140])
def test_celeba_split_and_centre_crop(tmp_path: Path, crop: int) -> None:
    write_celeba(tmp_path / "celeba")  # torchvision's layout: root/celeba/
    dataset = CelebA(str(tmp_path), crop=crop, download=False).load(resolution=16)
    assert len(dataset) == 4  # partition 0 only
    image = dataset[0]["samples"].int()
    assert image.shape == (3, 16, 16) and dataset[0].keys() == {"samples"}
    # The crop holds none of the red border: blue everywhere (JPEG leaves a little noise).
    assert image[0].max() < 40 and image[2].min() > 215
    assert len(CelebA(str(tmp_path), split="all", download=False).load(resolution=16)) == 6


def test_celeba_reads_kaggles_csv_partition(tmp_path: Path) -> None:
    write_celeba(tmp_path)  # images directly under root, as Kaggle's copy unpacks
    txt = tmp_path / "list_eval_partition.txt"
    rows = [line.replace(" ", ",") for line in txt.read_text().splitlines()]
    (tmp_path / "list_eval_partition.csv").write_text("image_id,partition\n" + "\n".join(rows))
    txt.unlink()
    assert len(CelebA(str(tmp_path), split="valid", download=False).load(resolution=8)) == 1


def test_unreadable_image_names_its_path(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    dataset = ImageFolder(str(tmp_path)).load(resolution=8)
    with pytest.raises(UserError, match="cannot read image .*broken.png"):
        dataset[0]


MISSING = [
    (MNIST, "train-images-idx3-ubyte[.gz]"),
    (FashionMNIST, "train-images-idx3-ubyte[.gz]"),
    (CIFAR10, "cifar-10-batches-py/{data_batch_1, data_batch_2, data_batch_3, data_batch_4, "),
    (CIFAR100, "cifar-100-python/train"),
    (SVHN, "train_32x32.mat"),
    (STL10, "stl10_binary/{train_X.bin, train_y.bin}"),
    (CelebA, "img_align_celeba/ and list_eval_partition.txt"),
]


@pytest.mark.parametrize(("source", "files"), MISSING)
def test_missing_files_without_download_is_one_line(tmp_path: Path, source, files) -> None:
    with pytest.raises(UserError) as error:
        source(str(tmp_path / "nowhere"), download=False).load(resolution=32)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"data={source.name}: ")
    assert files in message and str(tmp_path / "nowhere") in message
    assert "download=false" in message and "data.source.root" in message


@pytest.mark.parametrize(
    ("source", "helper"),
    [
        (MNIST, "download_url"),
        (CIFAR10, "download_and_extract_archive"),
        (SVHN, "download_url"),
        (STL10, "download_and_extract_archive"),
        (CelebA, "download_file_from_google_drive"),
    ],
)
def test_failed_download_is_one_line(tmp_path: Path, monkeypatch, source, helper) -> None:
    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known\nsecond line")

    monkeypatch.setattr(f"torchvision.datasets.utils.{helper}", offline)
    with pytest.raises(UserError) as error:
        source(str(tmp_path), download=True).load(resolution=32)
    message = str(error.value)
    assert "\n" not in message and "download failed (URLError" in message
    assert str(tmp_path) in message


def test_download_then_read(tmp_path: Path, monkeypatch) -> None:
    def fake_archive(url, download_root, filename=None, md5=None):
        assert url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
        write_cifar(Path(download_root), n_per_batch=2)

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", fake_archive)
    assert len(CIFAR10(str(tmp_path), download=True).load()) == 10


def test_bad_split_names_the_key(make_cfg) -> None:
    cfg = make_cfg("data=cifar10", "data.source.split=validation")
    with pytest.raises(UserError, match=r"source.split='validation' is not one of: train, test"):
        build(cfg, "data")


def test_every_vision_set_has_a_config() -> None:
    names = ["celeba", "cifar10", "cifar100", "fashion_mnist", "imagefolder", "mnist", "stl10"]
    assert set(VISION) >= {*names, "svhn"}


@pytest.mark.parametrize("name", VISION)
def test_vision_configs_compose(make_cfg, tmp_path: Path, name: str) -> None:
    text = (DATA_CONF / f"{name}.yaml").read_text()
    first = text.splitlines()[0]
    assert first.startswith("# ") and (
        name == "imagefolder" or re.search(r"\b(19|20)\d\d\b", first)
    )
    cfg = make_cfg(f"data={name}")
    check_targets(cfg)
    assert cfg.data.source.root.startswith(cfg.paths.data_dir) and cfg.data.batch_size >= 1
    datamodule = instantiate(cfg.data)
    assert datamodule.shape == [cfg.data.channels, cfg.data.resolution, cfg.data.resolution]


def quick_run(make_cfg, *overrides: str) -> dict[str, float]:
    common = ["data.batch_size=4", "train.g_steps=2", "train.log_every=1", "callbacks=none"]
    return train(make_cfg(*overrides, *common))


def test_trains_on_cifar10(make_cfg, tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar")
    root = f"data.source.root={tmp_path / 'cifar'}"
    metrics = quick_run(make_cfg, "data=cifar10", root, "data.source.download=false")
    assert metrics["train/g_steps"] == 2


def test_trains_class_conditional_on_mnist_resized_to_32(make_cfg, tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist" / "MNIST" / "raw")
    root = f"data.source.root={tmp_path / 'mnist'}"
    overrides = ["data=mnist", root, "data.source.download=false", "data.resolution=32"]
    datamodule = build(make_cfg(*overrides, "data.batch_size=4"), "data")
    datamodule.setup()
    assert isinstance(datamodule.data, TensorData)
    assert datamodule.data.samples.shape == (20, 1, 32, 32)
    metrics = quick_run(make_cfg, *overrides, "num_classes=10")
    assert metrics["train/g_steps"] == 2


def test_trains_on_an_image_folder(make_cfg, tmp_path: Path) -> None:
    for i in range(12):
        picture = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        write_png(tmp_path / "pics" / f"class{i % 3}" / f"{i}.png", picture)
    overrides = ["data=imagefolder", f"data.source.root={tmp_path / 'pics'}", "data.resolution=16"]
    classes = ["data.num_classes=3", "num_classes=3", "data.num_workers=0"]
    metrics = quick_run(make_cfg, *overrides, *classes)
    assert metrics["train/g_steps"] == 2
