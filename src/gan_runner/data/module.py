"""The data module shared by every data set: in-memory tensors batched by index, or a Dataset."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, Subset

from gan_runner.data.batches import (
    IndexedTensors,
    LabeledBatches,
    LabeledIndexedTensors,
    ResumableLoader,
    ShuffledBatches,
    SkippingSampler,
)
from gan_runner.data.two_domain import TwoDomainData, TwoDomainTensors
from gan_runner.errors import UserError

UNLABELED = -1  # the label of a sample whose label a semi-supervised run hides
# The test split held out of a labelled in-memory set without one of its own (digits) when
# data.labeled_per_class is set: the classifier metric's holdout (metrics.extractors'
# ClassifierSettings defaults: 20%, seed 0), so both score the same held-out images.
TEST_FRACTION, TEST_SEED = 0.2, 0


@dataclass
class TensorData:
    """A whole data set held in memory: uint8 or float samples, optional int64 labels."""

    samples: Tensor
    labels: Tensor | None = None

    def __len__(self) -> int:
        return self.samples.shape[0]


# train.batches_per_step=null: batches per step, and the most bytes of samples fetched at once.
AUTO_GROUP = (16, 64 * 2**20)


def to_model_range(samples: Tensor) -> Tensor:
    """uint8 images in [0, 255] become floats in [-1, 1]; float samples pass unchanged."""
    if samples.dtype == torch.uint8:
        return samples.float().div(127.5).sub(1.0)
    return samples


def resize_images(samples: Tensor, resolution: int, chunk: int = 4096) -> Tensor:
    """Resize a (N, C, H, W) stack to a square resolution, antialiased, keeping the dtype."""
    if samples.shape[-2:] == (resolution, resolution):
        return samples
    # In chunks: a whole set as floats (STL-10's 100k at 96×96: 11 GB) would not fit in memory.
    size = (resolution, resolution)
    out = samples.new_empty((*samples.shape[:2], *size))
    for start in range(0, samples.shape[0], chunk):
        part = samples[start : start + chunk].float()
        resized = F.interpolate(part, size=size, mode="bilinear", antialias=True)
        if samples.dtype == torch.uint8:
            resized = resized.round().clamp(0, 255)
        out[start : start + chunk] = resized.to(samples.dtype)
    return out


def held_out_indices(n: int, fraction: float = TEST_FRACTION, seed: int = TEST_SEED) -> Tensor:
    """The first `fraction` of a seeded permutation of n: the classifier metric's test split."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: max(1, int(fraction * n))]


def fraction_indices(labels: Tensor | None, n: int, fraction: float, seed: int) -> Tensor:
    """A seeded choice of round(fraction * n) of n samples, in their order; with labels, each
    class keeps its share (largest remainders), so the kept set has the full set's balance."""
    keep = max(1, math.floor(fraction * n + 0.5))
    chooser = torch.Generator().manual_seed(seed)  # its own stream: no other draw moves
    if labels is None:
        return torch.randperm(n, generator=chooser)[:keep].sort().values
    labels = torch.as_tensor(labels).cpu()
    quota = torch.bincount(labels).double() * keep / n
    per_class = quota.floor().long()
    short = keep - int(per_class.sum())
    per_class[torch.sort(quota - per_class, descending=True, stable=True).indices[:short]] += 1
    picked = [
        members[torch.randperm(len(members), generator=chooser)[:count]]
        for members, count in (
            (torch.nonzero(labels == k).flatten(), int(c)) for k, c in enumerate(per_class)
        )
    ]
    return torch.cat(picked).sort().values


@dataclass
class SemiSupervisedSplit:
    """A labelled set cut for semi-supervised learning: the training samples, labels hidden
    (-1) but for a class-balanced subset, that subset, and the held-out test split if cut."""

    train: TensorData
    labeled: TensorData
    test: TensorData | None


