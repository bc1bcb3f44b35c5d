"""Console entry points: `gan-run` (train), `gan-sample`, `gan-eval` (checkpoints), `gan-report`
(comparing run folders), `gan-list`."""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
from collections.abc import Callable
from importlib.resources import files
from typing import Any

import hydra
import hydra._internal.utils as hydra_utils
from hydra.errors import MissingConfigException
from omegaconf import DictConfig

from gan_runner.errors import UserError

CONFIG_PATH = "pkg://gan_runner.conf"
CONFIG_NAME = "train"


def config_dir() -> Any:
    """The folder of Hydra config groups (conf/ in a checkout, gan_runner/conf when installed)."""
    return files("gan_runner.conf")


def group_options(group: str) -> list[str]:
    folder = config_dir() / group
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _command() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "gan-run"


def _top_level_keys() -> list[str]:
    from omegaconf import OmegaConf

    root = OmegaConf.load(str(config_dir() / f"{CONFIG_NAME}.yaml"))
    groups = [p.name for p in config_dir().iterdir() if p.is_dir()]
    return [str(k) for k in root if k != "defaults"] + groups


def describe_error(error: BaseException) -> str:
    """One line for a configuration error, naming the key, the value and the fix."""
    if isinstance(error, UserError):
        return str(error)
    message = str(error)
    if isinstance(error, MissingConfigException) or "Could not find '" in message:
        match = re.search(r"Could not (?:find|load) '([\w/]+)/([^']+)'", message)
        if match:
            group, value = match.groups()
            options = group_options(group)
            close = difflib.get_close_matches(value, options, n=1)
            hint = f"did you mean {group}={close[0]}? " if close else ""
            return f"unknown option {group}={value}; {hint}choose one of: {', '.join(options)}"
    if error.__cause__ is not None:
        message = f"{message}\n{error.__cause__}"
    match = re.search(r"Key '([^']+)' (?:is not in struct|not in '\w+')", message)
    if match:
        key = re.search(r"full_key: (\S+)", message)
        full = key.group(1) if key else match.group(1)
        close = difflib.get_close_matches(full, _top_level_keys(), n=1) if "." not in full else []
        hint = f"did you mean '{close[0]}'? " if close else ""
        return (
            f"unknown key '{full}'; {hint}check spelling with `{_command()} --cfg job`, or add a "
            f"new key with +{full}=..."
        )
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(error).__name__


def _report_in_one_line(func: Any) -> Any:
    """Hydra's error reporter, replaced: errors a user can fix print one line, not a traceback."""
    from gan_runner.sweeps import raise_failed_jobs, sweep_error

    try:
        result = func()
        raise_failed_jobs()  # a multirun that finished with failed jobs exits with their summary
        return result
    except Exception as error:  # noqa: BLE001 - every failure is reported, bugs with a traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # A multirun whose jobs failed: one line naming them; a resolver's UserError, unwrapped.
        error = sweep_error(error)
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(error, (UserError, HydraException, OmegaConfBaseException)):
            print(f"error: {describe_error(error)}", file=sys.stderr)
            sys.exit(2)
        raise


def _hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """A Hydra app over conf/<config_name>.yaml whose fixable errors print one line.

    UserErrors are reported inside the job, so Hydra adds no "Error executing job" preamble.
    """

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def job(cfg: DictConfig) -> Any:
            try:
                return task(cfg)
            except UserError as error:
                from gan_runner.sweeps import in_multirun

                if in_multirun():
                    raise  # Hydra records the failed job and runs the others (gan_runner.sweeps)
                print(f"error: {error}", file=sys.stderr)
                sys.exit(2)

        return hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(
            job
        )

    return decorate


def _launch(app: Callable[[], Any]) -> None:
    # Hydra (pinned <1.4) reports errors through this module-level function; ours keeps
    # fixable errors to one line. The test suite checks the behaviour, not the mechanism.
    hydra_utils.run_and_report = _report_in_one_line
    app()


@_hydra_app(CONFIG_NAME)
def _main(cfg: DictConfig) -> float | None:
    from gan_runner.sweeps import sweep_value
    from gan_runner.train import train

    return sweep_value(cfg, train(cfg))


@_hydra_app("sample")
def _sample_main(cfg: DictConfig) -> None:
    from gan_runner.sample import sample as draw

    draw(cfg)


@_hydra_app("eval")
def _eval_main(cfg: DictConfig) -> None:
    from gan_runner.evaluate import evaluate as score

    score(cfg)


def run() -> None:
    """`gan-run [overrides]`: compose conf/train.yaml with the overrides and train."""
    _launch(_main)


def sample() -> None:
    """`gan-sample ckpt=<path> [mode=grid n=64 out=...]`: compose conf/sample.yaml and draw."""
    _launch(_sample_main)


def evaluate() -> None:
    """`gan-eval ckpt=<path> | folders=[<reals>,<fakes>] [metrics=[fid,kid,is,pr] ...]`."""
    # Hydra would read metrics=[...] as a choice of the config group conf/metrics (training's
    # evaluations): gan-eval's list is the key `scores`, and metrics= its command-line alias.
    sys.argv = [re.sub(r"^metrics=", "scores=", arg) for arg in sys.argv]
    _launch(_eval_main)


def report() -> None:
    """`gan-report <run or multirun folders> [--out DIR]`: compare runs from their folders."""
    from gan_runner.report import main

    main()


def _description(path: Any) -> str:
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
        if line and not line.startswith("#"):
            break
    return ""


def list_options() -> None:
    """`gan-list`: every option of every config group with its one-line description."""
    root = config_dir()
    groups = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    for group in groups:
        print(f"{group}:")
        for name in group_options(group):
            print(f"  {name:<18} {_description(root / group / f'{name}.yaml')}")
