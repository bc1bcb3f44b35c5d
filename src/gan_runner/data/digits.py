"""scikit-learn's bundled 8×8 handwritten digits: real images with labels, always offline."""

from __future__ import annotations

import torch

from gan_runner.data.module import TensorData


class Digits:
    """The 1,797 UCI optical-recognition digits (Alpaydin & Kaynak 1998), in scikit-learn."""

    def load(self, resolution: int | None = None) -> TensorData:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        # Pixel values are 0..16; scale to 0..255 uint8 so the images follow the image convention.
        images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
        samples = images.round().clamp(0, 255).to(torch.uint8)
        labels = torch.as_tensor(bunch.target, dtype=torch.int64)
        return TensorData(samples, labels)
