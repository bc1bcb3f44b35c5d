"""Feature extractors behind FID/KID/IS/PR: the 2015 InceptionV3, or a classifier of the data set.

Both take images in [-1, 1] and return (features, logits): features for FID/KID/PR/DC, logits for
IS. Every image is first quantized with `to_uint8`, so fakes are scored as the PNGs they would
be saved as, and reals (already uint8) pass through unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_runner.data.module import TensorData, to_model_range
from gan_runner.errors import UserError
from gan_runner.metrics.base import to_uint8

log = logging.getLogger(__name__)

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
)


def default_cache_dir() -> Path:
    return Path(os.environ.get("GAN_RUNNER_CACHE", "~/.cache/gan_runner")).expanduser()


def digest(*parts: Any) -> str:
    """sha256 of JSON-able parts: the cache key of anything derived from them."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def tensor_digest(*tensors: Tensor | None) -> str:
    """sha256 of tensors' dtypes, shapes and bytes (what a weights file or data set holds)."""
    sha = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        sha.update(f"{flat.dtype}{tuple(tensor.shape)}".encode())
        sha.update(np.ascontiguousarray(flat.view(torch.uint8).numpy()).data)
    return sha.hexdigest()


def data_identity(source: Any, data: Any, split: str) -> dict[str, Any]:
    """What a data set is, for cache keys: its bytes when in memory, else its source's settings."""
    identity = {"source": type(source).__qualname__, "split": split, "n": len(data)}
    if isinstance(data, TensorData):
        identity["shape"] = list(data.samples.shape)
        identity["content"] = tensor_digest(data.samples, data.labels)
    else:
        settings = {k: str(v) for k, v in vars(source).items() if k != "download"}
        identity.update(settings=settings, resolution=getattr(data, "resolution", None))
    return identity


