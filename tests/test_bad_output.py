"""Outputs that cannot be written and inputs that cannot be read end in one line, no traceback.

Every console command (gan-run, gan-sample, gan-eval, gan-report) turns a failed file operation
into one line on stderr that names the path and the fix, with exit code 2, and keeps what it
wrote before. Real conditions where root can make them: a file where a folder should be, a
symlink to /dev/full (every write fails with ENOSPC); torch.save's full disk and unreadable
inputs are monkeypatched, as the tests run as root.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import pytest
import torch

from conftest import call_console
from gan_runner import cli
from gan_runner.errors import Output, describe_file_error, file_error
from gan_runner.module import CHECKPOINT_KEY

FAST = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger=none"]
# ring8 for 4 generator steps, a checkpoint every 2 of them; no evaluation or sample grid.
QUICK_RUN = [
    *FAST,
    "train.g_steps=4",
    "callbacks.checkpoint.every=2",
    "callbacks.metrics=null",
    "callbacks.samples=null",
]
FULL = Path("/dev/full")  # every write to it fails with ENOSPC, for root too
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux)")


def console(entry, name: str, monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    return call_console(entry, name, monkeypatch, capsys, *args)


def one_error_line(code: int, out: str, err: str) -> str:
    """The single `error: ...` line a fixable failure ends with (exit code 2, no traceback)."""
    assert code == 2, (code, out[-2000:], err[-3000:])
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def a_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder\n")
    return path


def torch_write_failure() -> NoReturn:
    """What torch.save raises when the disk fills up (seen on a 2.6 MB tmpfs): its zip writer's
    RuntimeError, raised while handling the OSError that file.write raised."""
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as full:
        error = RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 520 vs 52"
        )
        error.__context__ = full
    raise error


def g_steps_of(checkpoint: Path) -> int:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return int(state[CHECKPOINT_KEY]["counters"]["g_steps"])


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `gan-run` folder: .hydra/, metrics.jsonl, checkpoints/last.ckpt (2D ring8)."""
    folder = tmp_path_factory.mktemp("made") / "run"
    args = [*FAST, "train.g_steps=2", f"hydra.run.dir={folder}"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder.parent)
        mp.setattr(sys, "argv", ["gan-run", *args])
        mp.delenv("HYDRA_FULL_ERROR", raising=False)
        cli.run()
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    return folder


# ------------------------------------------------------------------- hydra.run.dir (Hydra's own)
@pytest.mark.parametrize("inside", [True, False], ids=["below-a-file", "is-a-file"])
def test_a_run_dir_that_cannot_be_created_is_one_line(monkeypatch, capsys, tmp_path, inside):
    blocker = a_file(tmp_path / "taken")
    run_dir = blocker / "run" if inside else blocker
    monkeypatch.chdir(tmp_path)
    code, out, err = console(
        cli.run, "gan-run", monkeypatch, capsys, f"hydra.run.dir={run_dir}", "train.g_steps=2"
    )
    line = one_error_line(code, out, err)
    assert line.startswith(f"error: cannot create hydra.run.dir={run_dir}: "), line
    name = f"{blocker} is a file, not a folder" if inside else "a file of that name is in the way"
    assert name in line, line
    assert line.endswith("move that file, or choose another hydra.run.dir"), line
    assert blocker.read_text() == "not a folder\n"  # nothing of the user's is touched


def test_a_sweep_dir_that_cannot_be_created_is_one_line(monkeypatch, capsys, tmp_path):
    blocker = a_file(tmp_path / "taken")
    monkeypatch.chdir(tmp_path)
    args = ["-m", "seed=1,2", f"hydra.sweep.dir={blocker / 'sweep'}", "train.g_steps=2"]
    code, out, err = console(cli.run, "gan-run", monkeypatch, capsys, *args)
    line = one_error_line(code, out, err)
    assert f"cannot create hydra.sweep.dir={blocker / 'sweep'}: {blocker} is a file" in line
    assert line.endswith("choose another hydra.sweep.dir"), line


