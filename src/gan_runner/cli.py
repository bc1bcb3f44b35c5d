"""Console entry points: `gan-run` (train), `gan-sample`, `gan-eval` (checkpoints), `gan-report`
(comparing run folders), `gan-theory` (the theory checks), `gan-list`."""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import hydra
import hydra._internal.utils as hydra_utils
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf

from gan_runner.errors import (
    Output,
    UserError,
    describe_file_error,
    exception_chain,
    file_error,
    report_file_error,
    traceback_frames,
)

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
    """Hydra's error reporter, replaced: errors a user can fix print one line, not a traceback.

    Errors inside a job are reported by the job (`_hydra_app`); what arrives here was raised by
    Hydra around it: e.g. a hydra.run.dir that cannot be created, or a multirun's failures.
    """
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
        if report_file_error(error, _hydra_outputs(error)):
            sys.exit(2)
        raise


def _hydra_outputs(error: BaseException) -> list[Output]:
    """The run or sweep folder Hydra was making when `error` was raised (its frames say)."""
    for link in exception_chain(error):
        for frame in reversed(list(traceback_frames(link))):
            names = frame.f_locals
            if not str(frame.f_globals.get("__name__", "")).startswith("hydra."):
                continue
            if "output_dir" in names and "job_dir_key" in names:  # core.utils.run_job
                key, folder = str(names["job_dir_key"]), Path(str(names["output_dir"]))
                root = folder.parent if names.get("job_subdir_key") else folder
                return [Output(root, f"choose another {key}", key)]
            if "sweep_dir" in names:  # the sweeper's or the launcher's
                key = "hydra.sweep.dir"
                return [Output(Path(str(names["sweep_dir"])), f"choose another {key}", key)]
    return []


def _cache_dir() -> Path:
    # As gan_runner.metrics.extractors.default_cache_dir, without importing torch.
    return Path(os.environ.get("GAN_RUNNER_CACHE", "~/.cache/gan_runner")).expanduser()


def _run_outputs(cfg: DictConfig) -> list[Output]:
    """Where gan-run writes: its run folder; the metric cache and the data folder (downloads)."""
    from hydra.core.hydra_config import HydraConfig

    from gan_runner.sweeps import in_multirun

    folder = Path(str(OmegaConf.select(cfg, "paths.output_dir", default=None) or "."))
    if in_multirun():
        key = "hydra.sweep.dir"
        outputs = [Output(Path(HydraConfig.get().sweep.dir), f"choose another {key}", key)]
        outputs.append(Output(folder, f"choose another {key}"))  # resume=auto may move it
    else:
        outputs = [Output(folder, "choose another hydra.run.dir", "hydra.run.dir")]
    outputs.append(Output(_cache_dir(), "set GAN_RUNNER_CACHE to another folder", always=False))
    data = OmegaConf.select(cfg, "paths.data_dir", default=None, throw_on_resolution_failure=False)
    if data:
        outputs.append(
            Output(Path(str(data)), "set GAN_RUNNER_DATA to another folder", always=False)
        )
    return outputs


def _sample_outputs(cfg: DictConfig) -> list[Output]:
    """Where gan-sample writes: out, else <mode>.png or samples/ (as gan_runner.sample.sample)."""
    out = cfg.get("out") or (
        "samples" if cfg.get("mode") == "folder" else f"{cfg.get('mode')}.png"
    )
    return [Output(Path(str(out)), "pass out=<another path>", "out")]


def _eval_outputs(cfg: DictConfig) -> list[Output]:
    """Where gan-eval writes: out, else <run folder>/eval next to ckpt, else ./eval_report."""
    if cfg.get("out"):
        out = Path(str(cfg.out))
        root, key = (out.with_suffix("") if out.suffix in (".json", ".md") else out), "out"
    elif cfg.get("ckpt"):
        ckpt = Path(str(cfg.ckpt))
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        root, key = run / "eval", None
    else:
        root, key = Path("eval_report"), "out"
    cache = Path(str(cfg.cache_dir)).expanduser() if cfg.get("cache_dir") else _cache_dir()
    return [
        Output(root, "pass out=<another path>", key),
        Output(cache, "set cache_dir=<another folder>", always=False),
    ]


def _hydra_app(
    config_name: str, outputs: Callable[[DictConfig], list[Output]]
) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """A Hydra app over conf/<config_name>.yaml whose fixable errors print one line.

    UserErrors and failed file operations (a full disk, a file where a folder should be, a
    missing input: gan_runner.errors.file_error) are reported inside the job, so Hydra adds no
    "Error executing job" preamble; `outputs(cfg)` says where the command writes, for the fix.
    Nothing already written is removed. Other exceptions are bugs: they keep their traceback.
    """

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def job(cfg: DictConfig) -> Any:
            from gan_runner.sweeps import in_multirun

            try:
                return task(cfg)
            except UserError as error:
                if in_multirun():
                    raise  # Hydra records the failed job and runs the others (gan_runner.sweeps)
                print(f"error: {error}", file=sys.stderr)
                sys.exit(2)
            except Exception as error:
                failure = file_error(error)
                if failure is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                line = describe_file_error(failure, _outputs_of(outputs, cfg))
                if in_multirun():
                    raise UserError(line) from error  # the job fails with this line
                print(f"error: {line}", file=sys.stderr, flush=True)
                sys.exit(2)

        return hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(
            job
        )

    return decorate


def _outputs_of(outputs: Callable[[DictConfig], list[Output]], cfg: DictConfig) -> list[Output]:
    try:
        return outputs(cfg)
    except Exception:  # noqa: BLE001 - an unreadable setting: the line names the path alone
        return []


def _launch(app: Callable[[], Any]) -> None:
    # Hydra (pinned <1.4) reports errors through this module-level function; ours keeps
    # fixable errors to one line. The test suite checks the behaviour, not the mechanism.
    hydra_utils.run_and_report = _report_in_one_line
    app()


@_hydra_app(CONFIG_NAME, _run_outputs)
def _main(cfg: DictConfig) -> float | None:
    from gan_runner.config import warn_unused_additions
    from gan_runner.sweeps import sweep_value
    from gan_runner.train import train

    warn_unused_additions(cfg)
    return sweep_value(cfg, train(cfg))


@_hydra_app("sample", _sample_outputs)
def _sample_main(cfg: DictConfig) -> None:
    from gan_runner.sample import sample as draw

    draw(cfg)


@_hydra_app("eval", _eval_outputs)
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

    try:
        main()
    except Exception as error:
        if report_file_error(
            error, [Output(_report_out(sys.argv[1:]), "pass --out <another folder>", "--out")]
        ):
            sys.exit(2)
        raise


def theory() -> None:
    """`gan-theory [--checks ...] [--out DIR]`: GAN theory checked on 1D Gaussians, a report."""
    from gan_runner.theory import main, theory_out

    try:
        sys.exit(main())
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:
        if report_file_error(
            error, [Output(theory_out(sys.argv[1:]), "pass --out <another folder>", "--out")]
        ):
            sys.exit(2)
        raise


def _report_out(args: list[str]) -> Path:
    """gan-report's --out, or its default <first folder>/report."""
    folders: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--out" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--out="):
            return Path(arg.removeprefix("--out="))
        if not arg.startswith("-") and (i == 0 or args[i - 1] != "--out"):
            folders.append(arg)
    return Path(folders[0]) / "report" if folders else Path("report")


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
