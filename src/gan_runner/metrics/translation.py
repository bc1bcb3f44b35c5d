"""How well an image-to-image translator G: A -> B does on the data set's held-out test split.

- `cycle_l1_test`: mean |F(G(a)) - a| on the [0, 1] pixel scale, when the run has F: B -> A
  (CycleGAN's cycle consistency, Zhu et al. 2017);
- `paired_l1_test`: mean |G(a) - b| on [0, 1] against each a's true target, when the test
  split is paired (pix2pix's L1; digits_unpaired pairs its test split for this);
- `label_kept_test`: the fraction of G(a) that a digit classifier trained on domain B's
  training images calls a's own class (zoo-games.md §8.3: a cycle-consistent translator can
  still scramble the classes), when the source has labels;
- `domain_b_test`: the fraction of G(a) a classifier of A against B (trained on the training
  images of both) calls B: 0 for the identity map, about 1 when G(a) looks like B.
- `fid_judge_b_test`: FID in the target domain: the Fréchet distance between G(a) and the real
  test B images in the label judge's features (a classifier of B's own classes, like the
  classifier FID of metrics.extractors), when the source has labels.

Both classifiers are the small CNN of metrics.extractors, trained once with a fixed seed on the
training split and cached by the data's bytes and the settings; fakes are quantized to uint8
first, as the reals they are compared with.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gan_runner.data.module import TensorData, to_model_range
from gan_runner.data.two_domain import TwoDomainData
from gan_runner.errors import UserError
from gan_runner.metrics.base import to_uint8
from gan_runner.metrics.extractors import (
    ClassifierSettings,
    SmallClassifier,
    default_cache_dir,
    digest,
    save_atomic,
    tensor_digest,
    train_classifier,
)
from gan_runner.metrics.scores import frechet_distance

log = logging.getLogger(__name__)


class TranslationMetrics:
    """Cycle error, paired L1, label kept and domain score of a translator on the test split
    (Zhu et al. 2017's cycle loss; Isola et al. 2017's L1; classifier judges as §8.3)."""

    translates = True  # scores a translation game's G (latent-sample metrics score the others)

    def __init__(
        self,
        cache_dir: str | None = None,
        eval_batch_size: int = 500,
        primary: str | None = "paired_l1_test",
        **settings: Any,
    ) -> None:
        self.primary = primary  # the headline that picks best.ckpt (None: no best.ckpt)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.settings = ClassifierSettings(**settings)
        self.eval_batch_size = eval_batch_size
        self.test: TwoDomainData | None = None
        self.judges: dict[str, SmallClassifier] = {}  # "label", "domain"
        self.real_b_features: Tensor | None = None  # the domain judge's, of the test B images
        self.accuracy: dict[str, float] = {}  # each judge's held-out accuracy on real images

    def prepare(self, datamodule: Any, device: torch.device | str | None = None) -> None:
        """The test split, and the two judges (from the cache, or trained now)."""
        datamodule.setup()
        train = datamodule.data
        if not isinstance(train, TwoDomainData):
            name = getattr(datamodule.source, "name", type(datamodule.source).__name__)
            raise UserError(
                f"metrics=[translation] scores a translation between two image domains, but "
                f"data={name} has one; use a two-domain data set (data=digits_unpaired)"
            )
        self.test = datamodule.source.load(resolution=datamodule.shape[-1], split="test")
        if self.primary == "paired_l1_test" and not self.test.paired:
            raise UserError(
                f"metrics.translation.primary=paired_l1_test needs a paired test split, but "
                f"{type(datamodule.source).__name__}'s is unpaired; set "
                "metrics.translation.primary=null (no best.ckpt) or cycle_l1_test"
            )
        if train.b_labels is not None and self.test.a_labels is not None:
            self._judge("label", TensorData(train.b, train.b_labels))
        roles = torch.cat([torch.zeros(len(train.a)), torch.ones(len(train.b))]).long()
        self._judge("domain", TensorData(torch.cat([train.a, train.b]), roles))
        for net in self.judges.values():
            net.to(device or "cpu")
        if "label" in self.judges:  # the target domain's test images, judged once
            self.real_b_features = torch.cat(
                [
                    self.features(to_model_range(self.test.b[i : i + self.eval_batch_size]))
                    for i in range(0, len(self.test.b), self.eval_batch_size)
                ]
            )

    def features(self, images: Tensor) -> Tensor:
        """The label judge's penultimate features of images in [-1, 1], quantized as the reals."""
        judge = self.judges["label"]
        quantized = to_model_range(to_uint8(images)).to(next(judge.parameters()).device)
        return judge(quantized)[0].double().cpu()

    def _judge(self, role: str, data: TensorData) -> None:
        key = digest("translation-judge-v1", role, tensor_digest(data.samples, data.labels))
        key = digest(key, asdict(self.settings))
        with torch.random.fork_rng(devices=[]):  # reproducible init, global RNG untouched
            torch.manual_seed(self.settings.seed)
            net = SmallClassifier(
                data.samples.shape[1],
                int(data.labels.max()) + 1,
                self.settings.base,
                self.settings.width,
            )
        path = self.cache_dir / f"translation-{role}-{key[:16]}.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(saved["state_dict"])
            accuracy = float(saved["accuracy"])
        else:
            accuracy = train_classifier(net, data, self.settings)
            log.info("translation %s judge: held-out accuracy %.4f (%s)", role, accuracy, path)
            save_atomic({"state_dict": net.state_dict(), "accuracy": accuracy}, path)
        self.judges[role], self.accuracy[role] = net.eval(), accuracy

    @torch.no_grad()
    def evaluate(
        self, module: Any, datamodule: Any, generator: torch.Generator
    ) -> dict[str, float]:
        if not getattr(module.game, "translates", False):
            raise UserError(
                f"metrics=[translation] scores an image translator, but game "
                f"{type(module.game).__name__} samples from latents; drop translation from metrics"
            )
        if self.test is None:
            self.prepare(datamodule, module.device)
        sums: dict[str, float] = {}
        n, fake_features = len(self.test.a), []
        for a, b, labels, translated, cycled in self._translations(module):
            if self.real_b_features is not None:
                fake_features.append(self.features(translated))
            parts = {
                "cycle_l1_test": None if cycled is None else (cycled - a).abs().mean((1, 2, 3)),
                "paired_l1_test": (translated - b).abs().mean((1, 2, 3))
                if self.test.paired
                else None,
                "label_kept_test": self.judged("label", translated, labels),
                "domain_b_test": self.judged("domain", translated, torch.ones_like(labels)),
            }
            for name, values in parts.items():
                if values is not None:
                    sums[name] = sums.get(name, 0.0) + float(values.float().sum())
        # L1 on the [0, 1] pixel scale: half the [-1, 1] model range's.
        values = {k: v / n / (2 if "l1" in k else 1) for k, v in sums.items()}
        if fake_features:
            fake = torch.cat(fake_features)
            values["fid_judge_b_test"] = frechet_distance(self.real_b_features, fake)
        return dict(sorted(values.items()))

    def _translations(self, module: Any) -> Iterator[tuple[Tensor, ...]]:
        """Test batches: (a, b, a's labels, G(a), F(G(a)) or None), networks in eval mode."""
        forward, backward = module.sampling_generator, getattr(module, "generator_ba", None)
        nets = [net for net in (forward, backward) if net is not None]
        modes = [net.training for net in nets]
        for net in nets:
            net.eval()
        test, device, size = self.test, module.device, self.eval_batch_size
        labels = test.a_labels if test.a_labels is not None else torch.zeros(len(test.a)).long()
        try:
            for start in range(0, len(test.a), size):
                rows = slice(start, start + size)
                a = to_model_range(test.a[rows]).to(device).float()
                b = to_model_range(test.b[rows]).to(device).float()
                translated = forward(a, None).float()
                cycled = None if backward is None else backward(translated, None).float()
                yield a, b, labels[rows].to(device), translated, cycled
        finally:
            for net, mode in zip(nets, modes):
                net.train(mode)

    def judged(self, role: str, images: Tensor, wanted: Tensor) -> Tensor | None:
        """Whether the `role` judge calls each image `wanted` (None without that judge)."""
        judge = self.judges.get(role)
        if judge is None:
            return None
        quantized = to_model_range(to_uint8(images)).to(next(judge.parameters()).device)
        return judge(quantized)[1].argmax(1).to(wanted.device) == wanted

    def provenance(self) -> dict[str, Any]:
        return {
            "protocol": "translation of the test split's A images by G (and back by F)",
            "n_test": 0 if self.test is None else len(self.test.a),
            "paired_test": bool(self.test is not None and self.test.paired),
            "l1_scale": "mean absolute error on [0, 1] pixels",
            "judges": "small CNNs: digit class (domain B's training images), A vs B",
            "judge_accuracy": dict(self.accuracy),
            **asdict(self.settings),
            "torch": torch.__version__,
        }
