"""gan-eval: FID/KID/IS/PR/DC of a checkpoint's generator, or of one image folder against another.

A checkpoint carries its resolved run config, so its model and its data set (the reference) are
rebuilt from it alone; checkpoints of 2D points get the mixture protocol. Each result is written
as JSON and as a Markdown table, with the provenance that says which numbers compare.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from gan_runner import checkpoints
from gan_runner.callbacks.metrics import LiveView, library_versions
from gan_runner.data.module import GANDataModule, to_model_range
from gan_runner.data.readers import IMAGE_SUFFIXES, ImageFiles, list_images
from gan_runner.errors import UserError
from gan_runner.metrics.base import count
from gan_runner.metrics.density1d import Density1D
from gan_runner.metrics.extractors import ClassifierFeatures, InceptionFeatures, digest
from gan_runner.metrics.fidelity import METRICS, FidelityEvaluation
from gan_runner.metrics.mixture_eval import MixtureEvaluation
from gan_runner.metrics.torchscript import TorchScriptFeatures
from gan_runner.module import CHECKPOINT_KEY, Counters
from gan_runner.train import build

EXTRACTORS = {
    "InceptionFeatures": "inception",
    "TorchScriptFeatures": "inception_torchscript",
    "ClassifierFeatures": "classifier",
}
FOLDER_SPLIT = "folder"  # a folder comparison's reference "split", named in every metric
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
GAN_RUN_KEYS = {
    "metrics.inception.extractor.weights_path": "weights_path",
    "use metrics=inception": "use extractor=inception",
    "set the metric's split": "set split",
}


def evaluate(cfg: DictConfig) -> list[Path]:
    """Run gan-eval from a composed conf/eval.yaml; returns the report files written."""
    check_request(cfg)
    try:
        return compare_folders(cfg) if cfg.folders is not None else evaluate_checkpoint(cfg)
    except UserError as error:  # the metrics' messages name gan-run's keys: say gan-eval's
        message = str(error)
        for theirs, ours in GAN_RUN_KEYS.items():
            message = message.replace(theirs, ours)
        raise UserError(message) from None


def metric_list(cfg: DictConfig) -> list[str]:
    metrics = cfg.scores
    return [str(m) for m in metrics] if isinstance(metrics, ListConfig) else [str(metrics)]


def check_request(cfg: DictConfig) -> None:
    """One line for what can be told before anything is loaded."""
    pair = "folders=[<real images>,<generated images>]"
    if (cfg.ckpt is None) == (cfg.folders is None):
        given = "both ckpt and folders are" if cfg.ckpt else "neither ckpt nor folders is"
        raise UserError(f"{given} set; pass ckpt=<run folder>/checkpoints/last.ckpt, or {pair}")
    folders = cfg.folders
    if folders is not None and (not isinstance(folders, ListConfig) or len(folders) != 2):
        raise UserError(f"folders={folders} must list two image folders: {pair}")
    names = metric_list(cfg)
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        what = f"unknown metric {', '.join(unknown)}" if unknown else "no metric"
        raise UserError(f"{what} in scores=[{','.join(names)}]; choose from: {', '.join(METRICS)}")
    for key, low in {"n_samples": 2, "batch_size": 1, "seed": 0, "num_workers": 0}.items():
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"{key}={value!r} is invalid: it must be an integer >= {low}")


# ----------------------------------------------------------------- a checkpoint
def evaluate_checkpoint(cfg: DictConfig) -> list[Path]:
    device = checkpoints.resolve_device(cfg.device)
    module, run = checkpoints.rebuild(
        cfg.ckpt, cfg.use_ema, device, trusted_targets=list(cfg.trusted_targets)
    )
    counters = Counters(**checkpoints.load_checkpoint(cfg.ckpt)[CHECKPOINT_KEY]["counters"])
    generator = module.sampling_generator
    if getattr(generator, "growing", False):
        raise UserError(
            f"ckpt={cfg.ckpt} holds a generator still growing ({generator.stage_name}): its "
            "samples are not at the data's resolution; evaluate a checkpoint written after it "
            "reached it (train longer, or lower game.stable_kimg and game.fade_kimg)"
        )
    datamodule = checkpoint_data(cfg, run)
    evaluation, protocol, note = checkpoint_evaluation(cfg, run, datamodule)
    try:
        prepare(evaluation, datamodule, device)
    except UserError as error:
        raise UserError(unready_extractor(cfg, run, evaluation, str(error))) from None
    header = {"checkpoint": str(Path(cfg.ckpt).resolve())}
    header |= {"g_steps": counters.g_steps, "kimg": counters.images_seen / 1000}
    header |= {"note": note} if note else {}
    extra = {"n_samples": cfg.n_samples, "checkpoint_sha256": file_sha256(Path(cfg.ckpt))}
    written = []
    for i, (generator, view) in enumerate(generator_views(cfg, module)):
        noise = torch.Generator(device=device).manual_seed(cfg.seed)
        with torch.no_grad():
            values = evaluation.evaluate(view, datamodule, noise)
        report = {**header, "generator": generator, "metrics": values}
        report["provenance"] = provenance(evaluation, cfg, device, extra)
        written += write_report(report, report_base(cfg, protocol, generator, i == 0), generator)
    return written


def prepare(evaluation: Any, datamodule: Any, device: torch.device) -> None:
    """evaluation.prepare, with torch-fidelity's download notice and progress bar on stdout.

    torch-fidelity prints them to stderr, which is for the one line that says what went wrong:
    offline, the notice would come before it.
    """
    if isinstance(getattr(evaluation, "extractor", None), InceptionFeatures):
        with contextlib.redirect_stderr(sys.stdout):
            evaluation.prepare(datamodule, device)
    else:
        evaluation.prepare(datamodule, device)


def unready_extractor(cfg: DictConfig, run: DictConfig, evaluation: Any, message: str) -> str:
    """The message of an extractor that could not be set up, with what else a checkpoint takes.

    A run that evaluated nothing (metrics=[]) leaves gan-eval Inception, a download; a labelled
    data set can be scored offline by the classifier instead.
    """
    chosen = cfg.extractor is None and run_extractor(run) is None
    inception = isinstance(getattr(evaluation, "extractor", None), InceptionFeatures)
    if not (chosen and inception and "Inception weights" in message):
        return message
    labelled = (run.get("data") or {}).get("num_classes") or 0
    offline = (
        "; or pass extractor=classifier (a small CNN trained offline on the run's labelled "
        "data set)"
        if labelled
        else ""
    )
    ran = (
        "evaluated nothing while training (metrics=[])"
        if not run_metrics(run)
        else "was evaluated without image features while training"
    )
    return (
        f"ckpt={cfg.ckpt} {ran}, so gan-eval scores it with extractor=inception, but "
        f"{message.removeprefix('metrics: ')}{offline}"
    )


def checkpoint_data(cfg: DictConfig, run: DictConfig) -> Any:
    """The run's data module, from its stored config with the set keys of `data` merged in."""
    node = OmegaConf.merge(run.data, _set_values(OmegaConf.to_container(cfg.data)))
    checkpoints.refuse_untrusted(node, "data", cfg.ckpt, cfg.trusted_targets)
    if node.get("labeled_per_class") is not None:
        # A semi-supervised run hid most labels from its critic; its samples are scored
        # against the whole labelled set, like any run's.
        node.labeled_per_class = None
    datamodule = build(OmegaConf.create({"data": node}), "data")
    datamodule.prepare_data()  # a vision set is found (or downloaded, if allowed) as in training
    return datamodule


