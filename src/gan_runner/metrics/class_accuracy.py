"""Whether a class-conditional generator makes the class it is asked for.

Each class is requested equally often (n/K samples of each of the K classes), and a judge names
the class of every sample: on a 2D mixture the mode nearest to it (the mixture knows its means),
on images the data set's own classifier, the one behind `metrics=[classifier]` (same settings,
same cache file). The fraction judged as requested is AC-GAN's "Inception accuracy" (Odena et
al. 2017, §4.1) on that classifier; an unconditional generator scores chance, 1/K. On images it
also gives each class's FID in that classifier's features (generated samples of class c against
the training images of class c), where both counts reach twice the feature size, and their mean.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gan_runner.data.module import TensorData, to_model_range
from gan_runner.errors import UserError
from gan_runner.metrics.base import count, gather_rows, rank_rows
from gan_runner.metrics.extractors import ClassifierFeatures
from gan_runner.metrics.scores import frechet_distance


def requested_labels(n: int, num_classes: int) -> Tensor:
    """n labels asking each class in turn: 0, 1, ..., K-1, 0, 1, ... (balanced to within one)."""
    return torch.arange(n) % num_classes


def nearest_mode(samples: Tensor, means: Tensor) -> Tensor:
    """Index of the mixture mean nearest to each 2D sample (float64 on the CPU, as the modes)."""
    return torch.cdist(samples.detach().double().cpu(), means.double().cpu()).argmin(dim=1)


@torch.no_grad()
def conditional_fakes(
    module: Any, labels: Tensor, batch_size: int, generator: torch.Generator
) -> Tensor:
    """One sample per requested label from the module's sampling generator, in eval mode."""
    net = module.sampling_generator
    was_training = net.training
    net.eval()
    try:
        parts = []
        for chunk in labels.split(batch_size):
            # z through the game, as training draws it (InfoGAN writes its codes there); the
            # game's own labels give way to the requested ones.
            z, _ = module.game.draw_latent(module, len(chunk), generator)
            parts.append(net(z, chunk.to(z.device)).float())
        return torch.cat(parts)
    finally:
        net.train(was_training)


