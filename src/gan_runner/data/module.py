"""The data module shared by every data set: in-memory tensors batched by index, or a Dataset."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


@dataclass
class TensorData:
    """A whole data set held in memory: uint8 or float samples, optional int64 labels."""

    samples: Tensor
    labels: Tensor | None = None

    def __len__(self) -> int:
        return self.samples.shape[0]


class IndexedTensors(Dataset):
    """Returns a whole batch for a list of indices, so no per-sample Python work is done."""

    def __init__(self, data: TensorData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices, device=self.data.samples.device)
        batch = {"samples": self.data.samples[index]}
        if self.data.labels is not None:
            batch["labels"] = self.data.labels[index]
        return batch


class ShuffledBatches(Sampler[list[int]]):
    """Index batches from a rank's shard of a seeded shuffle; reshuffles on set_epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.shard = DistributedSampler(
            range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size = batch_size
        self.skip = 0  # items of the next pass already consumed before a resume

    def set_epoch(self, epoch: int) -> None:
        self.shard.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.shard)
        first, self.skip = self.skip, 0
        for start in range(
            first * self.batch_size, len(indices) - self.batch_size + 1, self.batch_size
        ):
            yield indices[start : start + self.batch_size]

    def __len__(self) -> int:
        return len(self.shard) // self.batch_size


class SkippingSampler(Sampler[int]):
    """A rank's shard of a seeded shuffle that can start part-way through, for a resume."""

    def __init__(self, shard: DistributedSampler, batch_size: int) -> None:
        self.shard, self.batch_size = shard, batch_size
        self.skip = 0  # batches of the next pass already consumed before a resume

    def set_epoch(self, epoch: int) -> None:
        self.shard.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        first, self.skip = self.skip * self.batch_size, 0
        return iter(list(self.shard)[first:])

    def __len__(self) -> int:
        return len(self.shard)


class ResumableLoader(DataLoader):
    """A DataLoader whose place in the epoch is saved in checkpoints (Lightning's `_Stateful`).

    Lightning stores `state_dict()` with the loop state and calls `load_state_dict()` before the
    first batch of a resumed fit, so a run stopped mid-epoch continues with the very batch it
    would have drawn next instead of replaying the epoch's first batches.
    """

    _served = 0

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        # Its own generator: each new iterator draws a worker base seed, which would otherwise
        # come from the global RNG, and a resume creates one more iterator than the straight run.
        super().__init__(*args, generator=torch.Generator().manual_seed(seed), **kwargs)

    def __iter__(self) -> Iterator[Any]:
        self._served = self.sampler.skip
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        # Lightning fetches no batch ahead from a loader with a length, so this is what the
        # training steps consumed.
        return {"batches_served": self._served, "batches_per_epoch": len(self)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        served = int(state["batches_served"])
        self.sampler.skip = served if served < len(self) else 0  # a finished epoch: none


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
        self.source = source
        self.batch_size, self.shape = batch_size, list(shape)
        self.num_classes, self.bounded = num_classes, bounded
        self.num_workers, self.keep_on_device, self.seed = num_workers, keep_on_device, seed
        self.data: TensorData | Dataset | None = None

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
        if isinstance(loaded, TensorData):
            loaded = self._prepare_tensors(loaded)
        self.data = loaded

    def _prepare_tensors(self, data: TensorData) -> TensorData:
        samples = data.samples
        if len(self.shape) == 3:
            samples = resize_images(samples, self.shape[-1])
        if list(samples.shape[1:]) != self.shape:
            raise ValueError(
                f"data.shape is {self.shape} but the source gives samples of shape "
                f"{list(samples.shape[1:])}; set data.shape (or data.resolution) to match"
            )
        if len(data) < self.batch_size * self._world_size():
            raise ValueError(
                f"data.batch_size={self.batch_size} is larger than the {len(data)} samples "
                "available per step; lower data.batch_size"
            )
        device = self._device() if self.keep_on_device else torch.device("cpu")
        labels = data.labels.to(device) if data.labels is not None else None
        return TensorData(samples.to(device), labels)

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _device(self) -> torch.device:
        return (
            self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        )

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def train_dataloader(self) -> ResumableLoader:
        self.setup()
        world, rank = self._world_size(), self._rank()
        if isinstance(self.data, TensorData):
            sampler = ShuffledBatches(len(self.data), self.batch_size, self.seed, rank, world)
            # batch_size=None: the sampler yields whole index batches and the dataset slices them.
            return ResumableLoader(
                IndexedTensors(self.data), sampler=sampler, batch_size=None, seed=self.seed
            )
        shard = DistributedSampler(
            self.data, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        sampler = SkippingSampler(shard, self.batch_size)
        return ResumableLoader(
            self.data,
            seed=self.seed,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> dict[str, Tensor]:
        if isinstance(batch, (list, tuple)):  # torchvision datasets yield (image, label) pairs
            batch = {"samples": batch[0], "labels": batch[1]}
        batch["samples"] = to_model_range(batch["samples"])
        return batch

    def steps_per_epoch(self) -> int:
        self.setup()
        return math.floor(len(self.data) / (self.batch_size * self._world_size()))
