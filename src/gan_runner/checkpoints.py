"""Reading gan-run checkpoints safely and rebuilding the model they hold, with no other input.

A checkpoint carries its resolved run config (`checkpoint["gan_runner"]["config"]`), so the
networks are rebuilt from it by `train.build_module`, which touches no data files.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gan_runner.config import check_targets
from gan_runner.errors import UserError
from gan_runner.module import CHECKPOINT_FORMAT, CHECKPOINT_KEY, GANModule

PASS_INSTEAD = "pass a checkpoint written by gan-run (<run folder>/checkpoints/last.ckpt)"
# The config nodes build_module instantiates; the rest (data, callbacks, trainer) is not needed.
MODEL_NODES = (
    "arch",
    "objective",
    "regularizer",
    "optimizer",
    "schedule",
    "latent",
    "game",
    "terms",
)
# Rebuilding calls the callables a checkpoint's config names: a file could name any (os.system),
# which would undo weights_only. These prefixes are run; others only when the user trusts them.
TRUSTED_TARGETS = ("gan_runner.", "torch.optim.")


def load_checkpoint(path: str | Path, key: str = "ckpt") -> dict[str, Any]:
    """The checkpoint at `path`, loaded with weights_only=True and checked to be gan-run's."""
    path = Path(path)
    _check_path(path, key)
    checkpoint = _torch_load(path, key)
    state = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise UserError(
            f"{key}={path} is a torch file but not a gan-run checkpoint (no '{CHECKPOINT_KEY}' "
            f"entry); {PASS_INSTEAD}"
        )
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{key}={path} has checkpoint format {state.get('format')!r} but this gan_runner "
            f"reads format {CHECKPOINT_FORMAT}; use the gan_runner version that wrote it"
        )
    if not isinstance(state.get("config"), dict) or not isinstance(
        checkpoint.get("state_dict"), dict
    ):
        raise UserError(
            f"{key}={path} lacks its run config or its weights (a partial save?); {PASS_INSTEAD}"
        )
    return checkpoint


def _check_path(path: Path, key: str = "ckpt") -> None:
    if path.is_dir():
        last = path / "checkpoints" / "last.ckpt"
        hint = f"pass {key}={last}" if last.is_file() else PASS_INSTEAD
        raise UserError(f"{key}={path} is a folder, not a checkpoint file; {hint}")
    if not path.is_file():
        raise UserError(f"{key}={path} does not exist; {PASS_INSTEAD}")


def _torch_load(path: Path, key: str = "ckpt") -> Any:
    try:
        # weights_only: a checkpoint is data; unpickling arbitrary code from a file is refused.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load raises any type on a foreign file
        message = str(error)
        code = re.search(r"GLOBAL ([\w.]+)", message)
        if code:
            raise UserError(
                f"{key}={path} holds pickled Python code ({code.group(1)}), which "
                f"torch.load(weights_only=True) refuses to run; {PASS_INSTEAD}"
            ) from None
        first = message.strip().splitlines()[0][:80] if message.strip() else ""
        raise UserError(
            f"{key}={path} is not a readable torch checkpoint, or is truncated "
            f"({type(error).__name__}: {first}); {PASS_INSTEAD}"
        ) from None


def run_config(checkpoint: dict[str, Any]) -> DictConfig:
    """The resolved run config stored in a checkpoint loaded by `load_checkpoint`."""
    return OmegaConf.create(stored_config(checkpoint[CHECKPOINT_KEY]))


def stored_config(state: dict[str, Any]) -> dict[str, Any]:
    """The run config in a checkpoint's gan_runner state, in this version's terms.

    Runs from before players, phases and games stored no `game`: theirs was the adversarial game
    (the default's players and phases give the same trajectory bit for bit), with no terms.
    """
    config = dict(state["config"])
    if "game" not in config:
        from gan_runner.cli import config_dir  # cli imports Hydra's app machinery

        game = OmegaConf.load(str(config_dir() / "game" / "adversarial.yaml"))
        merged = OmegaConf.merge(OmegaConf.create(config), {"game": game, "terms": {}})
        config = OmegaConf.to_container(merged, resolve=True)
    return config


def check_targets_trusted(cfg: DictConfig, path: Path, extra: Sequence[str] = ()) -> None:
    """One line for a model `_target_` outside gan_runner.*, torch.optim.* and `extra` prefixes."""
    model = OmegaConf.masked_copy(cfg, [node for node in MODEL_NODES if node in cfg])
    refuse_untrusted(model, "", path, extra)


def refuse_untrusted(node: Any, where: str, path: Any, extra: Sequence[str] = ()) -> None:
    """One line for any `_target_` under a stored config node (`where` its dotted name) outside
    the trusted prefixes: a checkpoint file could name any callable."""
    trusted = (*TRUSTED_TARGETS, *extra)
    for at, target in named_targets(OmegaConf.to_container(node), where):
        if not target.startswith(trusted):
            module = target.rsplit(".", 1)[0]
            raise UserError(
                f"ckpt={path} names {at}._target_={target}, which is not run from a file "
                f"unless trusted; if you wrote this checkpoint, pass trusted_targets=[{module}.]"
            )


def named_targets(node: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield where, str(value)
            else:
                yield from named_targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from named_targets(value, f"{where}[{i}]")


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` (CUDA when available), or a torch device name checked to exist, as one line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name} is not a torch device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is available; use device=cpu")
    return device


def rebuild(
    path: str | Path,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    trusted_targets: Sequence[str] = (),
) -> tuple[GANModule, DictConfig]:
    """(GANModule in eval mode with the checkpoint's weights, its resolved run config).

    With `use_ema` and an EMA generator in the checkpoint, `module.sampling_generator` is the EMA
    copy; otherwise the EMA weights are left out and it is the live generator. Classes named by
    the stored config are built only from gan_runner.*, torch.optim.* and `trusted_targets`.
    """
    from gan_runner.train import build_module  # train imports Lightning's trainer stack

    checkpoint = load_checkpoint(path)
    cfg = run_config(checkpoint)
    check_targets_trusted(cfg, path, trusted_targets)
    try:
        for node in MODEL_NODES:
            check_targets(cfg.get(node), node)
        module = build_module(cfg)
    except UserError as error:
        raise UserError(f"ckpt={path}: its config no longer builds here: {error}") from None
    except OmegaConfBaseException as error:  # a key this version reads that the file lacks
        key = getattr(error, "full_key", None) or ""
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        what = f"lacks '{key}'" if "Missing key" in detail and key else f"fails here ({detail})"
        raise UserError(
            f"ckpt={path}: its stored config {what}, which this gan_runner needs to rebuild the "
            "model (the file was written by another version); use the gan_runner version that "
            "wrote it, or train it again"
        ) from None
    state = checkpoint["state_dict"]
    has_ema = any(key.startswith("generator_ema.") for key in state)
    if use_ema and has_ema:
        module.generator_ema = copy.deepcopy(module.generator).requires_grad_(False)
    else:
        state = {k: v for k, v in state.items() if not k.startswith("generator_ema.")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[1:2] or [""]
        raise UserError(
            f"ckpt={path}: the weights do not match the config stored beside them "
            f"({detail[0].strip()[:120]}); {PASS_INSTEAD}"
        ) from None
    return module.to(resolve_device(device)).eval(), cfg
