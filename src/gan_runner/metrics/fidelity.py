"""FID, KID, IS, precision/recall and density/coverage of a generator on one feature extractor.

Each image is passed through the extractor once and every score reads its features (see
`scores`), so one forward serves FID, KID, IS, PR and DC.

Real statistics are computed once per reference (data, split, resolution, extractor weights,
sample count) and cached on disk; rank 0 writes the file. Under DDP each rank generates and
extracts its share of the n_fake samples; the fake-side FID sums are added over ranks and the
feature rows gathered, so every rank scores all n_fake fakes and gets the same values. The
metrics themselves never sync (`sync_on_compute=False`): real sums held by every rank would
otherwise be added W times.
"""

from __future__ import annotations

import copy
import importlib.metadata
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchmetrics.image.fid import FrechetInceptionDistance

from gan_runner.data.module import TensorData, resize_images, to_model_range
from gan_runner.errors import UserError
from gan_runner.metrics.base import count, fake_batches, gather_rows, rank_share, real_batches
from gan_runner.metrics.extractors import data_identity, default_cache_dir, digest, save_atomic
from gan_runner.metrics.scores import (
    add_fakes_over_ranks,
    density_coverage,
    fid_metric,
    inception_score,
    kernel_distance,
    precision_recall,
)

METRICS = ("fid", "kid", "is", "pr", "dc", "modes")


def reference_data(datamodule: Any, split: str) -> Any:
    """The real samples to compare against: the training data, or the source's other split."""
    datamodule.setup()
    source = datamodule.source
    if split == getattr(source, "split", "train"):
        return datamodule.data
    splits = getattr(source, "splits", ()) if hasattr(source, "split") else ()
    if split not in splits:
        name = getattr(source, "name", type(source).__name__)
        have = ", ".join(splits) or "train (it has no other split)"
        raise UserError(
            f"metrics: data={name} has no {split!r} split to compare against; "
            f"set the metric's split to one of: {have}"
        )
    other = copy.copy(source)
    other.split = split
    data = other.load(resolution=datamodule.shape[-1])
    if isinstance(data, TensorData):
        data = TensorData(resize_images(data.samples, datamodule.shape[-1]), data.labels)
    return data


def real_image_batches(
    data: Any, n: int, batch_size: int, num_workers: int = 0
) -> Iterator[Tensor]:
    """The first n real images in model range, from memory or from a Dataset of files."""
    if isinstance(data, TensorData):
        yield from real_batches(data.samples, n, batch_size)
        return
    loader = DataLoader(Subset(data, range(n)), batch_size=batch_size, num_workers=num_workers)
    for batch in loader:
        yield to_model_range(batch["samples"] if isinstance(batch, dict) else batch[0])