def _set_values(tree: Any) -> Any:
    """A config tree without its null leaves (keys left unset on the command line)."""
    if not isinstance(tree, dict):
        return tree
    kept = {key: _set_values(value) for key, value in tree.items() if value is not None}
    return {key: value for key, value in kept.items() if value != {}}


def checkpoint_evaluation(cfg: DictConfig, run: DictConfig, datamodule: Any) -> tuple:
    """(evaluation, protocol for the report's name, note for the report) for this checkpoint."""
    if int(run.data.get("domains", 1)) == 2:
        return translation_evaluation(cfg, run)
    if list(datamodule.shape) == [1]:
        return density_evaluation(cfg)
    if len(datamodule.shape) == 1:
        return mixture_evaluation(cfg, run, datamodule)
    if stacked_node(run) is not None:
        return stacked_evaluation(cfg, run)
    extractor = choose_extractor(cfg, run)
    evaluation = fidelity(extractor, cfg, cfg.n_samples, cfg.split, cache_dir(cfg, run))
    return evaluation, f"{extractor.name}_{count(cfg.n_samples)}_{cfg.split}", ""


def translation_evaluation(cfg: DictConfig, run: DictConfig) -> tuple:
    """A translator's own protocol: the run's metrics.translation settings, else the defaults."""
    from gan_runner.metrics.translation import TranslationMetrics

    ran = [
        m for m in run_metrics(run) if str(m.get("_target_", "")).endswith(".TranslationMetrics")
    ]
    unset = ("_target_", "cache_dir")
    settings = {k: v for k, v in (ran[0] if ran else {}).items() if k not in unset}
    evaluation = TranslationMetrics(cache_dir=cache_dir(cfg, run), **settings)
    note = (
        "a translator (data.domains=2): scored on the data's test split by metrics=[translation] "
        f"instead of scores=[{','.join(metric_list(cfg))}]"
    )
    return evaluation, "translation_test", note


