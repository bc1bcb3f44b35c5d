"""Every command on every recipe's checkpoints: gan-run, then gan-eval, gan-sample and gan-report.

Cases come from globbing conf/model/*.yaml (each recipe on 2D points and on images, from the data
sets that need no files: ring8 or grid25, and digits) and conf/experiment/*.yaml (one whose data
set is not on this machine is skipped, saying which files), each trained twice: without metrics
(metrics=[]) and with the data set's own (mixture on 2D data; the classifier on images, which
trains offline). A new recipe, experiment or embedded data set is covered without editing this
file. Every case trains a few generator steps on narrowed players, once per session (the runs are
shared by the tests below), and each console command runs in this process as a user would call
it: exit code 0, the files it says it wrote, finite values and no traceback; where a command does
not apply (interpolating 2D points, rejection sampling with a Wasserstein critic, Inception
offline, an image architecture on 2D points), one line naming the fix and exit code 2.

`make test` runs the recipes on images and every experiment (ring8_modes brings 2D points, with
and without metrics), about 2 CPU-minutes; the recipes on 2D points are marked slow (test-all).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from conftest import CONF, call_console, game_of_recipe, options
from gan_runner import cli
from gan_runner.checkpoints import load_checkpoint, rebuild, run_config
from gan_runner.errors import UserError
from gan_runner.evaluate import run_extractor, stacked_node
from gan_runner.games.base import Game
from gan_runner.metrics.extractors import INCEPTION_FILE
from gan_runner.rejection import log_ratio_of

G_STEPS = 4
RUN = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    f"train.g_steps={G_STEPS}",
    "train.log_every=1",
    "callbacks.metrics.every=2",  # two evaluations: a curve and a best checkpoint
    "n_critic_boost.n_critic=0",  # WGAN's 100-step critic boost (tests/test_module.py has it)
    "callbacks.loss_curve=null",  # a plot no command reads back (tests/test_cli.py checks it)
]
# The classifier features, cheap: the run trains it once per session (conftest's cache).
CHEAP_CLASSIFIER = [
    "metrics.classifier.extractor.steps=50",
    "metrics.classifier.n_fake=100",
    "metrics.classifier.show_progress=false",
]
EVAL = ["n_samples=100", "show_progress=false", "num_workers=0"]
# What gan-run refuses, rightly, in one line: an image architecture on 2D points, and a
# class-conditional recipe on a data set without labels.
REFUSALS = ("needs image data", "has no labels", "is class-conditional", "needs labelled data")


# ----------------------------------------------------------------- cases
@dataclass
class Case:
    """A recipe on a data set, or an experiment; trained without metrics or with its own."""

    id: str
    choice: list[str]  # model=<recipe> data=<set>, or experiment=<name>
    metrics: bool
    # make test-all only: a recipe on 2D points (ring8_modes has them by default), and an
    # experiment on files, which trains at full size where a machine has them (CI has none).
    slow: bool = False


# Trained here only through its experiment: dealt to the recipes, its 1,000 classes made
# ssgan's per-class label picking and metrics take minutes (tests/test_stacked_digits.py has it).
EXPERIMENT_ONLY_DATA = {"stacked_digits"}


def embedded_kinds() -> dict[str, list[str]]:
    """Data sets that read no files, by kind: 2D points (ring8, grid25), images (digits), and
    two image domains: unpaired and paired (digits_unpaired, digits_paired)."""
    kinds: dict[str, list[str]] = {}
    for data in options("data"):
        if data in EXPERIMENT_ONLY_DATA:
            continue
        node = OmegaConf.load(CONF / "data" / f"{data}.yaml")
        if "root" not in node.get("source", {}):
            if node.get("domains", 1) == 2:
                kind = "paired" if node.get("paired", False) else "unpaired"
            else:
                kind = "points" if len(node.get("shape", [])) == 1 else "images"
            kinds.setdefault(kind, []).append(data)
    return kinds


def kinds_of(recipe: str) -> tuple[str, ...]:
    """The kinds of data a recipe's game plays on: a translation game two domains (aligned
    pairs if it needs them), any other points and images."""
    game = game_of_recipe(recipe)
    if game.domains == 2:
        return ("paired",) if game.needs_pairs else ("unpaired",)
    return ("points", "images")


def reads_files(experiment: str) -> bool:
    """Whether the experiment's data set is read from files (CIFAR-10, Fashion-MNIST, ...)."""
    node = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml")
    for entry in node.get("defaults", []):
        data = entry.get("override /data") if isinstance(entry, DictConfig) else None
        if data is not None:
            return "root" in OmegaConf.load(CONF / "data" / f"{data}.yaml").get("source", {})
    return False