class ClassAccuracy:
    """Fraction of generated samples judged to be of the class they were generated for (AC-GAN's
    Inception accuracy, Odena et al. 2017 §4.1; the class→mode accuracy on 2D mixtures)."""

    # No `primary`: a generator that draws one perfect sample per class scores 1.0, so this
    # number never picks best.ckpt on its own (as precision and mode counts; metrics.fidelity).

    def __init__(
        self,
        extractor: ClassifierFeatures,
        num_classes: int,
        n_samples: int = 2000,
        batch_size: int = 500,
    ) -> None:
        if num_classes < 1:
            raise ValueError(
                "class_accuracy asks a class-conditional generator for each class, but "
                "the run is unconditional (num_classes=0); train one (model=cgan, acgan or "
                "sngan_projection on a labelled data set) or drop class_accuracy from metrics"
            )
        if n_samples < num_classes or batch_size < 1:
            raise ValueError(
                f"n_samples={n_samples} must be >= num_classes={num_classes} (one sample per "
                f"class at least) and batch_size={batch_size} >= 1"
            )
        self.extractor, self.num_classes = extractor, num_classes
        self.n_samples, self.batch_size = n_samples, batch_size
        self._means: Tensor | None = None  # a 2D mixture's modes, once prepared on one
        self._judge = ""
        self._real_features: dict[int, Tensor] = {}  # class -> its training images' features
        self._skipped: list[int] = []  # classes too small for a per-class FID

    def names(self) -> list[str]:
        names = [f"class_accuracy_{count(self.n_samples)}"]
        if self._real_features:  # images: per-class FID where the counts allow it
            suffix = f"classifier_{count(self.n_samples)}"
            names += [f"fid_class{c}_{suffix}" for c in sorted(self._real_features)]
            names.append(f"fid_classmean_{suffix}")
        return names

    def prepare(self, datamodule: Any, device: torch.device | str | None = None) -> None:
        """The mixture's means, or the data set's classifier (from the cache, or trained now)."""
        datamodule.setup()
        source = datamodule.source
        if len(datamodule.shape) == 1:
            if not hasattr(source, "means"):
                raise UserError(
                    f"metrics=[class_accuracy] judges 2D samples by their nearest mode, but "
                    f"data.source is {type(source).__name__}, which has none; use data=ring8 "
                    "or data=grid25"
                )
            self._means = source.means
            self._judge = f"nearest mode of {type(source).__name__} ({len(source.means)} modes)"
            return
        data = datamodule.data
        if not isinstance(data, TensorData) or data.labels is None:
            raise UserError(
                f"metrics=[class_accuracy] judges images by a classifier trained on the data "
                f"set's labelled images held in memory, which data={getattr(source, 'name', '?')} "
                "has not got; drop class_accuracy from metrics"
            )
        self.extractor.prepare(datamodule, device)
        self._judge = f"classifier of the data set (test accuracy {self.extractor.accuracy:.4f})"
        self._prepare_class_features(data)

    @torch.no_grad()
    def _prepare_class_features(self, data: TensorData) -> None:
        """Each class's real features, kept where it and its share of fakes can carry an FID
        (a covariance of F features needs well over F samples: 2F here)."""
        least = 2 * self.extractor.num_features
        self._real_features, self._skipped = {}, []
        for c in range(self.num_classes):
            images = data.samples[data.labels == c]
            if min(len(images), self.n_samples // self.num_classes) < least:
                self._skipped.append(c)
                continue
            parts = [
                self.extractor.extract(to_model_range(p))[0].double().cpu()
                for p in images.split(500)
            ]
            self._real_features[c] = torch.cat(parts)

    def evaluate(
        self, module: Any, datamodule: Any, generator: torch.Generator
    ) -> dict[str, float]:
        if module.num_classes != self.num_classes:
            raise UserError(
                f"metrics.class_accuracy was set up for num_classes={self.num_classes}, but the "
                f"generator is conditioned on {module.num_classes} classes; evaluate it with "
                f"num_classes={module.num_classes}"
            )
        if not self._judge:
            self.prepare(datamodule, module.device)
        labels = rank_rows(requested_labels(self.n_samples, self.num_classes))
        fakes = conditional_fakes(module, labels, self.batch_size, generator)
        hits = (self._classify(fakes).cpu() == labels).float()
        values = {self.names()[0]: float(gather_rows(hits).mean())}
        if self._real_features:
            values.update(self._class_fids(fakes, labels))
        return values

    @torch.no_grad()
    def _class_fids(self, fakes: Tensor, labels: Tensor) -> dict[str, float]:
        parts = [self.extractor.extract(p)[0].double() for p in fakes.split(self.batch_size)]
        features = gather_rows(torch.cat(parts)).cpu()
        labels = gather_rows(labels.to(features.device)).cpu()
        names = self.names()[1:-1]
        fids = [
            frechet_distance(real, features[labels == c])
            for c, real in sorted(self._real_features.items())
        ]
        values = dict(zip(names, fids))
        values[self.names()[-1]] = sum(fids) / len(fids)  # the mean over the classes scored
        return values

    def _classify(self, samples: Tensor) -> Tensor:
        if self._means is not None:
            return nearest_mode(samples, self._means)
        return torch.cat([self.extractor.predict(part) for part in samples.split(self.batch_size)])

    def provenance(self) -> dict[str, Any]:
        judged = {"judge": self._judge or "not prepared"}
        if self._means is None and self._judge:
            judged["weights_sha256"] = self.extractor.weights_hash()[:16]
            judged.update(self.extractor.provenance())
        if self._real_features or self._skipped:
            least = 2 * self.extractor.num_features
            judged["class_fid"] = (
                "FID in the classifier's features: class c's generated samples against the "
                f"training images of class c; classes skipped (under {least} samples): "
                f"{self._skipped or 'none'}"
            )
        return {
            "protocol": "AC-GAN's accuracy of requested classes (Odena et al. 2017, §4.1)",
            "n_samples": self.n_samples,
            "labels": f"balanced: each of {self.num_classes} classes asked n/K times",
            **judged,
            "torch": torch.__version__,
        }