def density_evaluation(cfg: DictConfig) -> tuple:
    evaluation = Density1D(cfg.n_samples, cfg.batch_size)
    note = (
        "1D data: scored by quadrature against the data's density (JSD, KL both ways) instead "
        f"of scores=[{','.join(metric_list(cfg))}]"
    )
    print(f"Note: {note}")
    return evaluation, f"density1d_{evaluation.suffix}", note


def mixture_evaluation(cfg: DictConfig, run: DictConfig, datamodule: Any) -> tuple:
    source = datamodule.source
    if not hasattr(source, "means") or not hasattr(source, "std"):
        raise UserError(
            f"ckpt={cfg.ckpt} generates 2D points, which gan-eval scores with the mixture "
            f"protocol, but its data.source is {type(source).__name__}, not a Gaussian mixture"
        )
    node = next((n for n in run_metrics(run) if "n_std" in n), {})
    evaluation = MixtureEvaluation(cfg.n_samples, node.get("n_std", 3.0), cfg.batch_size)
    note = (
        "2D points: scored with the mixture protocol (modes, HQ%, reverse KL) instead of "
        f"scores=[{','.join(metric_list(cfg))}]"
    )
    print(f"Note: {note}")
    return evaluation, f"mixture_{evaluation.suffix}", note


def stacked_node(run: DictConfig) -> dict[str, Any] | None:
    """The run's metrics.stacked_modes settings, when it trained with that protocol."""
    target = "gan_runner.metrics.stacked_modes.StackedModes"
    return next((n for n in run_metrics(run) if n.get("_target_") == target), None)


def stacked_evaluation(cfg: DictConfig, run: DictConfig) -> tuple:
    """A run evaluated by the Stacked MNIST protocol is scored by it again, with its judge."""
    from gan_runner.metrics.stacked_modes import StackedModes

    judge = {k: v for k, v in stacked_node(run)["extractor"].items() if k != "_target_"}
    extractor = ClassifierFeatures(**{**judge, "cache_dir": cache_dir(cfg, run)})
    evaluation = StackedModes(extractor, cfg.n_samples, cfg.batch_size)
    note = (
        "stacked digits: scored with the run's Stacked MNIST protocol (metrics=[stacked_modes]: "
        f"modes of 1,000, KL to uniform) instead of scores=[{','.join(metric_list(cfg))}]"
    )
    print(f"Note: {note}")
    return evaluation, evaluation.suffix, note


def generator_views(cfg: DictConfig, module: Any) -> list[tuple[str, Any]]:
    """(name, module as the evaluation sees it): the EMA or live generator, and the live one."""
    has_ema = getattr(module, "generator_ema", None) is not None
    if cfg.use_ema and not has_ema:
        print(f"Note: ckpt={cfg.ckpt} has no EMA generator; scoring the live generator")
    if not cfg.use_ema or not has_ema:
        return [("live", module)]
    return [("ema", module), ("live", LiveView(module))] if cfg.also_live else [("ema", module)]


def report_base(cfg: DictConfig, protocol: str, generator: str, first: bool) -> Path:
    """Where a report goes, without its .json/.md suffix."""
    if cfg.out:
        base = out_base(cfg.out)
        return base if first else base.with_name(f"{base.name}-{generator}")
    ckpt = Path(cfg.ckpt)
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run / "eval" / f"{ckpt.stem}-{protocol}-{generator}"


def out_base(out: str) -> Path:
    """`out` without a .json or .md suffix: the stem of both report files."""
    return Path(out).with_suffix("") if Path(out).suffix in (".json", ".md") else Path(out)


