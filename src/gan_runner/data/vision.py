"""The standard real image sets: found on disk, downloaded once when missing, read by our readers.

Downloads use torchvision's URLs, checksums and helpers; reading skips torchvision's dataset
classes, which re-verify checksums, so any faithful copy (a mirror, a Debian package) loads.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from gan_runner.data.module import TensorData
from gan_runner.data.readers import (
    IMAGE_SUFFIXES,
    ImageFiles,
    list_images,
    read_cifar,
    read_idx_pair,
    read_partition,
    read_stl10,
    read_svhn,
)
from gan_runner.errors import UserError

# What a failed download raises: no network (URLError is an OSError), a bad checksum or a Google
# Drive quota (RuntimeError), a truncated archive.
DOWNLOAD_ERRORS = (OSError, RuntimeError, EOFError, tarfile.TarError, zipfile.BadZipFile)


def _present(*candidates: Path) -> Path | None:
    return next((path for path in candidates if path.is_file()), None)


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else "{" + ", ".join(names) + "}"


class Downloadable:
    """A data set whose files `names()` lie in one of `folders()`; `fetch()` downloads them."""

    name = ""  # the data config option, named in errors
    folder = ""  # the subfolder its archive extracts to, if any
    how = ""  # how to get the files by hand
    splits: tuple[str, ...] = ("train", "test")

    def __init__(self, root: str, download: bool = True, split: str = "train") -> None:
        if split not in self.splits:
            raise ValueError(f"source.split={split!r} is not one of: {', '.join(self.splits)}")
        self.root, self.download, self.split = Path(root).expanduser(), download, split

    def folders(self) -> list[Path]:
        return [self.root / self.folder, self.root] if self.folder else [self.root]

    def names(self) -> list[str]:
        raise NotImplementedError

    def locate(self) -> Any | None:
        """Where the files are (here: the first folder holding them all), or None."""
        have_all = (f for f in self.folders() if all((f / n).is_file() for n in self.names()))
        return next(have_all, None)

    def expected(self) -> str:
        prefix = f"{self.folder}/" if self.folder else ""
        return f"{prefix}{_listed(self.names())} not found under {self.root}"

    def fetch(self) -> None:
        raise NotImplementedError

    def prepare(self) -> Any:
        """Where the files are, downloading them first if they are missing and allowed."""
        found = self.locate()
        if found is not None:
            return found
        why = "and data.source.download=false"
        if self.download:
            try:
                self.fetch()
            except DOWNLOAD_ERRORS as error:
                detail = (str(error).strip().splitlines() or [""])[0]
                hint = "; no network?" if isinstance(error, OSError) else ""
                why = f"and download failed ({type(error).__name__}: {detail}{hint})"
            else:
                found = self.locate()
                if found is not None:
                    return found
                why = "even after downloading"
        raise UserError(
            f"data={self.name}: {self.expected()} {why}; {self.how}, "
            "or set data.source.root to the folder that holds them"
        )


class MNIST(Downloadable):
    """LeCun et al. 1998's MNIST handwritten digits: 60k train / 10k test 28×28 grayscale."""

    name, raw = "mnist", "MNIST"  # torchvision keeps the files in root/<raw>/raw
    how = "download the four idx .gz files from https://ossci-datasets.s3.amazonaws.com/mnist/"

    def __init__(
        self,
        root: str,
        split: str = "train",
        download: bool = True,
        fallback_root: str | None = None,
    ) -> None:
        super().__init__(root, download, split)
        self.fallback = Path(fallback_root).expanduser() if fallback_root else None

    def folders(self) -> list[Path]:
        fallback = [self.fallback] if self.fallback else []
        return [self.root, self.root / self.raw / "raw", *fallback]

    def names(self) -> list[str]:
        prefix = "train" if self.split == "train" else "t10k"
        return [f"{prefix}-images-idx3-ubyte[.gz]", f"{prefix}-labels-idx1-ubyte[.gz]"]

    def expected(self) -> str:
        return f"{_listed(self.names())} not found under {' or '.join(map(str, self.folders()))}"

    def locate(self) -> list[Path] | None:
        for folder in self.folders():
            stems = [name.removesuffix("[.gz]") for name in self.names()]
            paths = [_present(folder / stem, folder / f"{stem}.gz") for stem in stems]
            if all(paths):
                return paths
        return None

    def fetch(self) -> None:
        import torchvision.datasets as tv
        from torchvision.datasets.utils import download_url

        reference = getattr(tv, type(self).__name__)
        wanted = [name.replace("[.gz]", ".gz") for name in self.names()]
        for filename, md5 in (entry for entry in reference.resources if entry[0] in wanted):
            for i, mirror in enumerate(reference.mirrors):
                try:
                    download_url(mirror + filename, self.root, filename, md5)
                    break
                except DOWNLOAD_ERRORS:
                    if i == len(reference.mirrors) - 1:
                        raise

    def load(self, resolution: int | None = None) -> TensorData:
        return read_idx_pair(*self.prepare())