def semi_supervised_split(
    data: TensorData, per_class: int, seed: int, hold_out: bool
) -> SemiSupervisedSplit:
    """Hold out the test split (if asked), then keep `per_class` labels of each class, chosen
    by their own seeded generator so that no other random stream moves."""
    kept = torch.ones(len(data), dtype=torch.bool)
    test = None
    if hold_out:
        chosen = held_out_indices(len(data))
        kept[chosen] = False
        test = TensorData(data.samples[chosen], data.labels[chosen])
    samples, labels = data.samples[kept], data.labels[kept]
    counts = torch.bincount(labels)
    smallest = int(counts.argmin())
    if per_class > counts[smallest]:
        raise UserError(
            f"data.labeled_per_class={per_class} is more than the {int(counts[smallest])} "
            f"training samples of class {smallest}, the smallest; lower data.labeled_per_class"
        )
    chooser = torch.Generator().manual_seed(seed)
    picked = [
        members[torch.randperm(len(members), generator=chooser)[:per_class]]
        for members in (torch.nonzero(labels == k).flatten() for k in range(len(counts)))
    ]
    labeled = torch.cat(picked).sort().values
    hidden = torch.full_like(labels, UNLABELED)
    hidden[labeled] = labels[labeled]
    train = TensorData(samples, hidden)
    return SemiSupervisedSplit(train, TensorData(samples[labeled], labels[labeled]), test)