def make_cases() -> list[Case]:
    """Found by globbing conf/ (plain YAML reads: collecting this file composes nothing).

    Each recipe trains on one data set of each kind; within a kind the sets are dealt out to
    the recipes in turn, so every set is trained on and the file's time grows with the recipes
    alone (ring8 and grid25 differ only in their mixture's parameters).
    """
    kinds = embedded_kinds()
    choices = [
        (f"{model}-{sets[i % len(sets)]}", [f"model={model}", f"data={sets[i % len(sets)]}"], kind)
        for i, model in enumerate(options("model"))
        for kind, sets in kinds.items()
        if kind in kinds_of(model)
    ]
    for experiment in options("experiment"):
        kind = "files" if reads_files(experiment) else None
        choices.append((experiment, [f"experiment={experiment}"], kind))
    return [
        Case(f"{name}-{'metrics' if on else 'nometrics'}", choice, on, kind in ("points", "files"))
        for name, choice, kind in choices
        for on in (False, True)
    ]


CASES = make_cases()
PARAMS = [
    pytest.param(case, id=case.id, marks=[pytest.mark.slow] if case.slow else []) for case in CASES
]


@dataclass
class Plan:
    """How a case trains here: gan-run's arguments, or why it cannot."""

    overrides: list[str]
    points: bool  # 2D data
    skip: str | None


def narrow(cfg: Any) -> list[str]:
    """Tiny players of whatever family the config selects, found by their keys."""
    overrides = []
    for side, node in cfg.arch.items():  # every network: a game's further ones too
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        for key in (k for k in node if str(k).endswith("hidden")):  # MLPs (BiGAN's x_hidden)
            overrides.append(f"arch.{side}.{key}=[16]")
        if "base_width" in node:  # DCGAN
            overrides.append(f"arch.{side}.base_width=8")
        if "width" in node:  # SNGAN's ResNet
            overrides.append(f"arch.{side}.width=8")
        if "channel_max" in node:  # PGGAN's and StyleGAN's channel_base/channel_max widths
            overrides.append(f"arch.{side}.channel_max=16")
        if "w_dim" in node:  # StyleGAN's W
            overrides.append(f"arch.{side}.w_dim=16")
        if node.get("attention_resolutions"):  # where 8-px maps are: G's 8x8 block, D's 4x4
            overrides.append(f"arch.{side}.attention_resolutions=[{4 if 'disc' in side else 8}]")
    if "stable_kimg" in cfg.game:  # progressive growing: the final stage from the 2nd batch
        overrides += ["game.stable_kimg=0.016", "game.fade_kimg=0.016"]
    return overrides


def small_data(cfg: Any) -> list[str]:
    data = cfg.data
    overrides = ["data.resolution=8"] if "resolution" in data else []
    if "n_samples" in data.get("source", {}):  # 2D mixtures, stacked digits: fewer to draw
        overrides.append("data.source.n_samples=2048")
    return overrides


def missing_files(cfg: Any) -> str | None:
    """Why the config's data set cannot be had here (its files are absent), or None."""
    node = cfg.data.get("source", {})
    if "root" not in node:
        return None  # embedded: generated or bundled
    source = instantiate(node, **({"download": False} if "download" in node else {}))
    locate = getattr(source, "locate", None)
    if locate is not None and locate() is not None:
        return None
    where = source.expected() if hasattr(source, "expected") else f"images under {node.root}"
    return f"needs {type(source).__name__}'s files ({where}), which cannot be had offline"


