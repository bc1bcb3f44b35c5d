"""Checking a composed config before anything is built, with one-line errors that name the fix.

The conf folders are the registry: classes are found through `_target_`, and their constructor
signatures are the schema for their keys. Only the run-wide settings have a dataclass here.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gan_runner.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    g_steps: int = 2000
    log_every: int = 50
    batches_per_step: int | None = None  # None: as many as fit (GANDataModule.batches_per_step)

    def __post_init__(self) -> None:
        _at_least("train.g_steps", self.g_steps, 1)
        _at_least("train.log_every", self.log_every, 1)
        if self.batches_per_step is not None:
            _at_least("train.batches_per_step", self.batches_per_step, 1)


@dataclass
class CriticBoost:
    n_critic: int = 0
    first_g_steps: int = 0
    every_g_steps: int = 0

    def __post_init__(self) -> None:
        _at_least("n_critic_boost.n_critic", self.n_critic, 0)
        _at_least("n_critic_boost.first_g_steps", self.first_g_steps, 0)
        _at_least("n_critic_boost.every_g_steps", self.every_g_steps, 0)


@dataclass
class GradClip:
    """Largest gradient norm per player (null: unclipped), applied after AMP unscaling."""

    generator: float | None = None
    discriminator: float | None = None

    def __post_init__(self) -> None:
        for player in ("generator", "discriminator"):
            value = getattr(self, player)
            if value is not None and value <= 0:
                raise UserError(
                    f"grad_clip.{player}={value} is out of range: it must be > 0, or null "
                    "to leave that player's gradients unclipped"
                )


@dataclass
class RunSettings:
    """The run-wide keys of conf/train.yaml that are plain values, not `_target_` nodes."""

    seed: int = 0
    z_dim: int = 64
    n_critic: int = 1
    num_classes: int = 0
    accumulate: int = 1
    n_critic_boost: CriticBoost = field(default_factory=CriticBoost)
    train: TrainSettings = field(default_factory=TrainSettings)
    grad_clip: GradClip = field(default_factory=GradClip)

    def __post_init__(self) -> None:
        _at_least("seed", self.seed, 0)
        _at_least("z_dim", self.z_dim, 1)
        _at_least("n_critic", self.n_critic, 1)
        _at_least("num_classes", self.num_classes, 0)
        _at_least("accumulate", self.accumulate, 1)


def flat_keys(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys of plain values (lists as their text, as W&B gets them)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flat_keys(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: str(tree) if isinstance(tree, list) else tree}


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"{key}={value} is out of range: it must be >= {low}")


def check_run_settings(cfg: DictConfig) -> RunSettings:
    """Type- and range-check the run-wide keys; returns them as a dataclass."""
    keys = [f.name for f in RunSettings.__dataclass_fields__.values()]
    try:
        # Resolved in the whole config: conditional recipes set num_classes: ${data.num_classes}.
        values = {k: _resolved(cfg, k) for k in keys if k in cfg}
        merged = OmegaConf.merge(OmegaConf.structured(RunSettings), values)
        settings = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", "") or "?"
        raise UserError(
            f"{key}={_value_at(cfg, key)!r} has the wrong type or an unknown key: "
            f"{_first_line(error.msg)}; see `gan-run --cfg job` for the expected values"
        ) from None
    batch = cfg.data.get("batch_size")
    if settings.accumulate > 1 and isinstance(batch, int) and batch % settings.accumulate:
        raise UserError(
            f"accumulate={settings.accumulate} splits each batch into {settings.accumulate} "
            f"slices, but data.batch_size={batch} does not divide by it; use a batch size "
            f"that is a multiple of {settings.accumulate}"
        )
    num_data_classes = int(cfg.data.get("num_classes", 0))
    if settings.num_classes == 0 and _classes_from_data(cfg):
        raise UserError(
            f"model={chosen_option(cfg, 'model')} is class-conditional (num_classes: "
            f"${{data.num_classes}}) but data={chosen_option(cfg, 'data')} has no labels "
            f"(data.num_classes=0); {_labels_fix(cfg)}"
        )
    if settings.num_classes and cfg.data.get("labeled_per_class") is not None:
        raise UserError(
            f"num_classes={settings.num_classes} conditions both players on labels, but "
            f"data.labeled_per_class={cfg.data.labeled_per_class} hides most of them; set "
            "num_classes=0 (model=ssgan's critic reads them) or data.labeled_per_class=null"
        )
    if settings.num_classes > num_data_classes:
        data = chosen_option(cfg, "data")
        fix = (
            f"set num_classes=0 (unconditional) or num_classes={num_data_classes}"
            if num_data_classes
            else f"set num_classes=0, or give the data set labels: {_labels_fix(cfg)}"
        )
        labels = f"{num_data_classes} labelled classes" if num_data_classes else "no labels"
        raise UserError(f"num_classes={settings.num_classes} but data={data} has {labels}; {fix}")
    return settings


def _resolved(cfg: DictConfig, key: str) -> Any:
    """cfg[key] with its interpolations resolved, as plain values."""
    node = cfg[key]
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _classes_from_data(cfg: DictConfig) -> bool:
    """Whether num_classes follows the data set's class count (what conditional recipes set)."""
    node = cfg._get_node("num_classes")
    return node is not None and str(node._value()).replace(" ", "") == "${data.num_classes}"


