"""Data loading and metric feature extraction throughput, each against the simpler way."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from gan_runner.bench.sources import SyntheticImages
from gan_runner.bench.timing import now
from gan_runner.data.module import GANDataModule, to_model_range
from gan_runner.data.vision import ImageFolder
from gan_runner.metrics.extractors import InceptionFeatures, inception_input


def images_per_s(batches: Callable[[], Iterable[Any]], count: Callable[[Any], int]) -> float:
    """Images per second over one pass of `batches()`, touching each batch's samples."""
    start, n = time.perf_counter(), 0
    for batch in batches():
        n += count(batch)
    return n / (time.perf_counter() - start)


def _first(loader: Iterable[Any], n_batches: int) -> Iterable[Any]:
    for index, batch in enumerate(loader):
        if index == n_batches:
            return
        yield batch


def _model_range(batch: Any) -> int:
    samples = batch["samples"] if isinstance(batch, dict) else batch[0]
    return to_model_range(samples).shape[0]


def in_memory_loaders(batch_size: int, n_batches: int) -> dict[str, Callable[[], Iterable]]:
    """gan-run's index-batched tensors against a per-sample TensorDataset and default collate."""
    source = SyntheticImages(n=max(4096, batch_size * (n_batches + 1)))
    datamodule = GANDataModule(source, batch_size, [3, 32, 32])
    datamodule.setup()
    data = datamodule.data
    per_sample = TensorDataset(data.samples, data.labels)
    return {
        "in-memory, batched by index (gan-run)": lambda: _first(
            datamodule.train_dataloader(), n_batches
        ),
        "in-memory, per-sample Dataset + collate": lambda: _first(
            DataLoader(per_sample, batch_size, shuffle=True, drop_last=True), n_batches
        ),
    }


def write_image_folder(root: Path, n: int, resolution: int = 32) -> Path:
    """n seeded random RGB PNGs (what `data=imagefolder` streams from disk)."""
    root.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0)
    for index in range(n):
        pixels = noise.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{index:05d}.png")
    return root


def folder_loaders(root: Path, batch_size: int, workers: Iterable[int]) -> dict[str, Any]:
    """gan-run's folder-backed DataLoader with each worker count (workers already started)."""
    out = {}
    for count in workers:
        datamodule = GANDataModule(
            ImageFolder(str(root)), batch_size, [3, 32, 32], num_workers=count
        )
        loader = datamodule.train_dataloader()
        for _ in loader:  # start the persistent workers outside the timing
            pass
        out[f"image folder (PNG), {count} workers (gan-run)"] = lambda loader=loader: loader
    return out


def data_rows(workdir: Path, quick: bool, workers: Iterable[int]) -> list[dict[str, Any]]:
    """Images/s of every loading path, the median of three passes."""
    n_batches = 20 if quick else 100
    loaders = [(size, in_memory_loaders(size, n_batches)) for size in (64, 256)]
    folder = write_image_folder(workdir / "images", 128 if quick else 512)
    loaders.append((64, folder_loaders(folder, 64, workers)))
    rows = []
    for batch_size, paths in loaders:
        for name, batches in paths.items():
            rates = sorted(images_per_s(batches, _model_range) for _ in range(3))
            rows.append({"path": name, "batch_size": batch_size, "images_per_s": rates[1]})
    return rows


def inception_weights(path: Path) -> Path:
    """A state dict of the 2015 InceptionV3's shapes, He-initialized (values do not matter)."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    if path.is_file():
        return path
    with (
        mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "load_state_dict"),
        torch.random.fork_rng(devices=[]),
    ):
        torch.manual_seed(0)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def extraction_runs(
    weights: Path, n_images: int, batch_size: int, device: torch.device
) -> dict[str, Callable[[], float]]:
    """Our FID path's extraction against torch-fidelity's extractor called on the same batches."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ours = InceptionFeatures(str(weights))
    ours.prepare(device=device)
    direct = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=weights
    ).to(device)
    noise = torch.Generator().manual_seed(0)
    images = (torch.rand(n_images, 3, 32, 32, generator=noise) * 2 - 1).to(device)
    batches = list(images.split(batch_size))
    quantized = [inception_input(batch) for batch in batches]  # what torch-fidelity takes

    def timed(work: Callable[[], Any]) -> float:
        with torch.no_grad():
            start = now(device)
            work()
            return n_images / (now(device) - start)

    return {
        "ours": lambda: timed(lambda: [ours.extract(b) for b in batches]),
        "torch_fidelity": lambda: timed(lambda: [direct(q) for q in quantized]),
    }
