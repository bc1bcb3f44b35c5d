"""Readers for the on-disk formats of the standard image sets (no checksums, so any copy loads)."""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from gan_runner.data.module import TensorData
from gan_runner.errors import UserError

IMAGE_SUFFIXES = {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp"}


def read_idx(path: Path) -> Tensor:
    """An idx file (LeCun's MNIST format, plain or .gz) as a uint8 tensor of its stored shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            raw = file.read()
    except (OSError, EOFError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    # Magic number: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte idx file (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path} holds {body.size} bytes but its header says shape {shape}")
    return torch.from_numpy(body.reshape(shape).copy())


def read_idx_pair(images: Path, labels: Path) -> TensorData:
    """MNIST-style images (N, H, W) and labels (N,) as (N, 1, H, W) uint8 samples."""
    samples, targets = read_idx(images), read_idx(labels)
    if samples.dim() != 3 or targets.shape != samples.shape[:1]:
        raise UserError(
            f"{images} (shape {list(samples.shape)}) and {labels} (shape {list(targets.shape)}) "
            "are not N images with N labels"
        )
    return TensorData(samples.unsqueeze(1), targets.long())


def read_cifar(paths: Sequence[Path], label_key: str) -> TensorData:
    """CIFAR python-version pickles: 'data' rows of 3072 bytes (R, G, B planes of 32×32)."""
    images, labels = [], []
    for path in paths:
        with open(path, "rb") as file:
            # Written by Python 2: latin1 decodes its str keys; a Python 3 copy may use bytes keys.
            entry = pickle.load(file, encoding="latin1")
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
        if "data" not in entry or label_key not in entry:
            raise UserError(f"{path} is not a CIFAR batch: it lacks 'data' or '{label_key}'")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    samples, targets = np.concatenate(images), np.concatenate(labels)
    return TensorData(torch.from_numpy(samples), torch.from_numpy(targets))


def read_svhn(path: Path) -> TensorData:
    """An SVHN cropped-digits .mat file: X (32, 32, 3, N) uint8, y (N, 1) with 10 for digit 0."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path} as a MATLAB file: {error}") from None
    samples = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)))
    labels = mat["y"].astype(np.int64).reshape(-1)
    labels[labels == 10] = 0
    return TensorData(torch.from_numpy(samples), torch.from_numpy(labels))


def read_stl10(images: Path, labels: Path | None) -> TensorData:
    """STL-10 binaries: 96×96 RGB images stored column-major, labels 1..10 (mapped to 0..9)."""
    raw = np.fromfile(images, dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise UserError(f"{images} holds {raw.size} bytes, not a whole number of 3×96×96 images")
    # Column-major (MATLAB) order: each plane is stored transposed.
    samples = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))
    if labels is None:
        return TensorData(torch.from_numpy(samples))
    targets = np.fromfile(labels, dtype=np.uint8).astype(np.int64) - 1
    if targets.shape[0] != samples.shape[0]:
        raise UserError(f"{labels} holds {targets.shape[0]} labels for {samples.shape[0]} images")
    return TensorData(torch.from_numpy(samples), torch.from_numpy(targets))


def list_images(folder: Path) -> list[Path]:
    """Every image file under a folder, recursively, in a stable (sorted) order."""
    found = []
    for parent, _, names in os.walk(folder, followlinks=True):
        found.extend(Path(parent, n) for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found)


def read_partition(path: Path) -> dict[str, int]:
    """CelebA's list_eval_partition (.txt "name code" lines or Kaggle's .csv): name -> 0/1/2."""
    partition = {}
    for line in path.read_text().splitlines():
        fields = line.replace(",", " ").split()
        if len(fields) == 2 and fields[1].isdigit():  # skips the .csv header
            partition[fields[0]] = int(fields[1])
    return partition


def square_image(
    image: Image.Image, resolution: int, crop: int | None = None, mode: str = "RGB"
) -> Tensor:
    """A (C, R, R) uint8 tensor: a centred square (side `crop`, or the largest), resized."""
    image = image.convert(mode)
    width, height = image.size
    side = min(width, height) if crop is None else crop
    if side > min(width, height):
        raise UserError(f"it is {width}×{height}, too small for a centred {crop}×{crop} crop")
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if image.size != (resolution, resolution):
        # Lanczos, as StyleGAN's dataset tool resizes: sharp, without aliasing when shrinking.
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    array = np.array(image, dtype=np.uint8)  # a copy: PIL's buffer is read-only
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def read_square_images(paths: Sequence[Path], resolution: int, mode: str = "RGB") -> Tensor:
    """Image files as one (N, C, R, R) uint8 stack of centred squares (`square_image`)."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(square_image(image, resolution, mode=mode))
        except (OSError, UserError) as error:
            raise UserError(f"cannot read image {path}: {error}") from None
    return torch.stack(images)


class ImageFiles(Dataset):
    """Image files decoded on demand into square (C, R, R) uint8 batches, with optional labels."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int] | None,
        resolution: int,
        crop: int | None = None,
        mode: str = "RGB",
    ) -> None:
        # Plain strings and ints: cheap to copy into each DataLoader worker.
        self.paths = [str(p) for p in paths]
        self.labels = None if labels is None else [int(label) for label in labels]
        self.resolution, self.crop, self.mode = resolution, crop, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        try:
            with Image.open(self.paths[index]) as image:
                samples = square_image(image, self.resolution, self.crop, self.mode)
        except (OSError, UserError) as error:
            raise UserError(f"cannot read image {self.paths[index]}: {error}") from None
        item: dict[str, Tensor | int] = {"samples": samples}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item
