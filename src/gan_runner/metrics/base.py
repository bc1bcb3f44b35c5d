"""What every evaluation shares: drawing fakes and reals in batches, with its own randomness.

Under DDP each rank draws its share of the fakes (`rank_share`) and `gather_rows` hands every
rank the whole set, so all ranks compute the same value over n samples. Without a process
group both are no-ops, so a single-process evaluation is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor


class Evaluation(Protocol):
    """A family of metrics computed from a generator and the data (FID/KID/IS, 2D modes, ...)."""

    def evaluate(
        self, module: Any, datamodule: Any, generator: torch.Generator
    ) -> dict[str, float]:
        """Metric name (with its protocol, e.g. `fid_classifier_2k_train`) -> value."""
        ...

    def provenance(self) -> dict[str, Any]:
        """How the numbers were made: extractor, weights hash, sample counts, split, versions."""
        ...


def fake_batches(
    module: Any,
    n: int,
    batch_size: int,
    generator: torch.Generator,
    use_ema: bool = True,
) -> Iterator[Tensor]:
    """n generated samples in batches, drawn with `generator` so training randomness is untouched.

    Conditional modules get uniformly drawn labels. Samples come from the EMA generator when
    `use_ema` and one exists, else the live one, always in eval mode and without gradients.
    """
    net = module.sampling_generator if use_ema else module.generator
    was_training = net.training
    net.eval()
    try:
        done = 0
        while done < n:
            size = min(batch_size, n - done)
            # Through the game, so structured codes (InfoGAN) and labels are drawn as in training.
            z, labels = module.game.draw_latent(module, size, generator)
            with torch.no_grad():
                yield net(z, labels).float()
            done += size
    finally:
        net.train(was_training)


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _collective_device() -> torch.device:
    # NCCL moves only CUDA tensors (on this rank's device), gloo only CPU ones.
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_share(n: int) -> int:
    """This rank's part of n samples: n // world, the remainder going to the first ranks."""
    world, rank = _world()
    if n < world:
        raise ValueError(f"{n} samples cannot be split over {world} ranks; evaluate >= {world}")
    return n // world + (rank < n % world)


def rank_rows(rows: Tensor) -> Tensor:
    """This rank's contiguous block of rows, sized by `rank_share` (all rows without DDP)."""
    world, rank = _world()
    if world == 1:
        return rows
    n = rows.shape[0]
    start = rank * (n // world) + min(rank, n % world)
    return rows[start : start + rank_share(n)]


def gather_rows(rows: Tensor) -> Tensor:
    """Every rank's rows, concatenated in rank order, on every rank (the input without DDP)."""
    world, _ = _world()
    if world == 1:
        return rows
    dist, device = torch.distributed, _collective_device()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([rows.shape[0]], device=device))
    largest = int(max(sizes))
    # all_gather moves equal shapes: pad each rank's block to the largest, then cut back.
    padded = rows.new_zeros((largest, *rows.shape[1:]), device=device)
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)]).to(rows.device)


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """The element-wise sum of `tensor` over every rank (the input without DDP)."""
    world, _ = _world()
    if world == 1:
        return tensor
    dist, device = torch.distributed, _collective_device()
    total = tensor.detach().to(device).clone()
    dist.all_reduce(total)
    return total.to(tensor.device)


def gathered_fakes(
    module: Any, n: int, batch_size: int, generator: torch.Generator, use_ema: bool = True
) -> Tensor:
    """n generated samples on every rank: this rank draws its share, the ranks swap theirs."""
    local = list(fake_batches(module, rank_share(n), batch_size, generator, use_ema))
    return gather_rows(torch.cat(local))


def real_batches(samples: Tensor, n: int, batch_size: int) -> Iterator[Tensor]:
    """The first n rows of an in-memory sample tensor, in batches (floats in model range)."""
    from gan_runner.data.module import to_model_range

    n = min(n, samples.shape[0])
    for start in range(0, n, batch_size):
        yield to_model_range(samples[start : min(start + batch_size, n)])


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats to uint8 by clamp and round, never by wrap-around like `(x*255).byte()`."""
    return ((images.float() + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)


def count(n: int) -> str:
    """A sample count as it reads in a metric name: 2500, 10k, 50k."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)