def _labels_fix(cfg: DictConfig) -> str:
    if list(cfg.data.shape) == [1]:  # gauss1d and mixture1d have no classes to label
        return "1D data sets have no classes; choose a labelled data set (data=digits)"
    if len(cfg.data.shape) == 1:  # a 2D mixture labels each point by its mode when asked
        return (
            "set data.num_classes to its number of modes (ring8: 8, grid25: 25) to label each "
            "point by its mode, or choose a labelled data set (data=digits)"
        )
    return "choose a labelled data set (data=digits, mnist, cifar10) or set data.num_classes"


def check_launch(cfg: DictConfig) -> None:
    """Refuse a Hydra multirun whose jobs would each start Lightning's subprocess DDP.

    Lightning re-executes sys.argv for ranks > 0, `-m` and the sweep lists included, so every
    rank would run the whole sweep in its own multirun folder (PITFALLS.md §2.2).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    if str(HydraConfig.get().launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return  # one SLURM task per device: Lightning's SLURMEnvironment re-runs nothing
    trainer = cfg.trainer
    devices, nodes = trainer.get("devices", 1), int(trainer.get("num_nodes", 1) or 1)
    several = (
        nodes > 1
        or devices in ("auto", -1, "-1")
        or (isinstance(devices, int) and devices > 1)
        or (isinstance(devices, (list, ListConfig)) and len(devices) > 1)
    )
    strategy = str(trainer.get("strategy", "auto"))
    relaunches = strategy in ("auto", "ddp") or strategy.startswith("ddp_find_unused")
    if several and relaunches:
        raise UserError(
            f"gan-run -m with trainer.devices={devices} and trainer.strategy={strategy} would "
            "re-run the whole sweep in every DDP rank; use trainer.strategy=ddp_spawn, or one "
            "launcher job per run (e.g. hydra/launcher=submitit_slurm, or torchrun per run)"
        )


def check_targets(node: Any, path: str = "") -> None:
    """Every `_target_` must import, and every key must be one of its constructor's arguments."""
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            check_targets(item, f"{path}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node:
        _check_target_node(node, path)
    for key in node:
        if not str(key).startswith("_"):
            check_targets(node._get_node(key), f"{path}.{key}" if path else str(key))


def _check_target_node(node: DictConfig, path: str) -> None:
    target = node._target_
    try:
        obj = get_object(target)
    except Exception:
        raise UserError(
            f"{path}._target_={target!r} cannot be imported; check the dotted path"
        ) from None
    function = obj.__init__ if inspect.isclass(obj) else obj
    signature = inspect.signature(function)
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    hints = _type_hints(function)
    for key in node:
        key = str(key)
        if key.startswith("_"):
            continue
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = (
                f"did you mean '{path}.{close[0]}'?"
                if close
                else (f"{obj.__name__} accepts {', '.join(p for p in params if p != 'self')}")
            )
            raise UserError(f"unknown key '{path}.{key}' for {obj.__name__}; {hint}")
        _check_type(path, key, node._get_node(key), hints.get(key))


def _type_hints(function: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:
        return {}


_SCALARS = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _check_type(path: str, key: str, value_node: Any, hint: Any) -> None:
    if hint is None or OmegaConf.is_missing(value_node._get_parent(), key):
        return
    value = value_node._value()
    if value is None or OmegaConf.is_interpolation(value_node._get_parent(), key):
        return
    allowed = _allowed_scalars(hint)
    if not allowed or isinstance(value, (DictConfig, ListConfig)):
        return
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if not ok:
        names = " or ".join(sorted({t.__name__ for t in allowed}))
        raise UserError(f"{path}.{key}={value!r} has the wrong type: expected {names}")


def _allowed_scalars(hint: Any) -> tuple[type, ...]:
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    if any(option not in _SCALARS and option is not type(None) for option in options):
        return ()
    return tuple(t for option in options if option in _SCALARS for t in _SCALARS[option])


def _value_at(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=False)
    except Exception:
        return None


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0] if text else ""


def chosen_option(cfg: DictConfig, group: str) -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices.get(group))
    except Exception:
        return group


# Top-level nodes whose keys are checked where they are read, so an added key that nothing reads
# fails there: the run-wide settings (RunSettings), speed (SpeedSettings), and the groups of
# objects that are all instantiated (callbacks, logger, regularizer, metrics).
_CHECKED_ROOTS = frozenset(
    [*RunSettings.__dataclass_fields__, "speed", "callbacks", "logger", "regularizer", "metrics"]
)
_REFERENCE = re.compile(r"\$\{\s*(?:oc\.select\s*:\s*)?([A-Za-z_][\w.]*)\s*[,}]")


