"""Metrics of a BiGAN/ALI encoder E: x -> z: how well G(E(x)) reconstructs held-out images, and
how much a linear classifier reads from E(x) (Donahue et al. 2017; Dumoulin et al. 2017).

Both score real images never trained on where the data has such a split: the data module's
held-out split, else the source's own test split, else the 20% `held_out_indices` split of an
in-memory set without one (digits), which the GAN saw unlabelled but the linear probe did not.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from gan_runner.data.module import (
    TEST_FRACTION,
    TEST_SEED,
    UNLABELED,
    TensorData,
    held_out_indices,
    to_model_range,
)
from gan_runner.errors import UserError
from gan_runner.games.bigan import reconstruction_ratio
from gan_runner.metrics.extractors import device_of


def check_encoder(module: Any, metric: str) -> None:
    """Refuse a run without an encoder network, in one line naming the fix."""
    if getattr(module, "encoder", None) is None:
        game = type(getattr(module, "game", None)).__name__
        raise UserError(
            f"metrics.{metric} scores an encoder E: x -> z, which this run ({game}) has not got; "
            f"train with model=bigan, model=ali or model=aae, or drop {metric} from metrics"
        )


def held_out_split(datamodule: Any, metric: str) -> tuple[TensorData, TensorData, str]:
    """(training images, held-out images, where the held-out ones come from), in memory."""
    datamodule.setup()
    data, source = datamodule.data, datamodule.source
    name = getattr(source, "name", "") or type(source).__name__
    if not isinstance(data, TensorData):
        raise UserError(
            f"metrics.{metric} scores one domain's images held in memory, which data={name} "
            "does not give; use a one-domain in-memory data set (data=digits, mnist, ...)"
        )
    held = getattr(datamodule, "held_out", None)
    if held is not None:  # a semi-supervised cut: the probe learns from the labelled subset
        split = f"held-out {round(100 * TEST_FRACTION)}% (seed {TEST_SEED}), never trained on"
        return datamodule.labeled, held, split
    if "test" in getattr(source, "splits", ()) and getattr(source, "split", "") != "test":
        from gan_runner.metrics.fidelity import reference_data

        test = reference_data(datamodule, "test")
        if isinstance(test, TensorData):
            return data, test, "the source's test split, never trained on"
    chosen = held_out_indices(len(data)).to(data.samples.device)
    kept = torch.ones(len(data), dtype=torch.bool, device=data.samples.device)
    kept[chosen] = False
    labels = data.labels
    train = TensorData(data.samples[kept], None if labels is None else labels[kept])
    test = TensorData(data.samples[chosen], None if labels is None else labels[chosen])
    percent = round(100 * TEST_FRACTION)
    return train, test, f"held_out_indices {percent}% (seed {TEST_SEED}); the GAN trained on it"


@torch.no_grad()
def encode(encoder: nn.Module, samples: Tensor, batch_size: int) -> Tensor:
    """E(x) in eval mode (ALI's stochastic encoder: its mean), as float32 on the CPU."""
    was_training = encoder.training
    encoder.eval()
    try:
        device = device_of(encoder)
        parts = [
            encoder(to_model_range(part.to(device))).float().cpu()
            for part in samples.split(batch_size)
        ]
    finally:
        encoder.train(was_training)
    return torch.cat(parts).flatten(1)


class Reconstruction:
    """BiGAN's reconstruction ratio EGr/EGr_b (Donahue et al. 2017, the official code's metric)
    and the per-pixel mean squared error of G(E(x)) on held-out real images."""

    primary = "reconstruction_ratio"  # picks best.ckpt: lower is better

    def __init__(self, n_samples: int = 1000, seed: int = 0) -> None:
        if n_samples < 2:
            raise ValueError(f"n_samples must be >= 2 (a permutation needs two), got {n_samples}")
        self.n_samples, self.seed = n_samples, seed
        self.test: TensorData | None = None
        self.split = ""

    def names(self) -> list[str]:
        # No sample count in the names: the held-out split may hold fewer than n_samples.
        return ["reconstruction_ratio", "reconstruction_mse"]

    def prepare(self, datamodule: Any, device: torch.device | str | None = None) -> None:
        """Load the held-out images now, and refuse a run without an encoder before training."""
        trainer = getattr(datamodule, "trainer", None)
        if trainer is not None and trainer.lightning_module is not None:
            check_encoder(trainer.lightning_module, "reconstruction")
        if self.test is None:
            _, test, self.split = held_out_split(datamodule, "reconstruction")
            self.test = TensorData(test.samples[: self.n_samples])

    @torch.no_grad()
    def evaluate(
        self, module: Any, datamodule: Any, generator: torch.Generator
    ) -> dict[str, float]:
        check_encoder(module, "reconstruction")
        self.prepare(datamodule)
        x = to_model_range(self.test.samples.to(device_of(module.encoder))).float()
        # The generator scored (EMA or live) with the live encoder, as samples are drawn.
        pair = SimpleNamespace(encoder=module.encoder, generator=module.sampling_generator)
        ratio = reconstruction_ratio(pair, x, self.seed)
        reconstructed = module.sample(encode(module.encoder, x, len(x)).to(x.device))
        mse = (reconstructed - x).pow(2).mean()  # per pixel, on the [-1, 1] scale
        ratio_name, mse_name = self.names()
        return {ratio_name: ratio, mse_name: float(mse)}

    def provenance(self) -> dict[str, Any]:
        return {
            "protocol": "EGr/EGr_b of jeffdonahue/bigan: mean ||G(E(x)) - x|| over the same "
            "against a seeded permutation of x (1: G(E(x)) knows nothing of x); MSE per pixel "
            "in [-1, 1]",
            "split": self.split,
            "n": len(self.test) if self.test is not None else None,
            "networks": "eval mode; ALI's stochastic encoder gives its mean",
            "seed": self.seed,
        }


class LinearProbe:
    """Held-out accuracy of a logistic regression on encoder features E(x) (BiGAN's feature
    evaluation, Donahue et al. 2017), beside the same probe on a random encoder's."""

    primary = "probe_accuracy"  # picks best.ckpt when first in metrics: higher is better

    def __init__(
        self, max_train: int = 10000, batch_size: int = 500, max_iter: int = 1000, seed: int = 0
    ) -> None:
        if max_train < 2 or batch_size < 1 or max_iter < 1:
            raise ValueError(
                f"max_train={max_train} must be >= 2, batch_size={batch_size} and "
                f"max_iter={max_iter} >= 1"
            )
        self.max_train, self.batch_size = max_train, batch_size
        self.max_iter, self.seed = max_iter, seed
        self.train: TensorData | None = None
        self.test: TensorData | None = None
        self.split = ""
        self._random: float | None = None  # the untrained encoder's score, fixed by the seed

    def names(self) -> list[str]:
        return ["probe_accuracy", "probe_accuracy_random"]

    def prepare(self, datamodule: Any, device: torch.device | str | None = None) -> None:
        """Load the labelled splits now; refuse a run without an encoder or labels."""
        trainer = getattr(datamodule, "trainer", None)
        if trainer is not None and trainer.lightning_module is not None:
            check_encoder(trainer.lightning_module, "linear_probe")
        if self.test is not None:
            return
        train, test, self.split = held_out_split(datamodule, "linear_probe")
        if train.labels is None or test.labels is None:
            name = getattr(datamodule.source, "name", "") or type(datamodule.source).__name__
            raise UserError(
                f"metrics.linear_probe fits the data set's class labels, which data={name} has "
                "not got; drop linear_probe from metrics (metrics=[reconstruction] needs none)"
            )
        known = train.labels != UNLABELED
        samples, labels = train.samples[known], train.labels[known]
        self.train = TensorData(samples[: self.max_train], labels[: self.max_train])
        self.test = test

    def evaluate(
        self, module: Any, datamodule: Any, generator: torch.Generator
    ) -> dict[str, float]:
        check_encoder(module, "linear_probe")
        self.prepare(datamodule)
        if self._random is None:
            self._random = self._score(random_encoder(module.encoder, self.seed))
        trained = self._score(module.encoder)
        return {"probe_accuracy": trained, "probe_accuracy_random": self._random}

    def _score(self, encoder: nn.Module) -> float:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from threadpoolctl import threadpool_limits

        train, test = (
            encode(encoder, d.samples, self.batch_size).numpy() for d in (self.train, self.test)
        )
        # Standardized: a random encoder's feature scales differ, and lbfgs converges on them.
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=self.max_iter))
        # One BLAS thread: on digits' 1,438 x 64 pixels, 0.12 s against 7 s with OpenBLAS's two
        # threads on a shared 2-core box (its threads spin for the small matrices of lbfgs).
        with threadpool_limits(limits=1):
            probe.fit(train, self.train.labels.cpu().numpy())
            return float(probe.score(test, self.test.labels.cpu().numpy()))

    def provenance(self) -> dict[str, Any]:
        return {
            "protocol": "standardized E(x) (eval mode; ALI: the mean) -> scikit-learn "
            f"LogisticRegression(lbfgs, max_iter={self.max_iter}), accuracy on held-out images; "
            f"_random: the same encoder re-initialized with seed {self.seed}",
            "split": self.split,
            "n_train": len(self.train) if self.train is not None else None,
            "n_test": len(self.test) if self.test is not None else None,
        }


def random_encoder(encoder: nn.Module, seed: int) -> nn.Module:
    """A copy of `encoder` re-initialized from `seed`, leaving every global random stream as it
    was (the metric must not move training's draws)."""
    device = device_of(encoder)
    fresh = copy.deepcopy(encoder).cpu()  # drawn on the CPU: the same weights on any device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in fresh.modules():
            if hasattr(layer, "reset_parameters") and layer is not fresh:
                layer.reset_parameters()
    return fresh.to(device)
