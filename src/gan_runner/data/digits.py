"""scikit-learn's bundled 8×8 handwritten digits: real images with labels, always offline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_runner.data.module import TensorData
from gan_runner.data.two_domain import TwoDomainData


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


def digits_at(resolution: int | None) -> TensorData:
    """The digits as uint8 (N, 1, R, R) images, upscaled antialiased to `resolution` if given."""
    from gan_runner.data.module import resize_images

    data = Digits().load()
    samples = data.samples if resolution is None else resize_images(data.samples, resolution)
    return TensorData(samples, data.labels)


def split_indices(n: int, split: str) -> Tensor:
    """The test split is the classifier metric's held-out 20%; train is the rest, in order."""
    from gan_runner.data.module import held_out_indices

    if split not in ("train", "test"):
        raise ValueError(f"source split must be train or test, got {split!r}")
    test = held_out_indices(n)
    if split == "test":
        return test
    kept = torch.ones(n, dtype=torch.bool)
    kept[test] = False
    return torch.nonzero(kept).flatten()


def sqrt_intensity(images: Tensor) -> Tensor:
    """x -> √x on the [0, 1] intensity scale, for uint8 images: a near-identity restyling."""
    return (images.float().div(255).sqrt() * 255).round().to(torch.uint8)


def inverted(images: Tensor) -> Tensor:
    """x -> 1 - x: bright strokes on dark become dark on bright."""
    return 255 - images


def edge_map(images: Tensor) -> Tensor:
    """Each image's Sobel gradient magnitude, scaled to its own maximum: a digit's outline."""
    x = F.pad(images.float().div(255), (1, 1, 1, 1), mode="replicate")  # no edge at the border
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx = F.conv2d(x, kx)
    gy = F.conv2d(x, kx.transpose(2, 3))
    magnitude = (gx.square() + gy.square()).sqrt()
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return (magnitude / peak * 255).round().to(torch.uint8)


TRANSFORMS = {"sqrt": sqrt_intensity, "invert": inverted}


class DigitsUnpaired:
    """Unpaired translation on the digits: A = digits, B = other digits restyled (x -> √x by
    default), so no training pair leaks; the test split pairs each A with its own restyling."""

    name = "digits_unpaired"

    def __init__(self, transform: str = "sqrt", seed: int = 0) -> None:
        if transform not in TRANSFORMS:
            raise ValueError(
                f"data.source.transform={transform!r} is not one of: {', '.join(TRANSFORMS)}"
            )
        self.transform, self.seed = TRANSFORMS[transform], seed

    def restyle(self, images: Tensor) -> Tensor:
        """Domain A's uint8 images as domain B draws them (the ground truth of A -> B)."""
        return self.transform(images)

    def load(self, resolution: int | None = None, split: str = "train") -> TwoDomainData:
        data = digits_at(resolution)
        chosen = split_indices(len(data), split)
        samples, labels = data.samples[chosen], data.labels[chosen]
        if split == "test":  # paired for evaluation only: b[i] is a[i]'s true translation
            return TwoDomainData(samples, self.restyle(samples), labels, labels, paired=True)
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(self.seed))
        half = len(order) // 2  # disjoint halves: B never holds the restyling of an A image
        a, b = order[:half], order[half:]
        return TwoDomainData(samples[a], self.restyle(samples[b]), labels[a], labels[b])


class DigitsPaired:
    """Paired translation on the digits (pix2pix's edges -> photo, in miniature): A = a digit's
    edge map, B = the digit."""

    name = "digits_paired"

    def load(self, resolution: int | None = None, split: str = "train") -> TwoDomainData:
        data = digits_at(resolution)
        chosen = split_indices(len(data), split)
        digits, labels = data.samples[chosen], data.labels[chosen]
        return TwoDomainData(edge_map(digits), digits, labels, labels, paired=True)
