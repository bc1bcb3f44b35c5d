"""What every evaluation shares: drawing fakes and reals in batches, with its own randomness."""

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
            z = module.latent.sample(size, module.z_dim, generator)
            labels = None
            if module.num_classes:
                labels = torch.randint(
                    module.num_classes, (size,), generator=generator, device=z.device
                )
            with torch.no_grad():
                yield net(z, labels).float()
            done += size
    finally:
        net.train(was_training)


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
