"""Bit identity: every recipe's training trajectory hashes to what it did at a trusted commit.

Each case trains a tiny run through the real config (`train(cfg)`), loads `checkpoints/last.ckpt`
and hashes its weights (G, D, the EMA generator, buffers), both optimizers' states and learning
rates, the latent noise stream's state, and the run's counters. tests/data/weight_hashes/
holds the hashes recorded at a commit whose trajectories are trusted (its `recorded_at`). A change
of the training loop that moves one bit of one case fails here and names the parts that moved.

The cases run exactly the overrides recorded in the JSON (its `common` list plus the case's own),
so later changes of conftest.QUICK do not change what is compared. `CASES` below is what
`--record` records; every case must be recorded, with the same overrides, and every recipe that
existed at 99d02eb must have one. A new case or recipe is added to the JSON deliberately:

    .venv/bin/python tests/test_bit_identity.py --record CASE [CASE ...]

(no CASE: every case; run it from a checkout whose trajectories you trust). The recorder trains
each case twice and refuses a case whose two runs differ.

Floats depend on the CPU's kernels (oneDNN/MKL pick code paths by instruction set) and on torch's
version, so tests/data/weight_hashes/ holds one JSON per kind of machine, each with a canary: the
hash of a fixed small seeded computation. The cases compare against the file whose canary and
torch version are this machine's; with none, they skip and say how to record one. A new kind of
machine is recorded with the trusted commit's code and this file's recorder:

    git worktree add /tmp/trusted 99d02eb
    ln -s /tmp/trusted/conf /tmp/trusted/src/gan_runner/conf
    PYTHONPATH=/tmp/trusted/src .venv/bin/python tests/test_bit_identity.py --record \
        --recorded-at 99d02eb
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from conftest import QUICK, TINY_DIGITS, compose_config

HERE = Path(__file__).resolve().parent
HASHES_DIR = HERE / "data" / "weight_hashes"  # one JSON per kind of machine

# Every recipe of conf/model/ at commit 99d02eb: each must keep a recorded case.
RECIPES_AT_99D02EB = ("dcgan", "gan", "lsgan", "nsgan", "sngan", "wgan", "wgan_gp")

# Quiet, file-free, metric-free runs; the EMA stays on so its weights are hashed too.
COMMON = [
    *QUICK,
    *(
        o
        for o in (
            "logger=none",
            "metrics=[]",
            "callbacks.metrics=null",
            "callbacks.samples=null",
            "callbacks.loss_curve=null",
            "callbacks.progress=null",
            "callbacks.checkpoint.keep_periodic=false",
        )
        if o not in QUICK
    ),
]

MLP_32 = ["arch.generator.hidden=[32,32]", "arch.discriminator.hidden=[32,32]"]
RESNET_8 = ["arch.generator.width=8", "arch.discriminator.width=8"]
# Logging every few G steps runs the grad-norm and log paths inside the recorded trajectory.
LOG = ["train.log_every=3"]

# id -> overrides (besides COMMON). Steps are generator steps; comments give the D steps.
CASES: dict[str, list[str]] = {
    # The default 2D recipe: mlp_2d players, island latent, Adam 2e-3/4e-3, linear LR decay,
    # zero_gp every 4th D step (fires at D steps 0, 4, 8 and 12 of 13).
    "default_ring8": ["data=ring8", *MLP_32, "data.batch_size=64", "train.g_steps=13", *LOG],
    "default_grid25": ["data=grid25", *MLP_32, "data.batch_size=64", "train.g_steps=13", *LOG],
    # n_critic 3 against the lazy interval 4: penalties land on every phase of the cycle
    # (8 G steps, 24 D steps).
    "default_ring8_n_critic3": [
        "data=ring8",
        *MLP_32,
        "data.batch_size=64",
        "n_critic=3",
        "train.g_steps=8",
        *LOG,
    ],
    # The MLP recipes on ring8.
    "gan_ring8": ["model=gan", "data=ring8", *MLP_32, "data.batch_size=64", "train.g_steps=10"],
    "nsgan_ring8": [
        "model=nsgan",
        "data=ring8",
        *MLP_32,
        "data.batch_size=64",
        "train.g_steps=10",
    ],
    "lsgan_ring8": [
        "model=lsgan",
        "data=ring8",
        *MLP_32,
        "data.batch_size=64",
        "train.g_steps=10",
        *LOG,
    ],
    # WGAN's own schedule: 100 critic steps for each of its first 25 G steps (3 G, 300 D steps).
    "wgan_ring8": ["model=wgan", "data=ring8", *MLP_32, "data.batch_size=32", "train.g_steps=3"],
    # The critic boost in and out: 7 critic steps for G steps 0-1 and every 5th (0, 5, 10),
    # n_critic 5 otherwise (12 G steps, 7+7+5+5+5+7+5+5+5+5+7+5 = 68 D steps).
    "wgan_ring8_boost": [
        "model=wgan",
        "data=ring8",
        *MLP_32,
        "data.batch_size=32",
        "n_critic_boost.n_critic=7",
        "n_critic_boost.first_g_steps=2",
        "n_critic_boost.every_g_steps=5",
        "train.g_steps=12",
        *LOG,
    ],
    # WGAN-GP on ring8 (MLP critic, layer norm; 4 G, 20 D steps).
    "wgan_gp_ring8": [
        "model=wgan_gp",
        "data=ring8",
        *MLP_32,
        "data.batch_size=64",
        "train.g_steps=4",
    ],
    # The convolutional recipes on digits at 8x8. DCGAN's batch 128 makes an epoch 14 batches:
    # 16 G steps cross an epoch (loader restart and reshuffle).
    "dcgan_digits": ["model=dcgan", *TINY_DIGITS, "train.g_steps=16", *LOG],
    # SNGAN: ResNet players, spectral norm, hinge (3 G, 15 D steps).
    "sngan_digits": [
        "model=sngan",
        "data=digits",
        "data.resolution=8",
        *RESNET_8,
        "data.batch_size=32",
        "train.g_steps=3",
    ],
    # WGAN-GP with its gradient penalty on a layer-norm DCGAN critic (4 G, 20 D steps).
    "wgan_gp_digits": [
        "model=wgan_gp",
        *TINY_DIGITS,
        "data.batch_size=32",
        "train.g_steps=4",
        *LOG,
    ],
    # Class-conditional runs (ring8 and grid25 have no labels): the base MLP on flattened
    # digits, a conditional DCGAN, and SNGAN's conditional BatchNorm with a projection critic.
    "conditional_mlp_digits": [
        "data=digits",
        "num_classes=10",
        "data.resolution=8",
        *MLP_32,
        "data.batch_size=32",
        "train.g_steps=8",
    ],
    "conditional_dcgan_digits": [
        "model=dcgan",
        *TINY_DIGITS,
        "num_classes=10",
        "data.batch_size=32",
        "train.g_steps=6",
    ],
    "conditional_sngan_digits": [
        "model=sngan",
        "data=digits",
        "num_classes=10",
        "data.resolution=8",
        *RESNET_8,
        "data.batch_size=32",
        "train.g_steps=2",
    ],
    # R1, lazy every 2nd D step, with n_critic 2 (8 G, 16 D steps).
    "r1_ring8": [
        "data=ring8",
        *MLP_32,
        "data.batch_size=64",
        "regularizer=[r1]",
        "regularizer.r1.every=2",
        "n_critic=2",
        "train.g_steps=8",
        *LOG,
    ],
    # Gradient clipping on both players. These tiny players' gradient norms are about 0.1 (D)
    # and 0.3 (G): a threshold of 1.0 would never clip, so these thresholds clip every step.
    "grad_clip_ring8": [
        "data=ring8",
        *MLP_32,
        "data.batch_size=64",
        "grad_clip.discriminator=0.05",
        "grad_clip.generator=0.1",
        "train.g_steps=10",
        *LOG,
    ],
}


# ----------------------------------------------------------------------------- hashing
def tensor_bytes(tensor: Tensor) -> bytes:
    """A tensor's raw bytes (any dtype, bfloat16 and bool included)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _feed(digest: Any, name: str, value: Any) -> None:
    if isinstance(value, Tensor):
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(tensor_bytes(value))
    else:
        digest.update(f"{name}|{value!r}|".encode())


