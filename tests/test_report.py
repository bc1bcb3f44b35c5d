"""`gan-report`: config differences, seeds as mean ± s.e., curves, CSV, from run folders alone."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from gan_runner import cli, report
from gan_runner.run_folders import read_run

# 2 configurations (n_critic) x 2 seeds of a tiny ring8 run, evaluated by the mixture protocol.
SWEEP = [
    "-m",
    "seed=0,1",
    "n_critic=1,2",
    "train.g_steps=20",
    "train.log_every=10",
    "metrics=[mixture]",
    "callbacks.metrics.every=10",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 4-job `gan-run -m` sweep folder (run in this process, as Hydra's launcher does)."""
    folder = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setattr(sys, "argv", ["gan-run", *SWEEP, f"hydra.sweep.dir={folder / 'multirun'}"])
        cli.run()
    return folder / "multirun"


@pytest.fixture(scope="module")
def made(sweep: Path) -> Path:
    """The report of the sweep, in its default place."""
    path = report.make_report([sweep])
    assert path == sweep / "report" / "report.md"
    return path.parent


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def evaluations(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def copy_run(run: Path, to: Path) -> Path:
    return Path(shutil.copytree(run, to, ignore=shutil.ignore_patterns("*.ckpt", "samples")))


def test_grouped_table_has_two_configurations_of_two_seeds(made: Path) -> None:
    rows = read_csv(made / "report_grouped.csv")
    assert [(row["n_critic"], row["n"], row["seeds"]) for row in rows] == [
        ("1", "2", "0 1"),
        ("2", "2", "0 1"),
    ]
    assert all(row["g_steps"] == "20" for row in rows)


def test_mean_and_standard_error_match_a_hand_computation(sweep: Path, made: Path) -> None:
    grouped = {row["n_critic"]: row for row in read_csv(made / "report_grouped.csv")}
    runs: dict[str, list[list[dict]]] = {}
    for run in sorted(p.parent.parent for p in sweep.glob("*/.hydra/config.yaml")):
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        runs.setdefault(str(config["n_critic"]), []).append(evaluations(run))
    assert sorted(runs) == ["1", "2"] and all(len(r) == 2 for r in runs.values())
    for n_critic, records in runs.items():
        final = [r[-1]["values"]["val/rkl_2500"] for r in records]
        best = [min(e["values"]["val/rkl_2500"] for e in r) for r in records]
        modes = [max(e["values"]["val/modes_2500"] for e in r) for r in records]
        row = grouped[n_critic]
        for stat, values in (("final", final), ("best", best)):
            mean, se = statistics.mean(values), statistics.stdev(values) / math.sqrt(2)
            assert float(row[f"{stat}:val/rkl_2500:mean"]) == pytest.approx(mean)
            assert float(row[f"{stat}:val/rkl_2500:se"]) == pytest.approx(se)
        assert float(row["best:val/modes_2500:mean"]) == pytest.approx(statistics.mean(modes))
    assert [len(r) for rs in runs.values() for r in rs] == [2] * 4  # evaluated at 10 and 20


def test_difference_columns_are_exactly_the_swept_key(sweep: Path, made: Path) -> None:
    runs = [read_run(p) for p in report.find_runs([sweep])]
    assert report.differing_keys(runs) == ["n_critic"]
    header = (made / "report.csv").read_text().splitlines()[0].split(",")
    assert header[: header.index("g_steps")] == ["run", "seed", "n_critic"]
    text = (made / "report.md").read_text()
    assert "differ in `n_critic`." in text
    assert "| n_critic | n | seeds | g_steps | final val/modes_2500 |" in text


def test_per_run_csv_parses_with_one_row_per_run(made: Path) -> None:
    rows = read_csv(made / "report.csv")
    assert [(r["run"], r["seed"], r["n_critic"]) for r in rows] == [
        ("0", "0", "1"),
        ("1", "0", "2"),
        ("2", "1", "1"),
        ("3", "1", "2"),
    ]
    for row in rows:
        assert float(row["best:val/rkl_2500"]) <= float(row["final:val/rkl_2500"])
        assert int(row["best_at:val/rkl_2500"]) in (10, 20)
        assert math.isfinite(float(row["final:train/d_loss"]))
        assert math.isfinite(float(row["final:train/g_loss"]))


def test_curves_are_valid_pngs_one_per_metric(made: Path) -> None:
    names = sorted(p.name for p in made.glob("curves_*.png"))
    assert names == [
        "curves_val_hq_percent_2500.png",
        "curves_val_modes_2500.png",
        "curves_val_rkl_2500.png",
        "curves_val_score_2500.png",
    ]
    for name in names:
        with Image.open(made / name) as image:
            image.verify()
        with Image.open(made / name) as image:
            assert image.format == "PNG" and image.size[0] > 300
        assert f"]({name})" in (made / "report.md").read_text()


def test_console_prints_the_grouped_table_and_where_the_report_is(sweep, tmp_path, capsys):
    report.main([str(sweep / "0"), str(sweep / "1"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| n_critic | n | seeds |")
    assert f"Report: {(tmp_path / 'out' / 'report.md').resolve()}" in out
    assert len(read_csv(tmp_path / "out" / "report.csv")) == 2


def test_crashed_run_and_run_without_metrics_are_reported(sweep: Path, tmp_path: Path) -> None:
    crashed = copy_run(sweep / "0", tmp_path / "runs" / "crashed")
    first, second = (crashed / "metrics.jsonl").read_text().splitlines()
    (crashed / "metrics.jsonl").write_text(first + "\n" + second[:40])  # killed mid-write
    (crashed / "csv" / "metrics.csv").unlink()
    plain = copy_run(sweep / "1", tmp_path / "runs" / "no_metrics")
    (plain / "metrics.jsonl").unlink()
    report.make_report([tmp_path / "runs"], tmp_path / "out")
    rows = {row["run"]: row for row in read_csv(tmp_path / "out" / "report.csv")}
    assert rows["crashed"]["g_steps"] == "10" and rows["crashed"]["final:train/d_loss"] == ""
    assert (
        float(rows["crashed"]["final:val/rkl_2500"]) == json.loads(first)["values"]["val/rkl_2500"]
    )
    assert rows["no_metrics"]["final:val/rkl_2500"] == ""
    assert math.isfinite(float(rows["no_metrics"]["final:train/g_loss"]))


def one_line_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as stop:
        report.main(list(args))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_an_empty_folder_is_one_line(tmp_path: Path, capsys) -> None:
    line = one_line_error(capsys, str(tmp_path))
    assert line.startswith("error: no run folders (with .hydra/config.yaml) under")
    assert "Traceback" not in line
    assert "is not a folder" in one_line_error(capsys, str(tmp_path / "missing"))


def test_corrupt_files_are_one_line(sweep: Path, tmp_path: Path, capsys) -> None:
    run = copy_run(sweep / "0", tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0][:30] + "\n" + lines[1] + "\n")
    line = one_line_error(capsys, str(run), "--out", str(tmp_path / "out"))
    assert f"{run / 'metrics.jsonl'}:1 is not JSON" in line
    (run / ".hydra" / "config.yaml").write_text("seed: [0\n  n_critic: {")
    line = one_line_error(capsys, str(run), "--out", str(tmp_path / "out"))
    assert f"{run / '.hydra' / 'config.yaml'} is not readable YAML" in line
