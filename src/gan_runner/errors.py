"""Errors a user can fix: the CLI prints them as one line, without a traceback.

Besides `UserError`, a failed file operation is one: a disk that is full, a folder that cannot
be written, a file where a folder should be, a file that does not exist. `file_error` finds
it in whatever an exception chain a command ended with (Lightning and torch.save wrap it), and
`describe_file_error` words it as one line that names the path and the fix.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any


class UserError(Exception):
    """Bad input (config, data, checkpoint) explained in one line that names the fix."""


@dataclass(frozen=True)
class Output:
    """A place a command writes to, and how the user points the command elsewhere.

    `always`: every failure under `root` is a failure to write (a run folder, out=...); else only
    failures that writing alone causes (disk full, read-only) are (a cache, a data folder).
    """

    root: Path
    fix: str
    key: str | None = None  # the setting that chose root, named when root itself cannot be made
    always: bool = True


@dataclass(frozen=True)
class FileError:
    """The failed file operation inside an exception chain."""

    errno: int | None
    reason: str
    path: Path | None


# errnos of file operations; others (ECONNREFUSED, ...) are not about the user's files.
_FILE_ERRNOS = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EIO,
    errno.ENAMETOOLONG,
    errno.ELOOP,
}
# Errors that only writing causes: the path is an output even outside a command's own folders.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
# torch.save's C++ writer reports a failed write (a full disk among them) as a RuntimeError.
_TORCH_WRITE = re.compile(r"PytorchStreamWriter failed|inline_container\.cc|iostream error")
_TORCH_NO_PARENT = re.compile(r"Parent directory (.+) does not exist")
# Locals that name the file a frame was reading or writing, most specific first.
_PATH_LOCALS = (
    "path",
    "filepath",
    "file_path",
    "filename",
    "fname",
    "out",
    "output_dir",
    "dirpath",
)
_FILE_LOCALS = ("f", "fp", "file", "handle", "fh", "self")
# A temporary file of an atomic write (AtomicCheckpointIO: .<name>.<random>.tmp): name the target.
_TEMPORARY = re.compile(r"^\.(.+)\.\w{8}\.tmp$")


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and what it wraps: its causes always; its context when torch wrapped it.

    A context is followed only from an OSError or a plain RuntimeError (torch.save raises one
    while its OSError is handled): a bug raised in an `except OSError:` block stays a bug.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__ and (
            isinstance(current, OSError) or type(current) is RuntimeError
        ):
            current = current.__context__
        else:
            current = None


def file_error(error: BaseException) -> FileError | None:
    """The failed file operation `error` comes from, or None (a bug, a network error, ...)."""
    chain = list(exception_chain(error))
    for link in chain:
        if isinstance(link, OSError) and _about_files(link):
            path = link.filename if link.filename not in (None, "") else None
            found = Path(os.fsdecode(path)) if path is not None else _path_in_frames(chain)
            return FileError(link.errno, link.strerror or str(link), found)
    for link in chain:
        if type(link) is RuntimeError:
            missing = _TORCH_NO_PARENT.search(str(link))
            if missing:
                return FileError(errno.ENOENT, "No such file or directory", Path(missing[1]))
            if _TORCH_WRITE.search(str(link)):
                path = _path_in_frames(chain)
                return FileError(_full_disk(path), "the write failed", path)
    return None


def _about_files(error: OSError) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError)) or error.errno == errno.EPIPE:
        return False
    if type(error).__module__.startswith(("urllib", "socket", "ssl", "http")):
        return False
    return error.filename is not None or error.errno in _FILE_ERRNOS


def _path_in_frames(chain: Sequence[BaseException]) -> Path | None:
    """The file the innermost frames of the chain were working on (the OSError has no name)."""
    for link in reversed(chain):  # the innermost exception's frames first
        for frame in reversed(list(traceback_frames(link))):
            found = _path_local(frame.f_locals)
            if found is not None:
                return found
    return None


def traceback_frames(error: BaseException) -> Iterator[Any]:
    """The frames of `error`'s traceback, outermost first."""
    tb: TracebackType | None = error.__traceback__
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def _path_local(names: dict[str, Any]) -> Path | None:
    for name in _PATH_LOCALS:
        value = names.get(name)
        if isinstance(value, (str, os.PathLike)) and str(value):
            return Path(value)
    for name in _FILE_LOCALS:
        value = names.get(name)
        if isinstance(value, Path):
            return value
        if hasattr(value, "write") and isinstance(getattr(value, "name", None), str):
            return Path(value.name)
    return None


def _full_disk(path: Path | None) -> int | None:
    """ENOSPC when the disk holding `path` has (almost) no room left, else None (unknown)."""
    if path is None:
        return None
    folder = _existing(path)
    try:
        return errno.ENOSPC if shutil.disk_usage(folder).free < 1 << 20 else None
    except OSError:
        return None