def hash_named(items: Iterator[tuple[str, Any]]) -> str:
    digest = hashlib.sha256()
    for name, value in items:
        _feed(digest, name, value)
    return digest.hexdigest()


def _optimizer_items(state: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    # Every tensor of the per-parameter state (step, moments, momentum buffers), then each
    # group's current learning rate (the schedule's next step).
    for index in sorted(state["state"], key=int):
        for key in sorted(state["state"][index]):
            yield f"state/{index}/{key}", state["state"][index][key]
    for number, group in enumerate(state["param_groups"]):
        yield f"param_groups/{number}/lr", float(group["lr"])


def checkpoint_record(path: Path) -> dict[str, Any]:
    """What a trajectory left in its last checkpoint, hashed."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    weights = checkpoint["state_dict"]
    ours = checkpoint["gan_runner"]
    parts: dict[str, list[str]] = {}
    for key in sorted(weights):
        parts.setdefault(key.split(".")[0], []).append(key)
    return {
        "counters": dict(ours["counters"]),
        "state_dict": hash_named((key, weights[key]) for key in sorted(weights)),
        # Per top-level module (generator, discriminator, generator_ema, buffers): which moved.
        "state_dict_parts": {
            part: hash_named((key, weights[key]) for key in keys) for part, keys in parts.items()
        },
        "optimizers": [hash_named(_optimizer_items(s)) for s in checkpoint["optimizer_states"]],
        "noise": hash_named(iter([("noise", ours["ranks"][0]["noise"])])),
    }


def run_case(overrides: list[str], folder: Path) -> dict[str, Any]:
    """Train one case into `folder` (one torch thread) and hash its last checkpoint."""
    from gan_runner.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = compose_config(overrides, folder / "run")
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    return checkpoint_record(folder / "run" / "checkpoints" / "last.ckpt")


# ----------------------------------------------------------------------------- canary
def canary() -> str:
    """Bits of a fixed seeded computation that depend only on torch and this CPU's kernels.

    Linear, Conv2d, ConvTranspose2d, BatchNorm, LayerNorm, spectral norm, a double-backward
    input-gradient penalty, and Adam, RMSprop and SGD steps at sizes like the cases', on one
    thread, seeded (the global random state is restored afterwards).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)  # spectral norm draws its vectors from the global state
            return _canary()
    finally:
        torch.set_num_threads(threads)