# ----------------------------------------------------------------- extractors
def run_metrics(run: DictConfig | None) -> list[dict[str, Any]]:
    """The run's metric nodes (conf/metrics/*.yaml as resolved at training time)."""
    node = run.get("metrics") if run is not None else None
    # A run without evaluations (metrics=[], or data without a default) stores an empty node.
    metrics = OmegaConf.to_container(node) if isinstance(node, DictConfig) else {}
    return [value for value in metrics.values() if isinstance(value, dict)]


def cache_dir(cfg: DictConfig, run: DictConfig | None) -> str | None:
    ran = next((n["cache_dir"] for n in run_metrics(run) if n.get("cache_dir")), None)
    return cfg.cache_dir or ran


def run_extractor(run: DictConfig | None) -> tuple[str, dict[str, Any]] | None:
    """(inception or classifier, its settings) of the run's first image metric, if any."""
    for node in run_metrics(run):
        extractor = node.get("extractor")
        target = str(extractor.get("_target_", "")) if isinstance(extractor, dict) else ""
        kind = EXTRACTORS.get(target.rsplit(".", 1)[-1])
        if kind and target.startswith("gan_runner."):
            return kind, {k: v for k, v in extractor.items() if k != "_target_"}
    return None


def choose_extractor(cfg: DictConfig, run: DictConfig | None) -> Any:
    """The requested extractor; the run's own settings when it used the same kind."""
    if isinstance(cfg.extractor, DictConfig):
        return custom_extractor(cfg.extractor)
    ran = run_extractor(run)
    kind = cfg.extractor or (ran[0] if ran else "inception")
    settings = ran[1] if ran and ran[0] == kind else {}
    if kind == "inception":
        return InceptionFeatures(cfg.weights_path or settings.get("weights_path"))
    if kind == "inception_torchscript":  # the run's input convention, this command's file
        return TorchScriptFeatures(
            **{**settings, "path": cfg.weights_path or settings.get("path")}
        )
    if kind != "classifier":
        raise UserError(
            f"extractor={kind} is unknown; choose inception, inception_torchscript, classifier, "
            "or a node "
            "{_target_: <class>} (see conf/eval.yaml)"
        )
    if run is None:
        raise UserError(
            "extractor=classifier trains on a checkpoint's labelled data set, which folders "
            "have not; use extractor=inception"
        )
    return ClassifierFeatures(**{**settings, "cache_dir": cache_dir(cfg, run)})


def custom_extractor(node: DictConfig) -> Any:
    """An extractor named by `_target_`: the interface of metrics.extractors' InceptionFeatures."""
    target = node.get("_target_")
    try:
        made = instantiate(node)
    except InstantiationException as error:
        cause = (str(error.__cause__ or error).strip().splitlines() or [""])[0]
        raise UserError(f"extractor._target_={target} could not be built: {cause}") from None
    needs = ("name", "num_features", "prepare", "extract", "weights_hash", "provenance")
    missing = [name for name in needs if not hasattr(made, name)]
    if missing:
        raise UserError(
            f"extractor._target_={target} is not a feature extractor: it lacks "
            f"{', '.join(missing)} (see gan_runner.metrics.extractors.InceptionFeatures)"
        )
    return made


def fidelity(extractor: Any, cfg: DictConfig, n: int, split: str, cache: str | None) -> Any:
    settings = {"n_real": cfg.n_real, "batch_size": cfg.batch_size, "cache_dir": cache}
    settings |= {"seed": cfg.seed, "show_progress": cfg.show_progress}
    settings |= {"reference_stats": cfg.get("reference_stats")}
    scores = metric_list(cfg)
    if not getattr(extractor, "has_logits", True) and "is" in scores:
        # The default score list asks for IS; a head-less extractor scores the rest and says so.
        print(f"note: no IS: the {extractor.name} TorchScript file has no classifier head")
        scores = [name for name in scores if name != "is"]
    try:
        return FidelityEvaluation(extractor, scores, n, split=split, **settings)
    except ValueError as error:  # n_real < 2
        raise UserError(str(error)) from None


