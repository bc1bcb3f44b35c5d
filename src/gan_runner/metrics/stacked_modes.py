"""Stacked MNIST's mode count on the stacked digits (Metz et al. 2017; PacGAN, Lin et al. 2018).

A one-channel classifier of the embedded digits, at the data's resolution, names the digit in
each channel of every generated sample; the three digits make one of 1,000 modes. The protocol
reports the modes covered by n = 26,000 samples and KL(mode histogram ‖ uniform) in nats, as
`metrics.fidelity.label_modes` defines it. The classifier is `metrics=[classifier]`'s
(ClassifierFeatures), trained once on `data=digits` at that resolution and cached under the same
key, so a digits run's classifier metric and this one share the file.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gan_runner.data.digits import Digits, digits_at
from gan_runner.data.module import TensorData, to_model_range
from gan_runner.data.stacked_digits import CHANNELS, MODES, StackedDigits, mode_of
from gan_runner.errors import UserError
from gan_runner.metrics.base import count, fake_batches, gather_rows, rank_share
from gan_runner.metrics.extractors import ClassifierFeatures
from gan_runner.metrics.fidelity import label_modes


def mode_coverage(modes: Tensor) -> tuple[int, float]:
    """Modes of the 1,000 hit at least once, and KL(histogram ‖ uniform) in nats."""
    return label_modes(modes, MODES)


def ranking_score(modes: int, kl: float, num_modes: int = MODES) -> float:
    """modes + (1 − KL / ln K) / 2: more modes always win, then the more even histogram.

    The second term lies in [0, 1/2] (KL ≤ ln K), so it only breaks ties in modes, as the 2D
    protocol's score_2500 ranks modes first (metrics.mixture.ranking_score).
    """
    return modes + 0.5 * (1.0 - kl / math.log(num_modes))


class _DigitsAt:
    """The embedded digits at one resolution, as much of a data module as the classifier reads."""

    def __init__(self, resolution: int) -> None:
        self.source, self.data = Digits(), digits_at(resolution)

    def setup(self, stage: str | None = None) -> None:
        pass


class StackedModes:
    """Modes of the 1,000 covered by generated stacked digits, and KL(modes ‖ uniform): Stacked
    MNIST's protocol (Metz et al. 2017; PacGAN, Lin et al. 2018, Table 2)."""

    def __init__(
        self, extractor: ClassifierFeatures, n_samples: int = 26000, batch_size: int = 1000
    ) -> None:
        if n_samples < 1 or batch_size < 1:
            raise ValueError(
                f"n_samples and batch_size must be >= 1, got {n_samples}, {batch_size}"
            )
        self.extractor, self.n_samples, self.batch_size = extractor, n_samples, batch_size
        self.suffix = f"stacked_{count(n_samples)}"
        self._data: dict[str, Any] = {}  # what was prepared on: resolution, the real baseline

    @property
    def primary(self) -> str:
        """The headline that picks best.ckpt: modes first, then the lower KL (ranking_score)."""
        return f"score_{self.suffix}"

    def names(self) -> list[str]:
        return [f"modes_{self.suffix}", f"kl_modes_{self.suffix}", self.primary]

    def prepare(self, datamodule: Any, device: torch.device | str | None = None) -> None:
        """Refuse other data; load or train the digit classifier; score n real samples once."""
        source = getattr(datamodule, "source", None)
        shape = list(getattr(datamodule, "shape", []))
        if not isinstance(source, StackedDigits) or len(shape) != 3 or shape[0] != CHANNELS:
            raise UserError(
                f"metrics=[stacked_modes] counts the 1,000 modes of three stacked digits, but "
                f"data.source is {type(source).__name__} (data.shape {shape}), not "
                "StackedDigits; use data=stacked_digits (experiment=stacked_digits), or drop "
                "stacked_modes from metrics"
            )
        if self._data.get("resolution") == shape[-1]:
            return
        self.extractor.prepare(_DigitsAt(shape[-1]), device)
        datamodule.setup()
        self._data = {"resolution": shape[-1], "data_seed": source.seed}
        self._data.update(self._real_baseline(datamodule.data))

    def _real_baseline(self, data: TensorData) -> dict[str, Any]:
        """The same protocol on the first n real samples: the floor a perfect generator meets,
        and the check that the classifier reads each channel's digit."""
        n = min(self.n_samples, len(data))
        predicted = torch.cat(
            [self.classify(to_model_range(part)) for part in data.samples[:n].split(1000)]
        )
        modes, kl = mode_coverage(predicted)
        right = (predicted.cpu() == data.labels[:n].cpu()).float().mean()
        return {
            "real_n": n,
            "real_modes": modes,
            "real_kl_modes": kl,
            "real_mode_accuracy": float(right),
        }

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """The mode of each (N, 3, R, R) image in [-1, 1]: each channel's digit, stacked."""
        n = images.shape[0]
        channels = images.reshape(n * CHANNELS, 1, *images.shape[2:])
        digits = self.extractor.predict(channels).reshape(n, CHANNELS)
        return mode_of(digits)

    def evaluate(
        self, module: Any, datamodule: Any, generator: torch.Generator
    ) -> dict[str, float]:
        self.prepare(datamodule, module.device)
        share = rank_share(self.n_samples)
        local = [
            self.classify(batch)
            for batch in fake_batches(module, share, self.batch_size, generator)
        ]
        modes = gather_rows(torch.cat(local))  # every rank scores all n samples
        covered, kl = mode_coverage(modes)
        return dict(zip(self.names(), (float(covered), kl, ranking_score(covered, kl))))

    def provenance(self) -> dict[str, Any]:
        prepared = {**self._data}
        if self.extractor.net is not None:
            prepared["classifier_sha256"] = self.extractor.weights_hash()[:16]
            prepared.update(self.extractor.provenance())  # its held-out accuracy and settings
        return {
            "protocol": "Stacked MNIST mode count (Metz et al. 2017; PacGAN, Lin et al. 2018)",
            "n_samples": self.n_samples,
            "num_modes": MODES,
            "judge": "a one-channel classifier of the embedded digits (data=digits) per channel",
            "kl_modes": "KL(mode histogram ‖ uniform over 1,000), nats",
            "score": "modes + (1 − KL/ln 1000)/2: all modes first, then the lower KL",
            **prepared,
            "torch": torch.__version__,
        }