def _canary() -> str:
    gen = torch.Generator().manual_seed(1234)
    conv = nn.Sequential(
        nn.ConvTranspose2d(8, 16, 4, 2, 1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, 1, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(16, 8, 4, 2, 1),
        nn.Flatten(),
        nn.LayerNorm(128),
        nn.Linear(128, 64),
        nn.Tanh(),
        nn.utils.parametrizations.spectral_norm(nn.Linear(64, 32)),
        nn.Linear(32, 1),
    )
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    x = torch.randn(32, 8, 4, 4, generator=gen).requires_grad_(True)
    out = conv(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    loss = out.square().mean() + grad.flatten(1).pow(2).sum(1).mean()
    loss.backward()
    outputs = [out.detach(), grad.detach(), loss.detach()]
    params = list(conv.parameters())
    for make in (
        lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.5, 0.999)),
        lambda ps: torch.optim.RMSprop(ps, lr=1e-3),
        lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.5),
    ):
        opt = make(params)
        opt.step()
        opt.step()
        outputs.extend(p.detach().clone() for p in params)
    return hash_named((f"canary/{i}", t) for i, t in enumerate(outputs))


# ----------------------------------------------------------------------------- tests
def _recordings() -> dict[Path, dict[str, Any]]:
    return {path: json.loads(path.read_text()) for path in sorted(HASHES_DIR.glob("*.json"))}


RECORDINGS = _recordings()
# Every case any machine recorded (each machine must record the same ones).
RECORDED_CASES = sorted({case for r in RECORDINGS.values() for case in r["cases"]})


def this_machines_file() -> Path | None:
    """The recording made on a machine that computes floats as this one does, if any."""
    here = canary()
    for path, recorded in RECORDINGS.items():
        if recorded.get("canary") == here and recorded.get("torch") == torch.__version__:
            return path
    return None


def how_to_record(case: str = "") -> str:
    command = " ".join(["python tests/test_bit_identity.py --record", *([case] if case else [])])
    return f"record it from a checkout whose trajectories you trust: `.venv/bin/{command}`"


@pytest.fixture(scope="module")
def comparable() -> dict[str, Any]:
    """This machine's recorded hashes, or a skip where no machine computing as it does recorded."""
    path = this_machines_file()
    if path is None:
        kinds = "; ".join(f"{r.get('cpu')}, torch {r.get('torch')}" for r in RECORDINGS.values())
        pytest.skip(
            "no recorded hashes from a machine that computes floats as this one does "
            f"({cpu_name()}, torch {torch.__version__}; recorded: {kinds or 'none'}); record "
            "this machine's at the trusted commit as tests/test_bit_identity.py's docstring shows"
        )
    return RECORDINGS[path]