def metrics_on(cfg: Any) -> list[str]:
    """The data set's own metrics when it has some, else mixture (2D) or the classifier."""
    if len(cfg.metrics):
        own = list(cfg.metrics)
    else:
        own = ["mixture"] if len(cfg.data.shape) == 1 else ["classifier"]
    overrides = [f"metrics=[{','.join(own)}]"]
    if "translation" in own:  # its two judges, cheap: trained once per data set per session
        overrides.append("metrics.translation.steps=50")
    return overrides + (CHEAP_CLASSIFIER if "classifier" in own else [])


@pytest.fixture(scope="session")
def plans() -> dict[str, Plan]:
    """Every case composed once, in one Hydra set-up: narrowed players, its metrics, or a skip."""
    plans = {}
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="gan_runner.conf", version_base="1.3"):
            composed: dict[str, Any] = {}
            for case in CASES:
                key = " ".join(case.choice)
                if key not in composed:
                    cfg = compose("train", overrides=case.choice, return_hydra_config=True)
                    HydraConfig.instance().set_config(cfg)  # ${hydra:...} paths resolve
                    composed[key] = cfg
                cfg = composed[key]
                skip = missing_files(cfg)
                if skip:
                    skip = f"{key} {skip}; tests/test_data_vision.py trains on tiny files"
                metrics = metrics_on(cfg) if case.metrics else ["metrics=[]"]
                overrides = [*case.choice, *RUN, *narrow(cfg), *small_data(cfg), *metrics]
                plans[case.id] = Plan(overrides, len(cfg.data.shape) == 1, skip)
    finally:
        GlobalHydra.instance().clear()
    return plans


# ----------------------------------------------------------------- training, once per session
@dataclass
class Trained:
    run: Path | None
    points: bool
    refused: str | None = None


_TRAINED: dict[str, Trained] = {}


def no_traceback(code: int, out: str, err: str, expected: int = 0) -> None:
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert code == expected, (code, out[-2000:], err[-2000:])