class FidelityEvaluation:
    """FID/KID/IS/PR/DC (Heusel 17, Bińkowski 18, Salimans 16, Kynkäänniemi 19, Naeem 20)."""

    def __init__(
        self,
        extractor: Any,
        metrics: Sequence[str] = ("fid",),
        n_fake: int = 10000,
        n_real: int | None = None,
        split: str = "train",
        batch_size: int = 250,
        cache_dir: str | None = None,
        seed: int = 0,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        is_splits: int = 10,
        pr_k: int = 3,
        dc_k: int = 5,
        show_progress: bool = True,
        reference_stats: str | None = None,
    ) -> None:
        unknown = sorted(set(metrics) - set(METRICS))
        if unknown:
            raise ValueError(f"metrics {unknown} are not among: {', '.join(METRICS)}")
        headless = sorted({"is", "modes"} & set(metrics))
        if headless and not getattr(extractor, "has_logits", True):
            raise UserError(
                f"metrics: {' and '.join(headless)} need{'' if len(headless) > 1 else 's'} "
                "class logits, which the "
                f"{type(extractor).__name__} extractor has not (pool features only); drop "
                f"{' and '.join(headless)} from the metric's list"
            )
        if n_fake < 2 or (n_real is not None and n_real < 2):
            raise ValueError(f"n_fake={n_fake} and n_real={n_real} must be >= 2 (or n_real null)")
        self.extractor, self.metrics = extractor, list(metrics)
        self.n_fake, self.n_real, self.split, self.batch_size = n_fake, n_real, split, batch_size
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.seed, self.kid_subsets, self.kid_subset_size = seed, kid_subsets, kid_subset_size
        self.is_splits, self.pr_k, self.dc_k = is_splits, pr_k, dc_k
        self.show_progress = show_progress
        self.reference_stats = Path(reference_stats).expanduser() if reference_stats else None
        # KID, PR and DC need every real feature vector; FID alone needs only its sums.
        self.keep_features = bool({"kid", "pr", "dc"} & set(self.metrics))
        self.device = torch.device("cpu")
        self._prepared_for: Any = None
        self._real: dict[str, Any] | None = None
        self._reference_note = ""

    # ----------------------------------------------------------------- reference
    def prepare(self, datamodule: Any, device: torch.device | str | None = None) -> None:
        """Ready the extractor and the real statistics (from the cache when there): call early."""
        if len(datamodule.shape) != 3:
            raise UserError(
                f"metrics: FID/KID/IS/PR/DC needs image data, but data.shape is "
                f"{datamodule.shape}; use an image data set, or metrics=[mixture] for 2D points"
            )
        self.device = torch.device(device or "cpu")
        self.extractor.prepare(datamodule, self.device)
        if self._prepared_for is datamodule:
            return
        data = reference_data(datamodule, self.split)
        n_real = min(self.n_real or len(data), len(data))
        identity = data_identity(datamodule.source, data, self.split)
        weights = self.extractor.weights_hash()
        key = digest("real-v2", identity, self.extractor.name, weights, n_real, self.keep_features)
        # What a statistics file must match to stand in for the reals (and says it holds).
        about = {"extractor": self.extractor.name, "weights_sha256": weights, "n": n_real}
        about |= {"split": self.split, "source": identity["source"]}
        path = self.reference_stats or self.cache_dir / f"real-{self.extractor.name}-{key[:16]}.pt"
        if path.is_file():
            self._real = load_statistics(path, about, self.keep_features)
        elif self.reference_stats is not None:
            raise UserError(
                f"metrics: reference_stats={path} does not exist; give a real-*.pt file from a "
                "cache of statistics, or null to compute (and cache) them here"
            )
        else:
            workers = getattr(datamodule, "num_workers", 0)
            batches = real_image_batches(data, n_real, self.batch_size, workers)
            self._real = {**self._real_statistics(batches, n_real), "about": about}
            if _rank() == 0:
                save_atomic(self._real, path)
        self._prepared_for = datamodule
        self._reference_note = "" if hasattr(datamodule.source, "split") else "no splits: all"

    def _real_statistics(self, batches: Iterator[Tensor], n: int) -> dict[str, Any]:
        fid = fid_metric(self.extractor.num_features).to(self.device)
        kept = []
        for batch in self._progress(batches, n, "reals"):
            features, _ = self._extract(batch)
            fid.update(features.double(), real=True)
            if self.keep_features:
                kept.append(features.cpu())
        return {
            "sum": fid.real_features_sum.cpu(),
            "cov_sum": fid.real_features_cov_sum.cpu(),
            "n": int(fid.real_features_num_samples),
            "features": torch.cat(kept) if kept else torch.empty(0),
        }

    # ----------------------------------------------------------------- scoring
    def evaluate(
        self, module: Any, datamodule: Any, generator: torch.Generator
    ) -> dict[str, float]:
        """Metric name (with its protocol) -> value, for n_fake samples of module's generator."""
        self.prepare(datamodule, module.device)
        share = rank_share(self.n_fake)
        return self.score(fake_batches(module, share, self.batch_size, generator))

    def score(self, fakes: Iterable[Tensor]) -> dict[str, float]:
        """Score batches of images in [-1, 1] against the prepared reference.

        Under DDP, `fakes` is this rank's share (`rank_share(n_fake)`) and every rank must call
        this; each gets the scores of all n_fake fakes.
        """
        if self._real is None:
            raise RuntimeError("FidelityEvaluation.prepare(datamodule) must run before score")
        fid = self._fid_with_reals() if "fid" in self.metrics else None
        features, logits, seen, share = [], [], 0, rank_share(self.n_fake)
        for batch in self._progress(fakes, share, "fakes"):
            batch_features, batch_logits = self._extract(batch)
            seen += batch.shape[0]
            if fid is not None:
                fid.update(batch_features.double(), real=False)
            if self.keep_features:
                features.append(batch_features.cpu())  # on the CPU: 50k × 2048 is 400 MB
            if "is" in self.metrics or "modes" in self.metrics:
                logits.append(batch_logits.cpu())
        if seen != share:  # the names promise n_fake samples over all ranks
            raise ValueError(
                f"scored {seen} samples, but n_fake={self.n_fake} (this rank: {share})"
            )
        names, values = self._names(), {}
        if fid is not None:
            add_fakes_over_ranks(fid)
            values[names["fid"]] = float(fid.compute())
        if logits:
            logits = gather_rows(torch.cat(logits))
        if "is" in self.metrics:
            values[names["is"]] = inception_score(logits, self.is_splits, self.seed)
        if "modes" in self.metrics:
            modes, kl = class_modes(logits)
            values.update({names["modes"]: modes, names["rkl"]: kl})
        if self.keep_features:
            values.update(self._feature_metrics(gather_rows(torch.cat(features))))
        return values

    def _feature_metrics(self, fake: Tensor) -> dict[str, float]:
        real, names, values = self._real["features"], self._names(), {}
        if "kid" in self.metrics:
            kid = kernel_distance(real, fake, self.kid_subsets, self.kid_subset_size, self.seed)
            values[names["kid"]] = kid
        if "pr" in self.metrics:
            precision, recall = precision_recall(real, fake, self.pr_k, device=self.device)
            values.update({names["precision"]: precision, names["recall"]: recall})
        if "dc" in self.metrics:
            density, coverage = density_coverage(real, fake, self.dc_k, device=self.device)
            values.update({names["density"]: density, names["coverage"]: coverage})
        return values

    def _fid_with_reals(self) -> FrechetInceptionDistance:
        fid = fid_metric(self.extractor.num_features).to(self.device)
        fid.real_features_sum = self._real["sum"].to(self.device)
        fid.real_features_cov_sum = self._real["cov_sum"].to(self.device)
        fid.real_features_num_samples = torch.tensor(self._real["n"], device=self.device)
        return fid

    def _extract(self, images: Tensor) -> tuple[Tensor, Tensor]:
        # Features in fp32 even inside Lightning's mixed-precision autocast.
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            features, logits = self.extractor.extract(images.to(self.device))
        return features.float(), logits.float()

    def _progress(self, batches: Iterable[Tensor], n: int, what: str) -> Iterable[Tensor]:
        if not self.show_progress:
            return batches
        from rich.progress import track

        total = math.ceil(n / self.batch_size)
        return track(
            batches, total=total, description=f"{self.extractor.name} {what}", transient=True
        )

    # ----------------------------------------------------------------- naming
    def _names(self) -> dict[str, str]:
        protocol = f"{self.extractor.name}_{count(self.n_fake)}"
        # IS and mode counts have no reference set.
        names = {"is": f"is_{protocol}", "modes": f"modes_{protocol}", "rkl": f"rkl_{protocol}"}
        for metric in ("fid", "kid", "precision", "recall", "density", "coverage"):
            names[metric] = f"{metric}_{protocol}_{self.split}"
        return names

    def names(self) -> list[str]:
        """The logged names, which state the protocol: fid_inception_10k_test, is_classifier_2k."""
        names, parts = (
            self._names(),
            {
                "pr": ("precision", "recall"),
                "dc": ("density", "coverage"),
                "modes": ("modes", "rkl"),
            },
        )
        return [names[part] for metric in self.metrics for part in parts.get(metric, (metric,))]

    @property
    def primary(self) -> str:
        """The number that picks the best checkpoint when no best_metric is named.

        FID (Heusel et al. 2017), else KID (Bińkowski et al. 2018), else coverage (Naeem et al.
        2020), else IS (Salimans et al. 2016), in whatever order `metrics` lists them. Alone,
        precision and density reward collapse onto typical images, recall rewards outliers and
        the class-mode count ties from the first checkpoint that reaches every class, so they
        need a named best_metric.
        """
        names = self._names()
        for metric, name in (("fid", "fid"), ("kid", "kid"), ("dc", "coverage"), ("is", "is")):
            if metric in self.metrics:
                return names[name]
        raise UserError(
            f"metrics [{', '.join(self.metrics)}] have no headline that ranks generators "
            "(precision, density and mode counts reward collapse, recall rewards outliers); "
            "add fid, kid, dc or is, or set callbacks.metrics.best_metric to one of: "
            f"{', '.join(self.names())}"
        )

    def provenance(self) -> dict[str, Any]:
        """How the numbers were made: extractor, weights hash, sample counts, split, versions."""
        if self._real is None:
            return {"extractor": self.extractor.name, "split": self.split, "n_fake": self.n_fake}
        n_real = self._real["n"]
        note = f" ({self._reference_note} samples)" if self._reference_note else ""
        return {
            "extractor": self.extractor.name,
            "weights_sha256": self.extractor.weights_hash()[:16],
            **self.extractor.provenance(),
            "n_fake": self.n_fake,
            "n_real": n_real,
            "split": self.split + note,
            "kid_subsets": self.kid_subsets,
            "kid_subset_size": min(self.kid_subset_size, self.n_fake, n_real),
            "is_splits": self.is_splits,
            "pr_k": self.pr_k,
            "dc_k": self.dc_k,
            "seed": self.seed,
            **{name: _version(name) for name in ("torch", "torchmetrics", "torch-fidelity")},
        }