@pytest.mark.parametrize("case", RECORDED_CASES)
def test_trajectory_is_bit_identical(case: str, comparable, tmp_path: Path) -> None:
    recorded = comparable["cases"].get(case)
    assert recorded is not None, f"case {case} is not recorded for this machine; {how_to_record()}"
    got = run_case([*comparable["common"], *recorded["overrides"]], tmp_path)
    moved = [key for key in got if got[key] != recorded[key]]
    if "state_dict_parts" in moved:  # name the modules whose weights or buffers moved
        now, then = got["state_dict_parts"], recorded["state_dict_parts"]
        moved.remove("state_dict_parts")
        moved += [f"state_dict[{p}]" for p in sorted({*now, *then}) if now.get(p) != then.get(p)]
    assert not moved, (
        f"case {case}: the trajectory moved since {recorded['recorded_at']} "
        f"({', '.join(moved)}); counters now {got['counters']}, then {recorded['counters']}"
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_case_is_recorded(case: str) -> None:
    assert RECORDINGS, f"tests/data/weight_hashes/ holds no recording; {how_to_record()}"
    for path, recorded in RECORDINGS.items():
        mine = recorded["cases"].get(case)
        assert mine is not None, f"case {case} has no hashes in {path.name}; {how_to_record(case)}"
        assert mine["overrides"] == CASES[case], (
            f"case {case}'s overrides changed since {path.name} recorded it; {how_to_record(case)}"
        )


@pytest.mark.parametrize("recipe", RECIPES_AT_99D02EB)
def test_every_recipe_of_99d02eb_has_a_case(recipe: str) -> None:
    cases = [
        name
        for recorded in RECORDINGS.values()
        for name, r in recorded["cases"].items()
        if f"model={recipe}" in r["overrides"]
    ]
    assert cases, (
        f"recipe {recipe} (conf/model/{recipe}.yaml) has no recorded trajectory; add a case to "
        f"CASES in tests/test_bit_identity.py and {how_to_record('CASE')}"
    )


# ----------------------------------------------------------------------------- recorder
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return (
                    f"{line.split(':', 1)[1].strip()} ({torch.backends.cpu.get_cpu_capability()})"
                )
    except OSError:
        pass
    return torch.backends.cpu.get_cpu_capability()


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(cases: list[str], recorded_at: str) -> None:
    """Train each case twice, refuse one whose runs differ, and write its hashes to this
    machine's JSON in tests/data/weight_hashes/ (other machines' files are left as they are).

    All cases: the file is rewritten (or made). Some: they are added or replaced in this
    machine's existing file, with its common overrides.
    """
    import lightning

    path = this_machines_file()
    everything = set(cases) == set(CASES)
    if path is None and not everything:
        raise SystemExit(
            "no recording from this machine yet: record every case (no CASE arguments) first"
        )
    if path is None:
        slug = re.sub(r"[^a-z0-9]+", "-", cpu_name().lower()).strip("-")
        path = HASHES_DIR / f"{slug}-{canary()[:12]}.json"
    data = RECORDINGS.get(path, {"cases": {}})
    if everything:
        data = {
            "recorded_at": recorded_at,
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "cpu": cpu_name(),
            "canary": canary(),
            "common": COMMON,
            "cases": {},
        }
    for case in cases:
        runs = []
        for _ in range(2):
            with tempfile.TemporaryDirectory() as folder:
                runs.append(run_case([*data["common"], *CASES[case]], Path(folder)))
        if runs[0] != runs[1]:
            raise SystemExit(f"case {case}: two runs differ, the trajectory is not deterministic")
        data["cases"][case] = {"overrides": CASES[case], "recorded_at": recorded_at, **runs[0]}
        print(f"{case}: {runs[0]['counters']}", flush=True)
    data["cases"] = dict(sorted(data["cases"].items()))
    HASHES_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--record", action="store_true", help="record hashes into the JSON")
    parser.add_argument("cases", nargs="*", help="cases to record (default: all)")
    parser.add_argument("--recorded-at", default=None, help="the commit (default: git HEAD)")
    args = parser.parse_args()
    if not args.record:
        parser.error("pass --record (the tests run under pytest)")
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {sorted(CASES)}")
    record(args.cases or sorted(CASES), args.recorded_at or _commit())


if __name__ == "__main__":
    main()