def one_line(code: int, out: str, err: str) -> str:
    """A refusal in the house style: exit code 2, one line on stderr, no traceback."""
    no_traceback(code, out, err, expected=2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("every_recipe")


def gan_run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """gan-run in this process, its console and train.log handlers closed afterwards.

    Hydra's job logging gives the root logger handlers on this test's captured streams; the
    commands that follow configure no logging (gan-eval, gan-sample), so their log records
    would reach those streams after capsys has closed them ("--- Logging error ---").
    """
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        return call_console(cli.run, "gan-run", monkeypatch, capsys, *args)
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()


@pytest.fixture
def trained(plans, runs_root, monkeypatch, capsys, tmp_path):
    """trained(case) -> its Trained run folder, by gan-run on first use (then shared)."""
    monkeypatch.chdir(tmp_path)

    def get(case: Case) -> Trained:
        plan = plans[case.id]
        if plan.skip:
            pytest.skip(plan.skip)
        if case.id not in _TRAINED:
            run = runs_root / case.id
            args = [*plan.overrides, f"hydra.run.dir={run}"]
            code, out, err = gan_run(monkeypatch, capsys, *args)
            if code == 2 and any(why in err for why in REFUSALS):
                line = one_line(code, out, err)
                _TRAINED[case.id] = Trained(None, plan.points, line.removeprefix("error: "))
            else:
                no_traceback(code, out, err)
                assert f"Trained {G_STEPS} generator steps" in out, out
                _TRAINED[case.id] = Trained(run, plan.points)
        done = _TRAINED[case.id]
        if done.run is None:
            pytest.skip(f"gan-run refuses {case.id}, as it should: {done.refused}")
        return done

    return get


def checkpoints_of(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("*.ckpt"))


def finite(values: dict[str, Any]) -> None:
    assert values and all(math.isfinite(float(v)) for v in values.values()), values


# ----------------------------------------------------------------- gan-run
@pytest.mark.parametrize("case", PARAMS)
def test_run_writes_checkpoints_samples_and_logs(trained, case: Case) -> None:
    run = trained(case).run
    names = {p.name for p in checkpoints_of(run)}
    assert {"last.ckpt", f"g{G_STEPS:07d}.ckpt"} <= names
    assert ("best.ckpt" in names) == case.metrics
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "samples" / f"g{G_STEPS:07d}.png").stat().st_size > 100
    with open(run / "csv" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/d_loss")]
    assert len(rows) == G_STEPS and all(math.isfinite(float(r["train/d_loss"])) for r in rows)
    records = run / "metrics.jsonl"
    assert records.is_file() == case.metrics
    if case.metrics:
        lines = [json.loads(line) for line in records.read_text().splitlines()]
        assert [line["g_steps"] for line in lines] == [2, G_STEPS]
        for line in lines:
            finite(line["values"])


# ----------------------------------------------------------------- gan-eval
def inception_weights_here() -> bool:
    return (Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE).is_file()


@pytest.mark.parametrize("case", PARAMS)
def test_eval_scores_every_checkpoint(trained, case: Case, monkeypatch, capsys) -> None:
    done = trained(case)
    run, points = done.run, done.points

    def gan_eval(*args: str) -> tuple[int, str, str]:
        return call_console(cli.evaluate, "gan-eval", monkeypatch, capsys, *args, *EVAL)

    for ckpt in checkpoints_of(run):
        last = ckpt.name == "last.ckpt"  # the live generator too, and the messages, once
        extra = ["also_live=true"] if last else []
        # A translator is scored by its own protocol on the test split (metrics=[translation]).
        translator = run_config(load_checkpoint(ckpt))["data"].get("domains", 1) == 2
        if (
            not points
            and not translator
            and run_extractor(run_config(load_checkpoint(ckpt))) is None
        ):
            # No image metric in the run (metrics=[], or ssgan's critic accuracy): the extractor
            # defaults to Inception, whose weights are a download.
            if last and not inception_weights_here():  # (Inception on a CPU: too slow here)
                line = one_line(*gan_eval(f"ckpt={ckpt}"))
                why = "evaluated nothing" if not case.metrics else "without image features"
                assert why in line, line
                assert "weights_path=<file>" in line and "extractor=classifier" in line, line
            extra.append("extractor=classifier")  # trains offline on the run's labelled digits
        code, out, err = gan_eval(f"ckpt={ckpt}", *extra)
        no_traceback(code, out, err)
        written = sorted(run.glob(f"eval/{ckpt.stem}-*.json"))
        one_d = list(run_config(load_checkpoint(ckpt))["data"]["shape"]) == [1]
        protocol = (
            ("density1d_100" if one_d else "mixture_100") if points else "classifier_100_train"
        )
        if stacked_node(run_config(load_checkpoint(ckpt))) is not None:  # its own protocol
            protocol = "stacked_100"
        generators = ["ema", "live"] if last else ["ema"]
        if translator:  # translation recipes average no weights: only the live generator
            protocol, generators = "translation_test", ["live"]
        assert [p.name for p in written] == [
            f"{ckpt.stem}-{protocol}-{g}.json" for g in generators
        ]
        for path in written:
            report = json.loads(path.read_text())
            assert report["g_steps"] == (G_STEPS if ckpt.stem != "best" else best_at(run))
            finite(report["metrics"])
            assert path.with_suffix(".md").is_file()
            for name, value in report["metrics"].items():
                assert f"{name} = {value:.6g}" in out


def best_at(run: Path) -> int:
    """The generator step of checkpoints/best.ckpt, from the weights_only file itself."""
    state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    return state["gan_runner"]["counters"]["g_steps"]


# ----------------------------------------------------------------- gan-sample
def sampling(points: bool, ckpt: Path) -> dict[str, tuple[list[str], str]]:
    """mode name -> (gan-sample arguments, what the test expects: 'ok' or a refusal's words)."""
    module = rebuild(ckpt)[0]
    try:  # whether the critic estimates p_data / p_g, as gan-sample itself decides
        log_ratio_of(module)
        drs = "ok"
    except UserError:
        drs = "estimates p_data / p_g"
    images_only = "renders images" if points else "ok"
    # Traversals sweep the codes of a game that writes them into z (InfoGAN's); others refuse.
    has_codes = type(module.game).traversal_latents is not Game.traversal_latents
    traversal = images_only if has_codes else "has none"
    reconstruct = images_only if getattr(module, "encoder", None) is not None else "no encoder"
    modes = {
        "grid": (["n=6", "nrow=3", "out=grid.png"], "ok"),
        "truncated_folder": (
            ["mode=folder", "n=5", "batch_size=2", "truncation=0.5", "out=fakes"],
            "ok",
        ),
        "interpolate": (
            ["mode=interpolate", "interpolation.pairs=2", "interpolation.steps=3"],
            images_only,
        ),
        "arithmetic_sheet": (["mode=arithmetic", "arithmetic.candidates=6"], images_only),
        "arithmetic": (
            ["mode=arithmetic", "arithmetic.candidates=6", "arithmetic.neighbours=2"]
            + ["arithmetic.a=[0,1]", "arithmetic.b=[2,3]", "arithmetic.c=[4,5]", "out=sum.png"],
            images_only,
        ),
        "traversal": (["mode=traversal", "traversal.steps=3", "out=traversal.png"], traversal),
        "drs_grid": (
            ["n=4", "rejection.method=drs", "rejection.burn_in=200", "out=drs.png"],
            drs,
        ),
        "reconstruct": (["mode=reconstruct", "n=4", "out=rec.png"], reconstruct),
        "translate": (["mode=translate", "n=3", "out=translated.png"], "use mode=grid"),
    }
    if module.game.translates:  # images in, images out: only mode=translate applies
        modes = {name: (args, "use mode=translate") for name, (args, _) in modes.items()}
        modes["translate"] = (modes["translate"][0], "ok")
    return modes


@pytest.mark.parametrize("case", PARAMS)
def test_sample_every_mode(trained, case: Case, tmp_path, monkeypatch, capsys) -> None:
    done = trained(case)
    run, points = done.run, done.points
    ckpt = run / "checkpoints" / "last.ckpt"
    modes = sampling(points, ckpt)
    if case.metrics:  # gan-sample reads no metrics: its twin without them has every mode
        modes = {"grid": modes["grid"]}
    for mode, (args, expected) in modes.items():
        code, out, err = call_console(
            cli.sample, "gan-sample", monkeypatch, capsys, f"ckpt={ckpt}", *args
        )
        if expected != "ok":
            line = one_line(code, out, err)
            assert expected in line, (mode, line)
            continue
        no_traceback(code, out, err)
        assert "Wrote " in out, (mode, out)
    if any(expected == "ok" for _, expected in modes.values()):  # not a translator's lone grid
        check_samples(points, tmp_path)


def check_samples(points: bool, folder: Path) -> None:
    """What each mode wrote: sizes follow n, nrow, pairs and steps (8-pixel tiles, 2 padding)."""
    tile = 8 + 2
    if (folder / "translated.png").exists():  # a translator: n rows of source | G(a) [| cycle]
        with Image.open(folder / "translated.png") as image:
            assert image.height == 3 * tile + 2 and image.width in (2 * tile + 2, 3 * tile + 2)
        assert not (folder / "grid.png").exists()
        return
    if (folder / "rec.png").exists():  # real rows each followed by G(E(x))
        assert (folder / "rec.png").stat().st_size > 100
    if not (folder / "fakes").exists():  # the grid alone
        with Image.open(folder / "grid.png") as image:
            assert image.size == (3 * tile + 2, 2 * tile + 2) or (points and image.width > 100)
        return
    if points:
        for name in ("grid.png", "drs.png"):
            if (folder / name).exists():
                with Image.open(folder / name) as image:
                    assert image.format == "PNG" and min(image.size) > 100
        rows = (folder / "fakes" / "points.csv").read_text().splitlines()
        assert rows[0] in ("x,y", "x") and len(rows) == 6  # 2D or 1D points
        assert all(math.isfinite(float(v)) for row in rows[1:] for v in row.split(","))
        assert not (folder / "interpolate.png").exists()
        return
    assert Image.open(folder / "grid.png").size == (3 * tile + 2, 2 * tile + 2)
    files = sorted((folder / "fakes").iterdir())
    assert [p.name for p in files] == [f"{i:06d}.png" for i in range(5)]
    assert all(Image.open(p).size == (8, 8) for p in files)
    assert Image.open(folder / "interpolate.png").size == (3 * tile + 2, 2 * tile + 2)
    assert Image.open(folder / "interpolate.gif").n_frames == 3
    assert (folder / "arithmetic.png").stat().st_size > 100
    # Rows a, b, c (two exemplars and their mean) and the result with 2 neighbours: 4 × 3 tiles.
    assert Image.open(folder / "sum.png").size == (3 * tile + 2, 4 * tile + 2)
    if (folder / "drs.png").exists():
        assert Image.open(folder / "drs.png").size == (4 * tile + 2, tile + 2)
    if (folder / "traversal.png").exists():  # steps columns, a row per category
        assert Image.open(folder / "traversal.png").width == 3 * tile + 2


# ----------------------------------------------------------------- gan-report
PAIRS = [  # each case without metrics, then with them
    pytest.param(
        (off, on),
        id=off.id.removesuffix("-nometrics"),
        marks=[pytest.mark.slow] if off.slow else [],
    )
    for off, on in zip(CASES[::2], CASES[1::2])
]


@pytest.mark.parametrize("pair", PAIRS)
def test_report_on_the_runs(trained, pair: tuple[Case, Case], monkeypatch, capsys) -> None:
    """gan-report on a case's two runs: one row each, told apart by their metrics."""
    off, on = (trained(case).run for case in pair)
    args = [str(off), str(on)]
    code, out, err = call_console(cli.report, "gan-report", monkeypatch, capsys, *args)
    no_traceback(code, out, err)
    assert f"Report: {(off / 'report' / 'report.md').resolve()}" in out
    with open(off / "report" / "report.csv") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {off.name, on.name}
    evaluated = None
    for run in (off, on):
        row = rows[run.name]
        assert row["g_steps"] == str(G_STEPS)
        stats = {k: v for k, v in row.items() if k.startswith(("final:", "best:")) and v}
        assert "final:train/d_loss" in stats and "final:train/g_loss" in stats
        finite(stats)
        if run == on:
            evaluated = [k for k in stats if k.startswith("final:val/")]
        else:
            assert not [k for k in stats if k.startswith("final:val/")]
    assert evaluated
    curves = sorted((off / "report").glob("curves_*.png"))
    assert len(curves) == len(evaluated)
    text = (off / "report" / "report.md").read_text()
    assert "2 runs in 2 configurations" in text
    # Named by one metrics key; the other settings of the metrics node follow from it.
    differ = text.split("the configurations differ in ", 1)[1].split(".\n", 1)[0]
    assert differ.startswith("`metrics") and differ.count("`") == 2, differ


@pytest.mark.slow  # ~8 CPU-seconds of curves with a line per configuration
def test_report_over_every_run(trained, runs_root: Path, monkeypatch, capsys, tmp_path) -> None:
    """All the cases in one report: configurations differ in recipe, data, metrics, widths."""
    runs = []
    for case in CASES:
        try:
            runs.append(trained(case).run)
        except (pytest.skip.Exception, AssertionError):  # each case's own tests report it
            continue
    out_dir = tmp_path / "all"
    args = [str(runs_root), "--out", str(out_dir)]
    code, out, err = call_console(cli.report, "gan-report", monkeypatch, capsys, *args)
    no_traceback(code, out, err)
    with open(out_dir / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    # Folders of refused runs (an image architecture on 2D points) hold only .hydra/: reported
    # too, without values, as a crashed run is.
    by_name = {row["run"]: row for row in rows}
    assert {run.name for run in runs} <= set(by_name)
    assert all(math.isfinite(float(by_name[run.name]["final:train/d_loss"])) for run in runs)
    assert {"model", "data"} <= set(rows[0])  # group choices that differ between the runs
