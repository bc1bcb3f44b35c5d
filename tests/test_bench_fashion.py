"""The Fashion-MNIST FID-vs-time harness (`make bench-fashion`), run on digits for speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import TINY_DIGITS
from gan_runner.bench import fashion
from gan_runner.bench.seeds import machine
from gan_runner.errors import UserError
from gan_runner.metrics.fidelity import FidelityEvaluation
from gan_runner.metrics.torchscript import TorchScriptFeatures
from helpers_torchscript import PooledFeatures, scripted

QUICK = ["metrics=[]", "train.g_steps=100000"]


def small_inception(path: Path, n_fake: int) -> FidelityEvaluation:
    extractor = TorchScriptFeatures(
        str(scripted(PooledFeatures(16), path)), num_features=16, resolution=24
    )
    return FidelityEvaluation(
        extractor, ["fid"], n_fake, cache_dir=str(path.parent), show_progress=False
    )


def test_fid_is_scored_on_a_training_clock_that_stops_at_the_budget(tmp_path, monkeypatch) -> None:
    # As main() composes it; each evaluation takes 1 s more, which must stay off the clock.
    cfg = fashion.compose_run("digits", 0, [*TINY_DIGITS[1:], *QUICK], tmp_path)
    score = fashion.TimedEvaluation._score

    def slow_score(self, trainer, pl_module):
        score(self, trainer, pl_module)
        time.sleep(1.0)

    monkeypatch.setattr(fashion.TimedEvaluation, "_score", slow_score)
    curve, final = (
        small_inception(tmp_path / "net.pt", 100),
        small_inception(tmp_path / "net.pt", 300),
    )
    result = fashion.train_timed(cfg, curve, final, every_s=0.5, budget_s=1.5)
    rows, fid = result["rows"], "fid_inception_100_train"
    assert result["curve_names"] == [fid] and list(result["final"]) == ["fid_inception_300_train"]
    # The untrained generator first, then every 0.5 s of training until 1.5 s have passed.
    assert rows[0]["g_steps"] == 0 and rows[0]["train_minutes"] == 0
    assert len(rows) == 4, rows
    assert all(a["g_steps"] < b["g_steps"] for a, b in zip(rows, rows[1:]))
    assert rows[-1]["train_minutes"] * 60 >= 1.5 > rows[-2]["train_minutes"] * 60
    seconds = [row["train_minutes"] * 60 for row in rows]
    assert all(b - a < 0.9 for a, b in zip(seconds, seconds[1:])), seconds  # no eval in a gap
    assert all(row[fid] > 0 for row in rows)
    assert result["provenance"]["implementation"] == "torchscript"
    assert result["provenance"]["n_fake"] == 300 and result["g_steps"] == rows[-1]["g_steps"]

    report = {"command": "bench", "seed": 0, "machine": machine(), "machine_end": machine()}
    report |= {"curve_name": fid, "final_name": "fid_inception_300_train"}
    report |= {"provenance": result["provenance"], "recipes": {"wgan_gp": result}}
    table = fashion.markdown(report)
    final = result["final"]["fid_inception_300_train"]
    assert f"| wgan_gp | `model=wgan_gp arch=dcgan` | **{final:.1f}** |" in table
    assert "| 24.5 |" in table  # Lucic et al.'s WGAN-GP beside ours
    fashion.plot(report, tmp_path / "fid.png")
    assert (tmp_path / "fid.png").stat().st_size > 1000


def test_bad_budgets_are_one_line(capsys) -> None:
    assert fashion.main(["--minutes", "0", "--no-install"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --minutes 0.0") and err.count("\n") == 1


def test_dataset_present_installs_nothing(tmp_path, monkeypatch) -> None:
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    monkeypatch.setattr(fashion.subprocess, "run", pytest.fail)
    fashion.ensure_dataset(tmp_path)


def test_missing_dataset_without_apt_get_is_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(fashion.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        fashion.ensure_dataset(tmp_path)


def test_failed_install_says_how_to_fix_it(tmp_path, monkeypatch) -> None:
    calls = []

    class Failed:
        returncode = 100

    monkeypatch.setattr(fashion.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(fashion.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Failed)
    with pytest.raises(UserError, match="install dataset-fashion-mnist yourself"):
        fashion.ensure_dataset(tmp_path)
    # install, then one apt-get update, then install again
    assert [cmd[-1] for cmd in calls] == ["dataset-fashion-mnist", "-q", "dataset-fashion-mnist"]


def test_merge_keeps_earlier_rows_and_refuses_another_protocol(tmp_path) -> None:
    protocol = {"curve_name": "fid_inception_1k_test", "final_name": "fid_inception_10k_test"}
    protocol |= {"seed": 0, "minutes": 30.0, "inception": "torchscript 7ff4a85c3a6378f0"}
    earlier = {**protocol, "provenance": {"n_real": 10000}, "recipes": {"ns_gan": {"g": 1}}}
    path = tmp_path / "fashion.json"
    path.write_text(json.dumps(earlier))
    now = {**protocol, "command": "bench", "recipes": {}}
    report = fashion.merged(now, path)
    assert report["recipes"] == {"ns_gan": {"g": 1}} and report["command"] == "bench"
    assert fashion.merged(now, tmp_path / "absent.json") is now
    with pytest.raises(UserError, match=r"minutes=30.0.*same --minutes"):
        fashion.merged({**now, "minutes": 10.0}, path)
    # torch-fidelity's Inception names its FIDs as the TorchScript one does: refused too.
    with pytest.raises(UserError, match=r"inception=torchscript 7ff4.*--extractor"):
        fashion.merged({**now, "inception": "torch_fidelity 0123456789abcdef"}, path)
    path.write_text("[]")
    with pytest.raises(UserError, match="not a fashion.json"):
        fashion.merged(now, path)
