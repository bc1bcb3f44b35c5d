"""DDP on the CPU with two gloo processes: the strategy a GAN needs, identical weights on every
rank after training (gradient penalty included), per-rank noise, and evaluations that score the
samples of all ranks and agree on every rank."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig

from conftest import QUICK, compose_config
from gan_runner.errors import UserError
from gan_runner.metrics.base import (
    fake_batches,
    gather_rows,
    rank_rows,
    rank_share,
    sum_over_ranks,
)
from gan_runner.metrics.fidelity import FidelityEvaluation
from gan_runner.metrics.mixture import mode_statistics
from gan_runner.train import assemble, build, build_module, build_trainer, gan_strategy

G_STEPS = 20
SMALL = (
    "arch.generator.hidden=[32,32]",
    "arch.discriminator.hidden=[32,32]",
    "data.source.n_samples=4096",
    "data.batch_size=64",
    "z_dim=8",
    "metrics=[mixture]",
    "metrics.mixture.scatter_dir=null",
    "callbacks.metrics.every=10",
    f"train.g_steps={G_STEPS}",
    *(f"callbacks.{c}=null" for c in ("samples", "checkpoint", "loss_curve", "progress")),
)
TWO_RANKS = ("trainer.devices=2", "trainer.strategy=ddp_spawn")


# ----------------------------------------------------------------- the strategy
@pytest.mark.parametrize("launcher", ["ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_each_ddp_launcher_becomes_its_variant_that_finds_unused_parameters(launcher):
    assert gan_strategy(launcher) == f"{launcher}_find_unused_parameters_true"
    for kept in ("auto", "single_device", "ddp_find_unused_parameters_true", "fsdp"):
        assert gan_strategy(kept) == kept


def test_a_strategy_that_forbids_unused_parameters_is_a_one_line_error():
    with pytest.raises(UserError, match="use trainer.strategy=ddp_spawn$"):
        gan_strategy("ddp_spawn_find_unused_parameters_false")


@pytest.mark.parametrize(
    ("strategy", "launcher"),
    [("auto", "_SubprocessScriptLauncher"), ("ddp_spawn", "_MultiProcessingLauncher")],
)
def test_two_cpu_devices_get_gloo_ddp_that_finds_unused_parameters(make_cfg, strategy, launcher):
    cfg = make_cfg("trainer.devices=2", f"trainer.strategy={strategy}")
    trainer = build_trainer(cfg, [], [])  # builds, launches nothing
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 2
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is True
    assert type(trainer.strategy.launcher).__name__ == launcher
    assert trainer.strategy._get_process_group_backend() == "gloo"


# ----------------------------------------------------------------- one DDP run, two ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pixels:
    """A row-wise 'extractor': the first pixels as features, the next ones as class logits."""

    name, num_features = "pixels", 6

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = images.flatten(1)
        return flat[:, :6], flat[:, 6:10]


def fidelity(n_fake: int) -> FidelityEvaluation:
    evaluation = FidelityEvaluation(
        Pixels(), ["fid", "kid", "is", "pr", "dc", "modes"], n_fake, kid_subset_size=10,
        kid_subsets=5, is_splits=2, show_progress=False,
    )  # fmt: skip
    real = torch.randn(40, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    evaluation._real = evaluation._real_statistics(iter(real.split(16)), 40)
    return evaluation


def fakes(n: int) -> torch.Tensor:
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 1.3 + 0.2


def sharing_helpers() -> dict:
    """What this rank gets from the helpers every evaluation shares its samples with."""
    rank = dist.get_rank()
    return {
        "share": rank_share(5),
        "rows": rank_rows(torch.arange(10).view(5, 2)),
        "gathered": gather_rows(torch.full((rank + 2, 3), float(rank))),  # 2 and 3 rows
        "summed": sum_over_ranks(torch.tensor([rank + 1.0, 10.0], dtype=torch.float64)),
        "scores": fidelity(25).score(rank_rows(fakes(25)).split(4)),
    }


def parameters(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Parameters only: DDP hands every rank rank 0's buffers (BatchNorm statistics) at the
    # start of each step, and each rank's own batch updates them after that.
    return {name: p.detach().clone() for name, p in net.named_parameters()}


class RankDump(pl.Callback):
    """Saves what one rank holds at the start and end of training to <dirpath>/rank<r>.pt."""

    def __init__(self, dirpath: Path, probe_helpers: bool = False) -> None:
        self.dirpath, self.probe_helpers, self.start = str(dirpath), probe_helpers, {}

    def on_train_start(self, trainer, pl_module) -> None:
        noise = torch.Generator().set_state(pl_module.noise.get_state())
        self.start = {
            "first_z": pl_module.latent.sample(4, pl_module.z_dim, noise),
            "generator": parameters(pl_module.generator),
            "discriminator": parameters(pl_module.discriminator),
        }

    def on_train_end(self, trainer, pl_module) -> None:
        dumped = {
            "start": self.start,
            "world": trainer.world_size,
            "g_steps": pl_module.counters.g_steps,
            "generator": parameters(pl_module.generator),
            "discriminator": parameters(pl_module.discriminator),
            "ema": pl_module.generator_ema.state_dict(),
            "ema_parameters": parameters(pl_module.generator_ema),
            "metrics": {
                k: float(v) for k, v in trainer.callback_metrics.items() if k[:4] == "val/"
            },
        }
        if self.probe_helpers:  # the process group is live: every rank calls them
            dumped["helpers"] = sharing_helpers()
        torch.save(dumped, Path(self.dirpath) / f"rank{trainer.global_rank}.pt")


def fit_on_two_ranks(cfg, out: Path, probe_helpers: bool = False) -> list[dict]:
    run = assemble(cfg)
    callbacks = [*run.callbacks, RankDump(out, probe_helpers)]
    with pytest.MonkeyPatch.context() as env:  # Lightning leaves its rendezvous in os.environ
        env.setenv("MASTER_ADDR", "127.0.0.1")
        env.setenv("MASTER_PORT", str(_free_port()))
        build_trainer(cfg, callbacks, run.loggers).fit(run.module, datamodule=run.datamodule)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[DictConfig, list[dict]]:
    """The default recipe trained by two gloo ranks (ddp_spawn): its config, each rank's dump."""
    out = tmp_path_factory.mktemp("ddp")
    cfg = compose_config([*QUICK, *SMALL, *TWO_RANKS], out / "run")
    return cfg, fit_on_two_ranks(cfg, out, probe_helpers=True)