class FashionMNIST(MNIST):
    """Xiao, Rasul & Vollgraf 2017's Fashion-MNIST: Zalando clothing, MNIST's format and sizes."""

    name, raw = "fashion_mnist", "FashionMNIST"
    how = (
        "download the four idx .gz files from https://github.com/zalandoresearch/fashion-mnist "
        "(or `apt-get install dataset-fashion-mnist`: /usr/share/datasets/fashion-mnist)"
    )


class CIFAR10(Downloadable):
    """Krizhevsky 2009's CIFAR-10: 50k train / 10k test 32×32 colour images in 10 classes."""

    name, folder, label_key = "cifar10", "cifar-10-batches-py", "labels"
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    how = (
        "download the CIFAR-10 python version from https://www.cs.toronto.edu/~kriz/cifar.html "
        "and extract it there"
    )

    def names(self) -> list[str]:
        return self.files[self.split]

    def fetch(self) -> None:
        import torchvision.datasets as tv
        from torchvision.datasets.utils import download_and_extract_archive

        ref = getattr(tv, type(self).__name__)
        download_and_extract_archive(ref.url, self.root, filename=ref.filename, md5=ref.tgz_md5)

    def load(self, resolution: int | None = None) -> TensorData:
        folder = self.prepare()
        return read_cifar([folder / name for name in self.names()], self.label_key)


class CIFAR100(CIFAR10):
    """Krizhevsky 2009's CIFAR-100: CIFAR-10's images and sizes in 100 fine classes."""

    name, folder, label_key = "cifar100", "cifar-100-python", "fine_labels"
    files = {"train": ["train"], "test": ["test"]}
    how = CIFAR10.how.replace("CIFAR-10", "CIFAR-100")


class SVHN(Downloadable):
    """Netzer et al. 2011's Street View House Numbers: cropped 32×32 digits (format 2)."""

    name, splits = "svhn", ("train", "test", "extra")
    how = "download it from http://ufldl.stanford.edu/housenumbers/"

    def names(self) -> list[str]:
        return [f"{self.split}_32x32.mat"]

    def fetch(self) -> None:
        from torchvision.datasets import SVHN as Reference
        from torchvision.datasets.utils import download_url

        url, filename, md5 = Reference.split_list[self.split]
        download_url(url, self.root, filename, md5)

    def load(self, resolution: int | None = None) -> TensorData:
        return read_svhn(self.prepare() / self.names()[0])


class STL10(Downloadable):
    """Coates, Ng & Lee 2011's STL-10: 96×96 colour, 5k labelled train, 100k unlabelled."""

    name, folder = "stl10", "stl10_binary"
    parts = {
        "train": [("train_X.bin", "train_y.bin")],
        "test": [("test_X.bin", "test_y.bin")],
        "unlabeled": [("unlabeled_X.bin", None)],
        "train+unlabeled": [("train_X.bin", "train_y.bin"), ("unlabeled_X.bin", None)],
    }
    splits = tuple(parts)
    how = "download the binary files from https://cs.stanford.edu/~acoates/stl10/ and extract them"

    def names(self) -> list[str]:
        return [name for pair in self.parts[self.split] for name in pair if name]

    def fetch(self) -> None:
        from torchvision.datasets import STL10 as Ref
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(Ref.url, self.root, filename=Ref.filename, md5=Ref.tgz_md5)

    def load(self, resolution: int | None = None) -> TensorData:
        folder = self.prepare()
        parts = [read_stl10(folder / x, y and folder / y) for x, y in self.parts[self.split]]
        if len(parts) == 1:
            return parts[0]
        # Mixed with unlabelled images, labels would be partial: the union is unlabelled.
        return TensorData(torch.cat([part.samples for part in parts]))


