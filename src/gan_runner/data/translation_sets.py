"""The public image-to-image translation sets on disk: CycleGAN's unpaired `trainA/ trainB/
testA/ testB/` folders and pix2pix's side-by-side `A|B` images, downloaded once when missing.

Both are read whole into memory at the run's resolution (horse2zebra's 2,661 images take 118 MB
at 128×128), so batches are drawn by index and a resume continues at the exact batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from gan_runner.data.readers import list_images, read_square_images, square_image
from gan_runner.data.two_domain import TwoDomainData
from gan_runner.data.vision import DOWNLOAD_ERRORS
from gan_runner.errors import UserError

# Where the authors serve their sets (junyanz/pytorch-CycleGAN-and-pix2pix's datasets/*.sh).
CYCLEGAN_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{name}.zip"
PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"


class TranslationFolders:
    """A translation set under `root`, fetched from `url` (its `dataset` name) when missing."""

    name = ""  # the data config option, named in errors
    url = ""
    layout = ""  # the folders `root` must hold, for errors

    def __init__(
        self, root: str, dataset: str | None = None, download: bool = True, channels: int = 3
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3 for image files, got {channels}")
        self.root, self.dataset, self.download = Path(root).expanduser(), dataset, download
        self.mode = "RGB" if channels == 3 else "L"

    def locate(self) -> Path | None:
        raise NotImplementedError

    def expected(self) -> str:
        return f"{self.layout} under {self.root}"

    def prepare(self) -> Path:
        """The set's folder, downloading the public set `dataset` first if it is missing."""
        found = self.locate()
        if found is not None:
            return found
        why = "and data.source.dataset is null (nothing to download)"
        if self.dataset and not self.download:
            why = "and data.source.download=false"
        elif self.dataset:
            why = self._fetch()
            found = self.locate()
            if found is not None:
                return found
        raise UserError(
            f"data={self.name}: {self.expected()} not found {why}; put the folders there, or set "
            "data.source.root to the folder that holds them"
        )

    def _fetch(self) -> str:
        from torchvision.datasets.utils import download_and_extract_archive

        url = self.url.format(name=self.dataset)
        try:  # the archives unpack to <dataset>/..., so root's parent receives them
            download_and_extract_archive(url, download_root=str(self.root.parent))
        except DOWNLOAD_ERRORS as error:
            detail = (str(error).strip().splitlines() or [""])[0]
            return f"and downloading {url} failed ({type(error).__name__}: {detail}; no network?)"
        unpacked = self.root.parent / str(self.dataset)
        if unpacked != self.root and unpacked.is_dir() and not self.root.exists():
            unpacked.rename(self.root)  # a root named otherwise than the set still receives it
        return f"even after downloading {url}"


class UnpairedFolders(TranslationFolders):
    """CycleGAN's layout (Zhu et al. 2017): trainA/, trainB/, testA/, testB/ of image files."""

    name, url, layout = "unpaired_folders", CYCLEGAN_URL, "trainA/, trainB/, testA/, testB/"

    def locate(self) -> Path | None:
        have = [self.root / f"train{d}" for d in "AB"]
        if all(folder.is_dir() for folder in have):
            return self.root
        if have[0].is_dir():  # the most likely slip: half a set; say which half is missing
            raise UserError(
                f"data={self.name}: {self.root} has trainA/ but no trainB/; an unpaired set "
                f"needs {self.layout} (testA/ and testB/ for the metrics)"
            )
        return None

    def load(self, resolution: int | None = None, split: str = "train") -> TwoDomainData:
        root = self.prepare()
        domains = []
        for domain in "AB":
            folder = root / f"{split}{domain}"
            paths = list_images(folder) if folder.is_dir() else []
            if not paths:
                raise UserError(
                    f"data={self.name}: no images in {folder}; the {split} split needs "
                    f"{split}A/ and {split}B/ (layout: {self.layout})"
                )
            domains.append(read_square_images(paths, resolution or 256, self.mode))
        return TwoDomainData(domains[0], domains[1])


class PairedFolder(TranslationFolders):
    """pix2pix's layout (Isola et al. 2017): train/, test/ (or val/) of side-by-side A|B
    images, each twice as wide as high; `direction` BtoA swaps the halves' roles."""

    name, url, layout = "paired_folder", PIX2PIX_URL, "train/ and test/ (or val/) of A|B images"

    def __init__(self, *args, direction: str = "AtoB", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"data.source.direction must be AtoB or BtoA, got {direction!r}")
        self.direction = direction

    def locate(self) -> Path | None:
        return self.root if (self.root / "train").is_dir() else None

    def load(self, resolution: int | None = None, split: str = "train") -> TwoDomainData:
        root = self.prepare()
        folder = root / split
        if split == "test" and not folder.is_dir():
            folder = root / "val"  # facades and maps ship val/ where others ship test/
        paths = list_images(folder) if folder.is_dir() else []
        if not paths:
            raise UserError(f"data={self.name}: no images in {folder} ({self.layout})")
        a, b = zip(*(self._halves(path, resolution or 256) for path in paths))
        a, b = torch.stack(a), torch.stack(b)
        return TwoDomainData(*((b, a) if self.direction == "BtoA" else (a, b)), paired=True)

    def _halves(self, path: Path, resolution: int) -> tuple[Tensor, Tensor]:
        try:
            with Image.open(path) as image:
                width, height = image.size
                if width % 2 or width != 2 * height:
                    raise UserError(
                        f"data={self.name}: {path} is {width}×{height}; a paired image holds A "
                        "and B side by side, so it must be exactly twice as wide as high (even "
                        "width): re-export it, or move it out of the folder"
                    )
                left = image.crop((0, 0, width // 2, height))
                right = image.crop((width // 2, 0, width, height))
                return (
                    square_image(left, resolution, mode=self.mode),
                    square_image(right, resolution, mode=self.mode),
                )
        except OSError as error:
            raise UserError(f"cannot read image {path}: {error}") from None