def check_ranks_agree(ranks: list[dict]) -> None:
    zero, one = ranks
    assert zero["world"] == one["world"] == 2
    assert zero["g_steps"] == one["g_steps"] == G_STEPS
    assert not torch.equal(zero["start"]["first_z"], one["start"]["first_z"])  # own noise
    for name, value in zero["ema_parameters"].items():
        assert torch.equal(value, one["ema_parameters"][name]), f"generator_ema.{name} differs"
    for player in ("generator", "discriminator"):
        assert zero[player].keys() == one[player].keys()
        for name, value in zero[player].items():
            assert torch.equal(value, one[player][name]), f"{player}.{name} differs across ranks"
        # (Not every tensor moves: a Wasserstein critic's last bias gets no gradient.)
        start = zero["start"][player]
        assert any(not torch.equal(v, start[k]) for k, v in zero[player].items()), player


def test_ddp_keeps_weights_identical_across_ranks_that_draw_their_own_noise(default_run):
    check_ranks_agree(default_run[1])


def test_ddp_with_a_gradient_penalty_keeps_weights_identical_across_ranks(make_cfg, tmp_path):
    cfg = make_cfg(*SMALL, *TWO_RANKS, "model=wgan_gp")
    check_ranks_agree(fit_on_two_ranks(cfg, tmp_path))


def test_every_rank_logs_the_evaluation_of_both_ranks_shares(default_run):
    cfg, (zero, one) = default_run
    assert zero["metrics"] == one["metrics"] and zero["metrics"]
    # The mixture protocol over both shares, each drawn with its rank's evaluation seed and its
    # own EMA generator (whose BatchNorm statistics are that rank's).
    module, shares = build_module(cfg), []
    for rank, dumped in enumerate((zero, one)):
        module.generator.load_state_dict(dumped["ema"])
        generator = torch.Generator().manual_seed(cfg.seed * 2 + rank)
        shares += fake_batches(module, 1250, 2500, generator)
    source = build(cfg, "data").source
    stats = mode_statistics(torch.cat(shares), source.means, source.std)
    assert zero["metrics"]["val/modes_2500"] == stats.modes
    assert zero["metrics"]["val/hq_percent_2500"] == 100.0 * stats.hq_fraction
    assert zero["metrics"]["val/rkl_2500"] == stats.reverse_kl
    assert math.isfinite(stats.reverse_kl)


def test_shares_split_n_with_the_remainder_first_and_rows_gather_in_rank_order(default_run):
    helpers = [dumped["helpers"] for dumped in default_run[1]]
    assert [h["share"] for h in helpers] == [3, 2]
    assert helpers[0]["rows"].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert helpers[1]["rows"].tolist() == [[6, 7], [8, 9]]
    expected = torch.cat([torch.zeros(2, 3), torch.ones(3, 3)])
    for h in helpers:
        assert torch.equal(h["gathered"], expected)  # the padding is cut back off
        assert h["summed"].tolist() == [3.0, 20.0]
    assert (rank_share(5), rank_rows(torch.arange(4)).tolist()) == (5, [0, 1, 2, 3])  # no DDP


def test_every_rank_scores_all_fakes_as_one_process_would(default_run):
    zero, one = (dumped["helpers"]["scores"] for dumped in default_run[1])
    assert zero == one
    for name, value in fidelity(25).score(fakes(25).split(4)).items():
        if name.startswith("fid_"):  # FID's fake sums are added over ranks: last bits differ
            assert zero[name] == pytest.approx(value, rel=1e-9)
        else:  # the other scores read the gathered rows themselves
            assert zero[name] == value, name