class InceptionFeatures:
    """TF InceptionV3 (2015-12-05) pool3 features and logits (Szegedy et al. 2016)."""

    name = "inception"
    num_features = 2048
    antialias = False  # torch-fidelity resizes like TF1 (no antialiasing): papers' FID protocol

    def __init__(self, weights_path: str | None = None) -> None:
        self.weights_path = weights_path
        self.net: nn.Module | None = None
        self._hash: str | None = None

    def prepare(self, datamodule: Any = None, device: torch.device | None = None) -> None:
        if self.net is None:
            self.net = load_inception(self.weights_path)
        if device is not None:
            self.net.to(device)

    @torch.no_grad()
    def extract(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.net is None:
            self.prepare(device=images.device)
        features, logits = self.net(inception_input(images).to(device_of(self.net)))
        return features, logits

    def weights_hash(self) -> str:
        if self._hash is None:
            self.prepare()
            self._hash = tensor_digest(*self.net.state_dict().values())
        return self._hash

    def provenance(self) -> dict[str, Any]:
        return {"weights": self.weights_path or INCEPTION_URL, "antialias": self.antialias}


def inception_input(images: Tensor) -> Tensor:
    """[-1, 1] floats to the uint8 RGB batch torch-fidelity expects; gray becomes 3 channels."""
    images = to_uint8(images)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def load_inception(weights_path: str | None) -> nn.Module:
    """torch-fidelity's InceptionV3 from weights_path, or the torch hub cache (downloaded once)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    fix = (
        f"put {INCEPTION_FILE} in {hub}/ or set metrics.inception.extractor.weights_path=<file> "
        f"(download it from {INCEPTION_URL})"
    )
    try:
        # torch-fidelity prints its download notice to stderr: keep stderr for our one line.
        with contextlib.redirect_stderr(sys.stdout):
            return FeatureExtractorInceptionV3(
                "inception-v3-compat",
                ["2048", "logits_unbiased"],
                feature_extractor_weights_path=weights_path,
            )
    except OSError as error:  # URLError when offline, FileNotFoundError for a wrong path
        detail = (str(error).strip().splitlines() or [""])[0]
        what = f"{weights_path} could not be read" if weights_path else "could not be downloaded"
        raise UserError(
            f"metrics: the Inception weights {what} ({type(error).__name__}: {detail}); {fix}"
        ) from None
    except RuntimeError as error:  # a state dict of other shapes, or a truncated file
        detail = (str(error).strip().splitlines() or [""])[0]
        raise UserError(
            f"metrics: {weights_path or hub / INCEPTION_FILE} is not the InceptionV3 weights "
            f"file ({detail}); {fix}"
        ) from None


def device_of(net: nn.Module) -> torch.device:
    """Where a network's parameters live (the CPU for one without any)."""
    parameter = next(net.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def _block(channels: int, out: int) -> list[nn.Module]:
    # BatchNorm makes a few hundred steps enough; in eval mode it is a fixed affine map.
    return [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]


class SmallClassifier(nn.Module):
    """A three-block CNN whose penultimate layer gives data-specific features (like pool3)."""

    def __init__(self, channels: int, num_classes: int, base: int = 16, width: int = 64) -> None:
        super().__init__()
        # Narrow on purpose: it trains in about a minute on two CPU cores even at 32×32.
        self.body = nn.Sequential(
            *_block(channels, base),
            nn.MaxPool2d(2),
            *_block(base, 2 * base),
            nn.MaxPool2d(2),
            *_block(2 * base, 4 * base),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * base, width),
            nn.ReLU(),
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(images)
        return features, self.head(features)


@dataclass(frozen=True)
class ClassifierSettings:
    """How the feature classifier is trained; part of its cache key."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    base: int = 16  # channels of the first conv block (doubled twice)
    width: int = 64  # feature dimension
    holdout: float = 0.2  # fraction of the labelled samples kept out to measure test accuracy
    seed: int = 0


class ClassifierFeatures:
    """Penultimate features of a classifier trained on the data set's own labels (offline FID)."""

    name = "classifier"
    antialias = None  # images are scored at the data resolution: nothing is resized

    def __init__(self, cache_dir: str | None = None, **settings: Any) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.settings = ClassifierSettings(**settings)
        self.num_features = self.settings.width
        self.net: SmallClassifier | None = None
        self.accuracy: float | None = None
        self.key: str | None = None

    def prepare(self, datamodule: Any, device: torch.device | None = None) -> None:
        """Load the classifier of this data set and settings from the cache, or train it once."""
        if self.net is None:
            datamodule.setup()
            data = _labelled_images(datamodule)
            identity = data_identity(
                datamodule.source, data, getattr(datamodule.source, "split", "train")
            )
            self.key = digest("classifier-v1", identity, asdict(self.settings))
            self.net, self.accuracy = self._load_or_train(data)
        if device is not None:
            self.net.to(device)

    def _load_or_train(self, data: TensorData) -> tuple[SmallClassifier, float]:
        channels, classes = data.samples.shape[1], int(data.labels.max()) + 1
        with torch.random.fork_rng(devices=[]):  # reproducible init, global RNG untouched
            torch.manual_seed(self.settings.seed)
            net = SmallClassifier(channels, classes, self.settings.base, self.settings.width)
        path = self.cache_dir / f"classifier-{self.key[:16]}.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(saved["state_dict"])
            return net.eval(), float(saved["accuracy"])
        accuracy = train_classifier(net, data, self.settings)
        log.info("feature classifier: test accuracy %.4f, cached at %s", accuracy, path)
        state = {"state_dict": net.state_dict(), "accuracy": accuracy}
        save_atomic(state, path)
        return net.eval(), accuracy

    @torch.no_grad()
    def extract(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.net is None:
            raise RuntimeError("ClassifierFeatures.prepare(datamodule) must run before extract")
        # Quantized like the reals, so fakes are not told apart by their sub-uint8 values.
        return self.net(to_model_range(to_uint8(images)).to(device_of(self.net)))

    def predict(self, images: Tensor) -> Tensor:
        """Class of each image: what mode counting on a labelled data set counts."""
        return self.extract(images)[1].argmax(dim=1)

    def weights_hash(self) -> str:
        return tensor_digest(*self.net.state_dict().values())

    def provenance(self) -> dict[str, Any]:
        return {"classifier_accuracy": self.accuracy, **asdict(self.settings)}


def _labelled_images(datamodule: Any) -> TensorData:
    data = datamodule.data
    labelled = isinstance(data, TensorData) and data.labels is not None
    if not labelled or data.samples.dim() != 4:
        name = getattr(datamodule.source, "name", type(datamodule.source).__name__)
        raise UserError(
            f"metrics: the classifier extractor trains on labelled in-memory images, which "
            f"data={name} does not have; use metrics=inception instead"
        )
    if bool((data.labels < 0).any()):  # data.labeled_per_class hides most labels
        raise UserError(
            "metrics: the classifier extractor trains on every label, but data.labeled_per_class "
            "hides most of them (a semi-supervised run); use metrics=[critic_accuracy] or "
            "metrics=inception"
        )
    return data


def train_classifier(
    net: SmallClassifier, data: TensorData, settings: ClassifierSettings
) -> float:
    """Train on a seeded (1 - holdout) share of the labelled samples; return held-out accuracy."""
    noise = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(data), generator=noise).to(data.samples.device)
    n_test = max(1, int(settings.holdout * len(data)))
    test, train = order[:n_test], order[n_test:]
    device = data.samples.device
    # Evaluations run under no_grad (and maybe Lightning's autocast); training needs neither.
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(device.type, enabled=False),
    ):
        _fit(net.to(device), data, train, settings, noise)
    with torch.no_grad():
        hits = [
            net(to_model_range(data.samples[i]))[1].argmax(1) == data.labels[i]
            for i in test.split(1024)
        ]
    return float(torch.cat(hits).float().mean())


def _fit(
    net: SmallClassifier,
    data: TensorData,
    train: Tensor,
    settings: ClassifierSettings,
    noise: torch.Generator,
) -> None:
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    for _ in range(settings.steps):
        pick = torch.randint(len(train), (settings.batch_size,), generator=noise)
        batch = train[pick.to(train.device)]
        logits = net(to_model_range(data.samples[batch]))[1]
        loss = F.cross_entropy(logits, data.labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()


def save_atomic(obj: Any, path: Path) -> None:
    """Write then rename, so a reader (another rank, a crashed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    try:
        torch.save(obj, partial)
        os.replace(partial, path)
    except BaseException:  # a full disk: leave no half-written file behind
        partial.unlink(missing_ok=True)
        raise