def unused_additions(cfg: DictConfig) -> list[str]:
    """A warning line for each `+key=value` override of this job that no part of the run reads.

    Hydra's `+` adds a key on purpose, so it is not refused; but `+trian.g_steps=5` would
    otherwise train the default without a word. An added key is read when it existed in the
    config composed without the additions (`+key` may set a null), sits under a `_target_`
    node (passed to that constructor, which check_targets lets refuse it), sits under a node
    whose keys are checked where they are read (_CHECKED_ROOTS), or is named by an
    interpolation. The rest, e.g. `+anything=1` or `+optimizer.lr=0.1`, nothing reads.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    try:
        parsed = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    except Exception:  # noqa: BLE001 - Hydra parsed them already; a check never stops a run
        return []
    choices = set(hydra_cfg.runtime.choices)
    added = [
        o
        for o in parsed
        if (o.is_add() or o.is_force_add())
        and o.package is None
        and "/" not in o.key_or_group
        and o.key_or_group not in choices
        and o.key_or_group.split(".")[0] not in (*_CHECKED_ROOTS, "hydra")
    ]
    if not added:
        return []
    base = _compose_without(hydra_cfg.job.config_name, [o for o in parsed if o not in added])
    if base is None:
        return []
    references = _references(cfg)
    known = [k for k in _dotted_keys(base) if not k.startswith("hydra")]
    lines = []
    for override in added:
        key = override.key_or_group
        if _exists(base, key) or _under_target(base, key) or _referenced(key, references):
            continue
        hint = _close_keys(key, known)
        lines.append(
            f"{override.input_line}: no part of the run reads '{key}', so it changes nothing; "
            f"{hint}training goes on without it"
        )
    return lines


def _close_keys(key: str, known: list[str]) -> str:
    """'did you mean ...? ' for a misspelt or misplaced key, else where to look the keys up."""
    candidates = [k for k in known if not key.startswith(f"{k}.")]  # not its own parents
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.75)
    if not close:  # the right name in the wrong place: +optimizer.lr -> optimizer.generator.lr
        top, leaf = key.split(".")[0], key.rsplit(".", 1)[-1]
        close = [k for k in candidates if k.startswith(f"{top}.") and k.endswith(f".{leaf}")][:2]
    if close:
        return f"did you mean {' or '.join(repr(k) for k in close)}? "
    return "check the spelling with `gan-run --cfg job`; "


def warn_unused_additions(cfg: DictConfig) -> None:
    """Log one warning line per added key that nothing reads (unused_additions)."""
    for line in unused_additions(cfg):
        log.warning(line)


def _compose_without(config_name: str | None, kept: list[Any]) -> DictConfig | None:
    """The job's config composed from the same overrides less the additions, or None."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    hydra = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    if hydra is None:
        return None
    try:
        return hydra.compose_config(
            config_name, [o.input_line for o in kept], RunMode.RUN, validate_sweep_overrides=False
        )
    except Exception:  # noqa: BLE001 - e.g. a kept override needed an addition: no warning
        return None


_ABSENT = object()


def _exists(cfg: DictConfig, key: str) -> bool:
    try:
        found = OmegaConf.select(
            cfg, key, default=_ABSENT, throw_on_missing=False, throw_on_resolution_failure=False
        )
    except Exception:  # noqa: BLE001 - e.g. a key below a plain value
        return False
    return found is not _ABSENT


def _under_target(cfg: DictConfig, key: str) -> bool:
    parts = key.split(".")
    node: Any = cfg
    for part in parts[:-1]:
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
        if isinstance(node, DictConfig) and "_target_" in node:
            return True
    return False


def _references(cfg: Any) -> set[str]:
    """The keys that interpolations anywhere in `cfg` name (${a.b}, ${oc.select:a.b,...})."""
    found: set[str] = set()
    if isinstance(cfg, (DictConfig, ListConfig)):
        keys = cfg.keys() if isinstance(cfg, DictConfig) else range(len(cfg))
        for key in keys:
            node = cfg._get_node(key)
            if isinstance(node, (DictConfig, ListConfig)) and not node._is_interpolation():
                found |= _references(node)
            else:
                value = node._value() if node is not None else None
                if isinstance(value, str) and "${" in value:
                    found.update(_REFERENCE.findall(value))
    return found


def _referenced(key: str, references: set[str]) -> bool:
    return any(
        ref == key or ref.startswith(f"{key}.") or key.startswith(f"{ref}.") for ref in references
    )


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    if isinstance(node, DictConfig):
        for key in node:
            key = str(key)
            if key.startswith("_"):
                continue
            keys.append(f"{prefix}{key}")
            keys.extend(_dotted_keys(node._get_node(key), f"{prefix}{key}."))
    return keys