def load_statistics(path: Path, about: dict[str, Any], need_features: bool) -> dict[str, Any]:
    """A cached reference; refused in one line when of another extractor, weights or count."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated, not a torch file, pickled objects
        detail = (str(error).strip().splitlines() or [""])[0][:100]
        raise UserError(
            f"metrics: {path} is not a statistics file gan_runner wrote ({detail}); delete it "
            "to compute the statistics again"
        ) from None
    held = saved.get("about") if isinstance(saved, dict) else None
    if not isinstance(held, dict):
        raise UserError(
            f"metrics: {path} does not say which extractor and samples it holds (written by an "
            "older gan_runner or another tool); delete it to compute the statistics again"
        )
    differ = [key for key in about if held.get(key) != about[key]]
    if differ:
        said = ", ".join(
            f"{key} {_short(held.get(key))} (here {_short(about[key])})" for key in differ
        )
        raise UserError(
            f"metrics: {path} holds statistics of another reference: {said}; compare only like "
            "with like: point reference_stats at statistics of this extractor, split and count, "
            "or null to compute them"
        )
    if need_features and not saved["features"].numel():
        raise UserError(
            f"metrics: {path} holds FID sums only, but KID/PR/DC need every real feature row; "
            "set reference_stats=null to compute them, or keep only fid in the metric's list"
        )
    return saved


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) == 64 else text  # sha256s


def class_modes(logits: Tensor) -> tuple[float, float]:
    """Classes the fakes are classified into, and KL(class histogram ‖ uniform) in nats.

    Mode counting with a classifier of the data set's labels, as in the Stacked-MNIST protocol
    (Metz et al. 2017; Lin et al. 2018): a collapsed generator covers few classes, unevenly.
    """
    covered, kl = label_modes(logits.argmax(dim=1), logits.shape[1])
    return float(covered), kl


def label_modes(labels: Tensor, num_classes: int) -> tuple[int, float]:
    """Classes hit at least once by integer labels, and KL(histogram ‖ uniform) in nats."""
    histogram = torch.bincount(labels.flatten().cpu(), minlength=num_classes).double()
    p = histogram / histogram.sum()
    covered = p > 0
    kl = (p[covered] * (p[covered] * num_classes).log()).sum()  # Σ p log(p / (1/K))
    return int(covered.sum()), float(kl)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
