"""How in-memory batches are drawn: whole index batches sliced from tensors, seeded shuffles
that a resume continues mid-epoch, and the loader whose place in the epoch is checkpointed."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

if TYPE_CHECKING:
    from gan_runner.data.module import TensorData

LABELED_STREAM_SEED = 1_000_003  # keeps the labelled stream's seeds apart from the shuffle's


class IndexedTensors(Dataset):
    """Returns a whole batch for a list of indices, so no per-sample Python work is done."""

    def __init__(self, data: TensorData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: list[int] | list[list[int]]) -> dict[str, Tensor]:
        # A list of k index batches gives (k, batch, ...) tensors: k batches in one gather.
        index = torch.as_tensor(indices, device=self.data.samples.device)
        batch = {"samples": self.data.samples[index]}
        if self.data.labels is not None:
            batch["labels"] = self.data.labels[index]
        return batch


class LabeledIndexedTensors(IndexedTensors):
    """IndexedTensors that also serve a batch of the labelled subset (semi-supervised runs):
    `labeled_samples` and `labeled_labels` beside `samples` and `labels`."""

    def __init__(self, data: TensorData, labeled: TensorData) -> None:
        super().__init__(data)
        self.labeled = labeled

    def __getitem__(self, indices: tuple[list[int], list[int]]) -> dict[str, Tensor]:
        batch = super().__getitem__(indices[0])
        chosen = torch.as_tensor(indices[1], device=self.labeled.samples.device)
        batch["labeled_samples"] = self.labeled.samples[chosen]
        batch["labeled_labels"] = self.labeled.labels[chosen]
        return batch


class ShuffledBatches(Sampler[list[int]]):
    """Index batches from a rank's shard of a seeded shuffle; reshuffles on set_epoch.

    With group > 1 it yields lists of up to `group` consecutive index batches (the epoch's last
    list may hold fewer): the same batches in the same order, fetched `group` at a time.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int, world_size: int, group: int = 1
    ) -> None:
        self.shard = DistributedSampler(
            range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size, self.group = batch_size, group
        self.skip = 0  # batches of the next pass already consumed before a resume

    def set_epoch(self, epoch: int) -> None:
        self.shard.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        indices = list(self.shard)
        first, self.skip = self.skip, 0
        size = self.batch_size
        batches = (
            indices[start : start + size]
            for start in range(first * size, len(indices) - size + 1, size)
        )
        if self.group == 1:
            yield from batches
            return
        chunk: list[list[int]] = []
        for batch in batches:
            chunk.append(batch)
            if len(chunk) == self.group:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    @property
    def batches_per_epoch(self) -> int:
        return len(self.shard) // self.batch_size

    def __len__(self) -> int:
        return math.ceil(self.batches_per_epoch / self.group)


class LabeledBatches(ShuffledBatches):
    """ShuffledBatches, each paired with a batch of the labelled subset: the epoch's seeded
    permutations of that subset tiled to its length (openai/improved-gan's MNIST loop), a
    function of (seed, epoch, batch), so a resume mid-epoch draws what the straight run drew."""

    def __init__(
        self, n: int, n_labeled: int, batch_size: int, seed: int, rank: int, world_size: int
    ) -> None:
        super().__init__(n, batch_size, seed, rank, world_size)
        self.n_labeled, self.seed, self.rank, self.world_size = n_labeled, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[list[int], list[int]]]:
        number, size = self.skip, self.batch_size
        tiled = self._labeled_order()
        for indices in super().__iter__():
            start = (number * self.world_size + self.rank) * size  # ranks take turns
            yield indices, tiled[start : start + size].tolist()
            number += 1

    def _labeled_order(self) -> Tensor:
        stream = torch.Generator().manual_seed((self.seed + 1) * LABELED_STREAM_SEED + self.epoch)
        needed = len(self) * self.world_size * self.batch_size
        rounds = math.ceil(needed / self.n_labeled)
        return torch.cat([torch.randperm(self.n_labeled, generator=stream) for _ in range(rounds)])


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
    # Batches of the group being trained that the module has not trained yet (it sets this as
    # it goes, so a checkpoint inside a group, or a stop, resumes with the very next batch).
    in_group_left = 0

    def __init__(self, *args: Any, seed: int = 0, group: int = 1, **kwargs: Any) -> None:
        # Its own generator: each new iterator draws a worker base seed, which would otherwise
        # come from the global RNG, and a resume creates one more iterator than the straight run.
        super().__init__(*args, generator=torch.Generator().manual_seed(seed), **kwargs)
        self.group = group  # index batches per item: ShuffledBatches(group=...)

    def __iter__(self) -> Iterator[Any]:
        self._served, self.in_group_left = self.sampler.skip, 0
        for batch in super().__iter__():
            self._served += 1 if self.group == 1 else next(iter(batch.values())).shape[0]
            yield batch

    @property
    def batches_per_epoch(self) -> int:
        return getattr(self.sampler, "batches_per_epoch", None) or len(self)

    def state_dict(self) -> dict[str, int]:
        # Lightning fetches no batch ahead from a loader with a length, so this is what the
        # training steps consumed (in batches, whatever the group).
        served = self._served - self.in_group_left
        return {"batches_served": served, "batches_per_epoch": self.batches_per_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        served = int(state["batches_served"])
        # A finished epoch: none to skip.
        self.sampler.skip = served if served < self.batches_per_epoch else 0