# ----------------------------------------------------------------------------------- gan-run
def test_gan_run_a_file_where_a_folder_goes_keeps_the_checkpoint(monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    a_file(run / "samples")  # SampleGrid's folder
    monkeypatch.chdir(tmp_path)
    args = [*QUICK_RUN, "callbacks.samples.every=4", f"hydra.run.dir={run}"]
    args.remove("callbacks.samples=null")
    code, out, err = console(cli.run, "gan-run", monkeypatch, capsys, *args)
    line = one_error_line(code, out, err)
    assert line == (
        f"error: cannot create {run / 'samples'}: a file of that name is in the way; move that "
        "file, or choose another hydra.run.dir"
    ), line
    # The checkpoint of g_steps=2, written before the failure at 4, is kept and loads.
    assert g_steps_of(run / "checkpoints" / "last.ckpt") == 2
    assert (run / "checkpoints" / "g0000002.ckpt").is_file()


@needs_dev_full
def test_gan_run_on_a_full_disk_is_one_line_and_keeps_checkpoints(monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "loss_curve.png").symlink_to(FULL)  # written at the end, after the last checkpoint
    monkeypatch.chdir(tmp_path)
    code, out, err = console(
        cli.run, "gan-run", monkeypatch, capsys, *QUICK_RUN, f"hydra.run.dir={run}"
    )
    line = one_error_line(code, out, err)
    assert line == (
        f"error: cannot write {run / 'loss_curve.png'}: no space left on the disk; free space "
        "there, or choose another hydra.run.dir"
    ), line
    assert g_steps_of(run / "checkpoints" / "last.ckpt") == 4
    assert g_steps_of(run / "checkpoints" / "g0000002.ckpt") == 2


def test_gan_run_torch_save_on_a_full_disk_keeps_the_last_checkpoint(
    monkeypatch, capsys, tmp_path
):
    """torch.save into a full disk: an OSError that torch's writer re-raises as RuntimeError."""
    real_save = torch.save

    def full_from_g_step_4(obj, f, *args, **kwargs):
        if (
            isinstance(obj, dict)
            and obj.get(CHECKPOINT_KEY, {}).get("counters", {}).get("g_steps", 0) >= 4
        ):
            f.write(b"PK partial")
            torch_write_failure()
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_from_g_step_4)
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    code, out, err = console(
        cli.run, "gan-run", monkeypatch, capsys, *QUICK_RUN, f"hydra.run.dir={run}"
    )
    line = one_error_line(code, out, err)
    assert line == (
        f"error: cannot write {run / 'checkpoints' / 'last.ckpt'}: no space left on the disk; "
        "free space there, or choose another hydra.run.dir"
    ), line
    assert g_steps_of(run / "checkpoints" / "last.ckpt") == 2  # the previous save, intact
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the failed write's temporary only


@needs_dev_full
def test_a_multirun_job_that_cannot_write_fails_with_the_line(monkeypatch, capsys, tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "loss_curve.png").symlink_to(FULL)
    monkeypatch.chdir(tmp_path)
    args = ["-m", "seed=1", f"hydra.sweep.dir={sweep}", *QUICK_RUN]
    code, out, err = console(cli.run, "gan-run", monkeypatch, capsys, *args)
    assert code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: 1 of 1 jobs failed"), line
    expected = f"cannot write {sweep / '0' / 'loss_curve.png'}: no space left on the disk"
    assert expected in line and line.endswith("choose another hydra.sweep.dir"), line
    assert expected in (sweep / "failures.txt").read_text()
    assert g_steps_of(sweep / "0" / "checkpoints" / "last.ckpt") == 4