def _existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _blocker(path: Path) -> Path | None:
    """The file that stands where a folder of `path` should be."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _relation(path: Path, output: Output) -> str | None:
    """'root' when `path` is output.root or a folder above it, 'inside' when it is under it."""
    here, root = _resolved(path), _resolved(output.root)
    if here == root or here in root.parents:
        return "root"
    if root in here.parents or (here.parent == root.parent and here.stem == root.stem):
        return "inside"  # the same stem: out=grid.png also writes grid.gif, out=r writes r.json
    return None


def describe_file_error(failure: FileError, outputs: Sequence[Output] = ()) -> str:
    """One line: what could not be read or written, why, and the fix."""
    code = failure.errno
    path = failure.path
    if path is None and outputs:
        path = outputs[0].root
    if path is None:  # no name anywhere: say what failed
        reason = failure.reason[:1].lower() + failure.reason[1:]
        return f"a file operation failed: {reason}; check the paths the command reads and writes"
    match = _TEMPORARY.match(path.name)
    path = path.with_name(match[1]) if match else path
    relation, output = None, None
    for candidate in outputs:
        relation = _relation(path, candidate)
        if relation and (candidate.always or code in _WRITE_ERRNOS or code is None):
            output = candidate
            break
    if output is None and (code in _WRITE_ERRNOS or code is None):
        output = Output(path, "write elsewhere", always=False)
    if output is None:
        return _reading(failure, path)
    what = str(path)
    if relation == "root" and output.key:
        what = f"{output.key}={output.root}"
    named = what == str(path) or _resolved(path) == _resolved(output.root)
    why, fix = _why_not_written(failure, path, named), output.fix
    blocker = (
        _blocker(path) if path is not None and code in (errno.ENOTDIR, errno.EEXIST) else None
    )
    if code in (errno.ENOSPC, errno.EDQUOT, None):
        fix = f"free space there, or {fix}"
    elif blocker is not None and blocker.is_file():
        fix = f"move that file, or {fix}"
    # A folder is created (the run folder, or a folder above a file); a file is written.
    folder = relation == "root" and (_resolved(path) != _resolved(output.root) or not path.suffix)
    verb = "create" if folder or code == errno.EEXIST else "write"
    return f"cannot {verb} {what}: {why}; {fix}"


def _why_not_written(failure: FileError, path: Path | None, named: bool) -> str:
    """Why `path` cannot be written; `named`: the line names path already (else this does)."""
    code = failure.errno
    if code in (errno.ENOTDIR, errno.EEXIST) and path is not None:
        blocker = _blocker(path)
        if blocker is not None:
            kind = "a file" if blocker.is_file() else "not a folder"
            if named and _resolved(blocker) == _resolved(path):
                return f"{kind} of that name is in the way" if blocker.is_file() else kind
            return f"{blocker} is {kind}" + (", not a folder" if blocker.is_file() else "")
    if code == errno.ENOSPC:
        why = "no space left on the disk"
    elif code == errno.EDQUOT:
        why = "disk quota exceeded"
    elif code == errno.EROFS:
        why = "the file system is read-only"
    elif code in (errno.EACCES, errno.EPERM):
        why = "permission denied" if code == errno.EACCES else "operation not permitted"
    elif code == errno.EISDIR:
        why = "it is a folder, not a file" if named else f"{path} is a folder, not a file"
    elif code == errno.ENOENT:
        why = "no such file or folder"
    elif code is None:
        why = "the write failed (is the disk full?)"
    else:
        why = failure.reason[:1].lower() + failure.reason[1:]
    return why if named or path is None or code == errno.EISDIR else f"{why} ({path})"


def _reading(failure: FileError, path: Path | None) -> str:
    code = failure.errno
    if code == errno.ENOENT:
        return f"{path} does not exist; check the path"
    if code == errno.ENOTDIR and path is not None and _blocker(path) is not None:
        return f"{path} does not exist: {_blocker(path)} is a file, not a folder; check the path"
    if code == errno.EISDIR:
        return f"{path} is a folder where a file was expected; check the path"
    if code in (errno.EACCES, errno.EPERM):
        return f"cannot read {path}: permission denied; check its permissions"
    reason = failure.reason[:1].lower() + failure.reason[1:]
    return f"cannot read {path}: {reason}; check the path"


def report_file_error(error: BaseException, outputs: Sequence[Output] = ()) -> bool:
    """Print the one line for a file error in `error` and return True; False if it has none."""
    failure = file_error(error)
    if failure is None:
        return False
    print(f"error: {describe_file_error(failure, outputs)}", file=sys.stderr, flush=True)
    return True