# ----------------------------------------------------------------- two folders
class FolderSource:
    """The reference folder as a data source; its files' names, sizes and times key the cache."""

    split = FOLDER_SPLIT

    def __init__(self, root: Path, paths: list[Path], resolution: int, mode: str) -> None:
        self.root, self.resolution, self.mode = str(root), resolution, mode
        stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
        self.fingerprint = digest(stats)  # part of the reference's cache key (data_identity)

    def load(self, resolution: int | None = None) -> ImageFiles:
        return ImageFiles(list_images(Path(self.root)), None, self.resolution, None, self.mode)


def folder_images(folder: Any) -> tuple[Path, list[Path]]:
    path = Path(str(folder)).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise UserError(f"folders: {path} {what}; pass folders=[<real images>,<generated images>]")
    images = list_images(path)
    if len(images) < 2:
        raise UserError(
            f"folders: {path} holds {len(images)} images ({', '.join(sorted(IMAGE_SUFFIXES))}, "
            "searched recursively); at least 2 are needed"
        )
    return path, images


def first_image(paths: list[Path]) -> tuple[int, bool]:
    """(shorter side, grayscale?) of a folder's first image, which sets the folder's format."""
    try:
        with Image.open(paths[0]) as image:
            return min(image.size), image.mode in GRAY_MODES
    except OSError as error:
        raise UserError(f"folders: cannot read image {paths[0]}: {error}") from None


def compare_folders(cfg: DictConfig) -> list[Path]:
    """Score the images of folders[1] against those of folders[0]: one report."""
    (real, real_paths), (fake, fake_paths) = (folder_images(f) for f in cfg.folders)
    (side, real_gray), (other_side, fake_gray) = first_image(real_paths), first_image(fake_paths)
    gray = real_gray and fake_gray
    mode = "L" if gray else "RGB"  # a gray folder against a colour one: both as RGB
    extractor = choose_extractor(cfg, None)
    device = checkpoints.resolve_device(cfg.device)
    source = FolderSource(real, real_paths, side, mode)
    shape = [1 if gray else 3, side, side]
    datamodule = GANDataModule(source, 1, shape, num_workers=cfg.num_workers)
    evaluation = fidelity(extractor, cfg, len(fake_paths), FOLDER_SPLIT, cfg.cache_dir)
    prepare(evaluation, datamodule, device)
    values = evaluation.score(folder_batches(fake_paths, side, mode, cfg))
    report: dict[str, Any] = {"folders": {"reference": str(real), "scored": str(fake)}}
    if other_side != side:
        report["note"] = f"{fake}'s images were resized to {side}×{side}, the size of {real}'s"
    report["metrics"] = values
    report["provenance"] = provenance(evaluation, cfg, device, {"image_mode": mode})
    return write_report(report, out_base(cfg.out or "eval_report"), None)


def folder_batches(paths: list[Path], side: int, mode: str, cfg: DictConfig) -> Iterator[Tensor]:
    """The scored folder's images in [-1, 1], cropped and resized as the reference's."""
    files = ImageFiles(paths, None, side, None, mode)
    for batch in DataLoader(files, batch_size=cfg.batch_size, num_workers=cfg.num_workers):
        yield to_model_range(batch["samples"])


# ----------------------------------------------------------------- reports
def provenance(evaluation: Any, cfg: DictConfig, device: Any, extra: dict) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    common = {"seed": cfg.seed, "device": str(device), "date": now, "versions": library_versions()}
    return {**extra, **evaluation.provenance(), **common}


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def write_report(report: dict[str, Any], base: Path, generator: str | None) -> list[Path]:
    """<base>.json and <base>.md; prints where, then one line per value."""
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_name(f"{base.name}.json"), base.with_name(f"{base.name}.md")]
    paths[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths[1].write_text(markdown(report))
    for path in paths:
        print(f"Wrote {path.resolve()}")
    which = f" ({generator} generator)" if generator else ""
    for name, value in report["metrics"].items():
        print(f"{name} = {value:.6g}{which}")
    return paths


def markdown(report: dict[str, Any]) -> str:
    """One row per metric, what was scored above the table and the provenance under it."""
    lines = ["# gan-eval report", ""]
    head = {k: v for k, v in report.items() if k not in ("metrics", "provenance")}
    lines += [f"- {key}: {_plain(value)}" for key, value in head.items()]
    lines += ["", "| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {value:.6g} |" for name, value in report["metrics"].items()]
    lines += ["", "## Provenance", ""]
    lines += [f"- {key}: {_plain(value)}" for key, value in report["provenance"].items()]
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {_plain(item)}" for key, item in value.items())
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    return str(value)