# -------------------------------------------------------------------------------- gan-sample
def test_gan_sample_out_below_a_file_is_one_line(monkeypatch, capsys, tmp_path, run_folder):
    blocker = a_file(tmp_path / "taken")
    ckpt = run_folder / "checkpoints" / "last.ckpt"
    out = blocker / "grid.png"
    code, o, err = console(
        cli.sample, "gan-sample", monkeypatch, capsys, f"ckpt={ckpt}", f"out={out}"
    )
    line = one_error_line(code, o, err)
    assert line == (
        f"error: cannot create out={out}: {blocker} is a file, not a folder; move that file, or "
        "pass out=<another path>"
    ), line


@needs_dev_full
def test_gan_sample_on_a_full_disk_is_one_line(monkeypatch, capsys, tmp_path, run_folder):
    out = tmp_path / "grid.png"
    out.symlink_to(FULL)
    ckpt = run_folder / "checkpoints" / "last.ckpt"
    code, o, err = console(
        cli.sample, "gan-sample", monkeypatch, capsys, f"ckpt={ckpt}", f"out={out}"
    )
    line = one_error_line(code, o, err)
    assert line == (
        f"error: cannot write out={out}: no space left on the disk; free space there, or pass "
        "out=<another path>"
    ), line


def test_gan_sample_folder_mode_disk_full_is_one_line(monkeypatch, capsys, tmp_path, run_folder):
    real_write_text = Path.write_text

    def full(self, data, *args, **kwargs):
        if self.name != "points.csv":
            return real_write_text(self, data, *args, **kwargs)
        with open(self, "w") as handle:  # the file is opened, then the write fails
            handle.write(data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "points"
    ckpt = run_folder / "checkpoints" / "last.ckpt"
    args = [f"ckpt={ckpt}", "mode=folder", f"out={out}"]
    code, o, err = console(cli.sample, "gan-sample", monkeypatch, capsys, *args)
    line = one_error_line(code, o, err)
    assert line.startswith(f"error: cannot write {out / 'points.csv'}: no space left on the disk")
    assert line.endswith("pass out=<another path>"), line


def test_gan_sample_a_missing_checkpoint_is_one_line_naming_it(monkeypatch, capsys, tmp_path):
    missing = tmp_path / "nowhere" / "last.ckpt"
    code, o, err = console(cli.sample, "gan-sample", monkeypatch, capsys, f"ckpt={missing}")
    assert f"ckpt={missing} does not exist" in one_error_line(code, o, err)


def test_a_bug_keeps_its_traceback(monkeypatch, capsys, tmp_path, run_folder):
    from PIL import Image

    def bug(self, *args, **kwargs):
        try:
            raise FileNotFoundError(errno.ENOENT, "No such file", "x")
        except FileNotFoundError:
            raise KeyError("a bug while handling a file error")  # noqa: B904

    monkeypatch.setattr(Image.Image, "save", bug)
    ckpt = run_folder / "checkpoints" / "last.ckpt"
    args = [f"ckpt={ckpt}", f"out={tmp_path / 'grid.png'}"]
    with pytest.raises(KeyError, match="a bug while handling"):  # the script prints its traceback
        console(cli.sample, "gan-sample", monkeypatch, capsys, *args)


# ---------------------------------------------------------------------------------- gan-eval
def test_gan_eval_out_below_a_file_is_one_line(monkeypatch, capsys, tmp_path, run_folder):
    blocker = a_file(tmp_path / "taken")
    ckpt = run_folder / "checkpoints" / "last.ckpt"
    args = [f"ckpt={ckpt}", f"out={blocker / 'report'}", "n_samples=500"]
    code, o, err = console(cli.evaluate, "gan-eval", monkeypatch, capsys, *args)
    line = one_error_line(code, o, err)
    assert line == (
        f"error: cannot create out={blocker / 'report'}: {blocker} is a file, not a folder; "
        "move that file, or pass out=<another path>"
    ), line


@needs_dev_full
def test_gan_eval_on_a_full_disk_keeps_what_it_wrote(monkeypatch, capsys, tmp_path, run_folder):
    (tmp_path / "report.md").symlink_to(FULL)  # the JSON is written first, then the Markdown
    ckpt = run_folder / "checkpoints" / "last.ckpt"
    args = [f"ckpt={ckpt}", f"out={tmp_path / 'report'}", "n_samples=500"]
    code, o, err = console(cli.evaluate, "gan-eval", monkeypatch, capsys, *args)
    line = one_error_line(code, o, err)
    assert line == (
        f"error: cannot write {tmp_path / 'report.md'}: no space left on the disk; free space "
        "there, or pass out=<another path>"
    ), line
    assert json.loads((tmp_path / "report.json").read_text())["metrics"]


# -------------------------------------------------------------------------------- gan-report
def test_gan_report_out_below_a_file_is_one_line(monkeypatch, capsys, tmp_path, run_folder):
    blocker = a_file(tmp_path / "taken")
    args = [str(run_folder), "--out", str(blocker / "report")]
    code, o, err = console(cli.report, "gan-report", monkeypatch, capsys, *args)
    line = one_error_line(code, o, err)
    assert line == (
        f"error: cannot create --out={blocker / 'report'}: {blocker} is a file, not a folder; "
        "move that file, or pass --out <another folder>"
    ), line


@needs_dev_full
def test_gan_report_on_a_full_disk_keeps_what_it_wrote(monkeypatch, capsys, tmp_path, run_folder):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").symlink_to(FULL)  # written last
    args = [str(run_folder), "--out", str(out)]
    code, o, err = console(cli.report, "gan-report", monkeypatch, capsys, *args)
    line = one_error_line(code, o, err)
    assert line == (
        f"error: cannot write {out / 'report.md'}: no space left on the disk; free space there, "
        "or pass --out <another folder>"
    ), line
    assert (out / "report.csv").stat().st_size > 0


def test_gan_report_an_unreadable_input_is_one_line(monkeypatch, capsys, tmp_path, run_folder):
    real_read_text = Path.read_text

    def unreadable(self, *args, **kwargs):
        if self.name == "metrics.jsonl":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", unreadable)
    args = [str(run_folder), "--out", str(tmp_path / "report")]
    code, o, err = console(cli.report, "gan-report", monkeypatch, capsys, *args)
    line = one_error_line(code, o, err)
    assert line == (
        f"error: cannot read {run_folder / 'metrics.jsonl'}: permission denied; check its "
        "permissions"
    ), line


# ---------------------------------------------------------------- the chain, and the wording
def test_file_error_looks_through_torch_and_wrappers_but_not_into_bugs(tmp_path) -> None:
    def raised(make):
        try:
            make()
        except Exception as error:  # noqa: BLE001
            return error
        raise AssertionError("nothing raised")

    def torch_wrapped():
        path = tmp_path / "x.ckpt"  # noqa: F841 - the frame names the file being written
        torch_write_failure()

    found = file_error(raised(torch_wrapped))
    assert found is not None and found.errno == errno.ENOSPC and found.path == tmp_path / "x.ckpt"

    def caused():
        try:
            (tmp_path / "missing.txt").read_text()
        except OSError as error:
            raise ValueError("Unable to configure handler 'file'") from error

    found = file_error(raised(caused))
    assert found is not None and found.path == tmp_path / "missing.txt"

    def bug_in_handler():
        try:
            (tmp_path / "missing.txt").read_text()
        except OSError:
            return {}["key"]

    assert file_error(raised(bug_in_handler)) is None
    assert file_error(raised(lambda: {}["key"])) is None
    assert file_error(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) is None
    assert file_error(BrokenPipeError(errno.EPIPE, "Broken pipe")) is None


def test_an_atomic_writes_temporary_is_named_as_its_target(tmp_path) -> None:
    failure = file_error(
        OSError(errno.ENOSPC, "No space", str(tmp_path / ".last.ckpt.ab12cd34.tmp"))
    )
    assert failure is not None
    line = describe_file_error(failure, [Output(tmp_path, "choose another hydra.run.dir")])
    assert line.startswith(f"cannot write {tmp_path / 'last.ckpt'}: no space left on the disk")