class GANDataModule(pl.LightningDataModule):
    """Serves a source's training samples (and labels) as dict batches to every rank."""

    def __init__(
        self,
        source: Any,
        batch_size: int,
        shape: list[int],
        num_classes: int = 0,
        bounded: bool = True,
        num_workers: int = 0,
        keep_on_device: bool = True,
        seed: int = 0,
        resolution: int | None = None,
        channels: int | None = None,
        labeled_per_class: int | None = None,
        domains: int = 1,
        paired: bool = False,
        fraction: float | None = None,
    ) -> None:
        super().__init__()
        # resolution and channels are the config's handles on shape ([C, R, R] for images).
        if resolution is not None and list(shape[-2:]) != [resolution, resolution]:
            raise ValueError(
                f"data.shape {list(shape)} does not match data.resolution={resolution}"
            )
        if channels is not None and shape[0] != channels:
            raise ValueError(f"data.shape {list(shape)} does not match data.channels={channels}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if labeled_per_class is not None and (
            isinstance(labeled_per_class, bool) or int(labeled_per_class) < 1
        ):
            raise ValueError(
                f"labeled_per_class must be >= 1, or null (every sample labelled); got "
                f"{labeled_per_class}"
            )
        if fraction is not None and (isinstance(fraction, bool) or not 0 < float(fraction) <= 1):
            raise ValueError(
                f"data.fraction={fraction} is outside (0, 1]; set the share of the training "
                "images to keep (0.1: 10%), or null for all of them"
            )
        if domains not in (1, 2):
            raise ValueError(f"data.domains must be 1 or 2, got {domains}")
        self.labeled_per_class = labeled_per_class
        self.domains, self.paired = domains, paired
        # Semi-supervised runs: the labelled subset, and the held-out test split when the
        # source has no test split of its own (metrics.critic_accuracy scores it).
        self.labeled: TensorData | None = None
        self.held_out: TensorData | None = None
        self.source = source
        self.batch_size, self.shape = batch_size, list(shape)
        self.num_classes, self.bounded = num_classes, bounded
        self.num_workers, self.keep_on_device, self.seed = num_workers, keep_on_device, seed
        self.data: TensorData | TwoDomainData | Dataset | None = None
        # Limited-data runs (data.fraction) train on a subset of `data`; `data` stays the whole
        # set, so the metrics' reference and feature classifier are those of a full run.
        self.fraction = None if fraction is None else float(fraction)
        self.train_data: TensorData | TwoDomainData | Dataset | None = None

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before setup runs on every rank, so a
        # source that downloads (gan_runner.data.vision) does so once, not once per GPU.
        prepare = getattr(self.source, "prepare", None)
        if prepare is not None:
            prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        loaded = self.source.load(resolution=self.shape[-1] if len(self.shape) == 3 else None)
        if isinstance(loaded, TwoDomainData) != (self.domains == 2):
            kind = "two image domains" if isinstance(loaded, TwoDomainData) else "one domain"
            raise UserError(
                f"{self._name()} sets data.domains={self.domains} but its source gives {kind}; "
                "set data.domains to match the source"
            )
        if isinstance(loaded, TwoDomainData):
            loaded = self._prepare_domains(loaded)
        elif isinstance(loaded, TensorData):
            loaded = self._prepare_tensors(loaded)
        elif self.labeled_per_class is not None:
            raise UserError(
                f"data.labeled_per_class={self.labeled_per_class} needs a data set held in "
                f"memory, but {self._name()} is read from files per batch; set "
                "data.labeled_per_class=null"
            )
        self.train_data = self._keep_fraction(loaded)
        self.data = loaded

    def _keep_fraction(self, data: TensorData | TwoDomainData | Dataset) -> Any:
        """The training subset data.fraction keeps (the whole set when null)."""
        if self.fraction is None:
            return data
        if isinstance(data, TwoDomainData):
            raise UserError(
                f"data.fraction={self.fraction} keeps part of a one-domain image set, but "
                f"{self._name()} holds two image domains; set data.fraction=null"
            )
        if self.labeled_per_class is not None:
            raise UserError(
                f"data.fraction={self.fraction} does not combine with data.labeled_per_class="
                f"{self.labeled_per_class} (a semi-supervised split); set one of them to null"
            )
        labels = data.labels if isinstance(data, TensorData) else getattr(data, "labels", None)
        kept = fraction_indices(labels, len(data), self.fraction, self.seed)
        if len(kept) < self.batch_size * self._world_size():
            raise UserError(
                f"data.fraction={self.fraction} keeps {len(kept)} of {len(data)} images, fewer "
                f"than data.batch_size={self.batch_size} per step; raise data.fraction or lower "
                "data.batch_size"
            )
        if len(kept) == len(data):
            return data
        if isinstance(data, TensorData):
            labels = data.labels[kept.to(data.labels.device)] if data.labels is not None else None
            return TensorData(data.samples[kept.to(data.samples.device)], labels)
        return Subset(data, kept.tolist())

    def _prepare_tensors(self, data: TensorData) -> TensorData:
        samples = data.samples
        if len(self.shape) == 3:
            samples = resize_images(samples, self.shape[-1])
        if list(samples.shape[1:]) != self.shape:
            raise ValueError(
                f"data.shape is {self.shape} but the source gives samples of shape "
                f"{list(samples.shape[1:])}; set data.shape (or data.resolution) to match"
            )
        data = TensorData(samples, data.labels)
        if self.labeled_per_class is not None:
            data = self._split_labels(data)
        if len(data) < self.batch_size * self._world_size():
            raise ValueError(
                f"data.batch_size={self.batch_size} is larger than the {len(data)} samples "
                "available per step; lower data.batch_size"
            )
        device = self._device() if self.keep_on_device else torch.device("cpu")
        if self.labeled is not None:
            self.labeled = _on(self.labeled, device)
        return _on(data, device)

    def _prepare_domains(self, data: TwoDomainData) -> TwoDomainData:
        """Both domains resized to the run's shape, checked, and moved to the device."""
        a, b = (resize_images(x, self.shape[-1]) for x in (data.a, data.b))
        for domain, images in (("A", a), ("B", b)):
            if list(images.shape[1:]) != self.shape:
                raise UserError(
                    f"data.shape is {self.shape} but {self._name()}'s domain {domain} has images "
                    f"of shape {list(images.shape[1:])}; set data.channels to match"
                )
            if len(images) < self.batch_size * self._world_size():
                raise UserError(
                    f"data.batch_size={self.batch_size} is larger than the {len(images)} images "
                    f"of domain {domain} available per step; lower data.batch_size"
                )
        data = TwoDomainData(a, b, data.a_labels, data.b_labels, data.paired)
        device = self._device() if self.keep_on_device else torch.device("cpu")
        return data.to(device)

    def _split_labels(self, data: TensorData) -> TensorData:
        """The semi-supervised cut; a source with a test split of its own loses no sample."""
        if data.labels is None:
            raise UserError(
                f"data.labeled_per_class={self.labeled_per_class} needs labelled samples, but "
                f"{self._name()} has none; set data.labeled_per_class=null"
            )
        source = self.source
        own_test = (
            "test" in getattr(source, "splits", ()) and getattr(source, "split", "") != "test"
        )
        split = semi_supervised_split(data, self.labeled_per_class, self.seed, not own_test)
        self.labeled, self.held_out = split.labeled, split.test
        return split.train

    def _auto_group(self) -> int:
        """Up to AUTO_GROUP[0] batches per step, their samples within AUTO_GROUP[1] bytes."""
        most, budget = AUTO_GROUP
        sample = self.train_data.samples[0]
        batch_bytes = sample.numel() * sample.element_size() * self.batch_size
        return max(1, min(most, budget // max(batch_bytes, 1)))

    def _name(self) -> str:
        return f"data={getattr(self.source, 'name', '') or type(self.source).__name__}"

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _device(self) -> torch.device:
        return (
            self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        )

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    # Batches per training step (train.batches_per_step, set by gan-run): >1 fetches them as
    # one; None: as many as AUTO_GROUP allows where the data can be fetched so, else 1.
    batches_per_step: int | None = 1

    def train_dataloader(self) -> ResumableLoader:
        self.setup()
        world, rank = self._world_size(), self._rank()
        groupable = (
            isinstance(self.train_data, TensorData)
            and not isinstance(self.data, TwoDomainData)
            and self.labeled is None
        )
        group = self.batches_per_step
        if group is None:
            group = self._auto_group() if groupable else 1
        if group > 1 and not groupable:
            raise UserError(
                f"train.batches_per_step={group} fetches several batches as one from in-memory "
                f"data; {self._name()} here is read from files, split for semi-supervision or "
                "in two domains; use train.batches_per_step=1"
            )
        if isinstance(self.data, TwoDomainData):
            return self._two_domain_loader(world, rank)
        if self.labeled is not None:
            sampler = LabeledBatches(
                len(self.data), len(self.labeled), self.batch_size, self.seed, rank, world
            )
            return ResumableLoader(
                LabeledIndexedTensors(self.data, self.labeled),
                sampler=sampler,
                batch_size=None,
                seed=self.seed,
            )
        served = self.train_data
        if isinstance(served, TensorData):
            sampler = ShuffledBatches(len(served), self.batch_size, self.seed, rank, world, group)
            # batch_size=None: the sampler yields whole index batches and the dataset slices them.
            return ResumableLoader(
                IndexedTensors(served),
                sampler=sampler,
                batch_size=None,
                seed=self.seed,
                group=group,
            )
        shard = DistributedSampler(
            served, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        sampler = SkippingSampler(shard, self.batch_size)
        return ResumableLoader(
            served,
            seed=self.seed,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def _two_domain_loader(self, world: int, rank: int) -> ResumableLoader:
        n, seed = len(self.data), self.seed
        if self.data.paired:  # the same indices into both domains
            sampler = ShuffledBatches(n, self.batch_size, seed, rank, world)
        else:  # domain B in its own seeded order per epoch, resumable like the labelled stream
            sampler = LabeledBatches(n, len(self.data.b), self.batch_size, seed, rank, world)
        return ResumableLoader(
            TwoDomainTensors(self.data), sampler=sampler, batch_size=None, seed=seed
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> dict[str, Tensor]:
        if isinstance(batch, (list, tuple)):  # torchvision datasets yield (image, label) pairs
            batch = {"samples": batch[0], "labels": batch[1]}
        for key in ("samples", "a", "b"):
            if key in batch:
                batch[key] = to_model_range(batch[key])
        if "labeled_samples" in batch:
            batch["labeled_samples"] = to_model_range(batch["labeled_samples"])
        return batch

    def steps_per_epoch(self) -> int:
        self.setup()
        return math.floor(len(self.train_data) / (self.batch_size * self._world_size()))


def _on(data: TensorData, device: torch.device) -> TensorData:
    labels = data.labels.to(device) if data.labels is not None else None
    return TensorData(data.samples.to(device), labels)