def _square(name: str, resolution: int | None) -> int:
    if resolution is None:
        raise UserError(f"data={name}: data.shape must be [channels, resolution, resolution]")
    return resolution


class CelebA(Downloadable):
    """Liu et al. 2015's CelebFaces Attributes: 202,599 aligned 178×218 faces, read per batch."""

    name = "celeba"
    partitions = {"train": 0, "valid": 1, "test": 2, "all": None}
    splits = tuple(partitions)
    how = (
        "download img_align_celeba.zip and list_eval_partition.txt from "
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html and unzip the images there"
    )

    def __init__(
        self, root: str, split: str = "train", crop: int = 178, download: bool = True
    ) -> None:
        super().__init__(root, download, split)
        if not 1 <= crop <= 178:
            raise ValueError(f"source.crop={crop} must be in 1..178 (the aligned faces' width)")
        self.crop = crop

    def folders(self) -> list[Path]:
        return [self.root, self.root / "celeba"]  # torchvision's layout adds celeba/

    def expected(self) -> str:
        partition = "" if self.split == "all" else " and list_eval_partition.txt"
        where = " or ".join(map(str, self.folders()))
        return f"img_align_celeba/{partition} not found under {where}"

    def locate(self) -> tuple[Path, Path | None] | None:
        for folder in self.folders():
            txt, csv = folder / "list_eval_partition.txt", folder / "list_eval_partition.csv"
            partition = _present(txt, csv)  # .csv: Kaggle's copy
            images = folder / "img_align_celeba"
            if images.is_dir() and (partition or self.split == "all"):
                return images, partition
        return None

    def fetch(self) -> None:
        from torchvision.datasets import CelebA as Reference
        from torchvision.datasets.utils import download_file_from_google_drive, extract_archive

        for file_id, md5, filename in Reference.file_list:
            if filename in ("img_align_celeba.zip", "list_eval_partition.txt"):
                download_file_from_google_drive(file_id, self.root, filename, md5)
        extract_archive(str(self.root / "img_align_celeba.zip"), str(self.root))

    def load(self, resolution: int | None = None) -> ImageFiles:
        images, partition = self.prepare()
        paths = list_images(images)
        code = self.partitions[self.split]
        if code is not None:
            names = {name for name, part in read_partition(partition).items() if part == code}
            paths = [path for path in paths if path.name in names]
        if not paths:
            raise UserError(f"data=celeba: no {self.split} images found in {images}")
        return ImageFiles(paths, None, _square(self.name, resolution), self.crop)


class ImageFolder:
    """Any folder of images (PNG, JPEG, ...); its class subfolders, if it has them, are labels."""

    name = "imagefolder"

    def __init__(self, root: str, channels: int = 3, num_classes: int = 0) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} must be 1 (grayscale) or 3 (RGB)")
        self.root, self.channels, self.num_classes = Path(root).expanduser(), channels, num_classes

    def load(self, resolution: int | None = None) -> ImageFiles:
        paths = list_images(self.root)
        if not paths:
            raise UserError(
                f"data=imagefolder: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under "
                f"{self.root}; set data.source.root to a folder of images (class subfolders "
                "become labels)"
            )
        mode = "RGB" if self.channels == 3 else "L"
        return ImageFiles(paths, self._labels(paths), _square(self.name, resolution), None, mode)

    def _labels(self, paths: list[Path]) -> list[int] | None:
        parts = [path.relative_to(self.root).parts for path in paths]
        # Images lying in root itself mean a flat folder: every image, unlabelled.
        classes = [] if any(len(p) == 1 for p in parts) else sorted({p[0] for p in parts})
        if self.num_classes and self.num_classes != len(classes):
            raise UserError(
                f"data.num_classes={self.num_classes} but {self.root} has {len(classes)} class "
                f"subfolders{'' if classes else ' (it holds images directly)'}; set "
                f"data.num_classes={len(classes)}"
            )
        index = {name: i for i, name in enumerate(classes)}
        return [index[p[0]] for p in parts] if classes else None
