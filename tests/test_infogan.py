"""InfoGAN: the code layout in z, the mutual-information term by hand, who trains Q, the
refusals, the traversal grid, and codes that learn what they stand for.

The training tests are held to zoo-games.md §3.4's measurements: on ring8 an 8-way categorical
code sends each category to its own mode (purity 1.000 against 0.16-0.22 without the MI term);
on scikit-learn's digits a 10-way code clusters the real digits far above the λ=0 control.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict
from scipy.optimize import linear_sum_assignment

import gan_runner.train as train_py
from conftest import QUICK, compose_config
from gan_runner.data.module import to_model_range
from gan_runner.errors import UserError
from gan_runner.games.infogan import CodeLayout, traversal_latents
from gan_runner.losses.mutual_information import MutualInformation, gaussian_nll
from gan_runner.train import build_module, train
from helpers_quality import prepare

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
RING8_CODES = "game.codes=[{type: categorical, size: 8}]"
# ring8 with the 2D recipe's players (3x128 MLPs, island latent at 4 noise dimensions) and an
# 8-way code. Cheapest found to pass with margin (seeds 0-5, purity λ=1 / λ=0): 400 G steps at
# batch 128 without the recipe's zero-centred penalty, 1.000/0.23, 1.000/0.26, 1.000/0.26,
# 0.959/0.40, 1.000/0.31, 1.000/0.24; 200 steps left seed 0 at 0.889, 300 steps seeds 1 and 5
# at 0.95; the penalty at 400 steps, seed 3 at 0.866.
RING8 = [
    *QUICK,
    "data=ring8",
    "game=infogan",
    "terms=[mutual_information]",
    "+arch.discriminator.heads={codes: 8}",
    RING8_CODES,
    "z_dim=12",
    "regularizer=[]",
    "data.batch_size=128",
]
TINY = [  # seconds-fast players with a BatchNorm Q head, for the structural tests
    *QUICK,
    "data=ring8",
    "game=infogan",
    "terms=[mutual_information]",
    "regularizer=[]",
    "arch.generator.hidden=[16]",
    "arch.discriminator.hidden=[16]",
    "+arch.discriminator.heads={codes: {size: 5, hidden: [8]}}",
    "game.codes=[{type: categorical, size: 3}, {type: continuous, size: 2}]",
    "z_dim=9",
    "data.source.n_samples=512",
    "data.batch_size=64",
    "train.log_every=1",
]


def no_callbacks(cfg) -> None:
    with open_dict(cfg):
        for name in cfg.callbacks:
            cfg.callbacks[name] = None


def refused(cfg) -> str:
    with pytest.raises(UserError) as error:
        build_module(cfg)
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- z layout
def test_z_is_noise_then_one_hot_categories_then_uniform_continuous_codes(tmp_path) -> None:
    module = build_module(compose_config(TINY, tmp_path))
    game = module.game
    assert (game.layout, game.noise_dim(9)) == (CodeLayout((3,), 2), 4)
    z, labels = game.draw_latent(module, 4000, torch.Generator().manual_seed(3))
    assert z.shape == (4000, 9) and labels is None
    # The noise is the run's latent at 4 dimensions, drawn first from the same stream.
    noise = module.latent.sample(4000, 4, torch.Generator().manual_seed(3))
    assert torch.equal(z[:, :4], noise)
    one_hot, continuous = z[:, 4:7], z[:, 7:]
    assert set(one_hot.unique().tolist()) == {0.0, 1.0} and torch.equal(
        one_hot.sum(1), torch.ones(4000)
    )
    assert torch.bincount(one_hot.argmax(1)).min() > 4000 / 3 * 0.9  # uniform categories
    assert continuous.min() >= -1 and continuous.max() <= 1
    assert continuous.min() < -0.99 and continuous.max() > 0.99 and continuous.mean().abs() < 0.05
    codes = game.layout.decode(z)
    assert torch.equal(codes["categorical"][:, 0], one_hot.argmax(1))
    assert torch.equal(codes["continuous"], continuous)
    # gan-sample's truncation shrinks the noise only: the codes stay one-hot and in range.
    cut, _ = game.draw_latent(module, 100, torch.Generator().manual_seed(3), truncation=0.5)
    noise = module.latent.truncated(100, 4, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(cut[:, :4], noise) and torch.equal(cut[:, 4:7].sum(1), torch.ones(100))
    # The fixed sample grid is drawn by the game too, so it carries codes.
    fixed = module.fixed_latent[:, 4:7]
    assert torch.equal(fixed.sum(1), torch.ones(len(fixed)))


def test_the_recipe_is_the_papers_mnist_layout(tmp_path) -> None:
    cfg = compose_config([*QUICK, "model=infogan", "data=digits", "data.resolution=8"], tmp_path)
    assert (cfg.z_dim, cfg.data.batch_size, cfg.train.g_steps) == (74, 128, 5000)
    assert (cfg.optimizer.generator.lr, cfg.optimizer.discriminator.lr) == (1e-3, 2e-4)
    assert cfg.optimizer.generator.betas[0] == cfg.optimizer.discriminator.betas[0] == 0.5
    term = cfg.terms.mutual_information
    assert (term.lambda_categorical, term.lambda_continuous, term.fix_std) == (1.0, 1.0, True)
    assert cfg.latent._target_.endswith("Uniform") and not cfg.regularizer
    module = build_module(cfg)
    assert module.game.layout == CodeLayout((10,), 2) and module.game.noise_dim(74) == 62
    assert torch.equal(module.fixed_latent[:, 62:72].sum(1), torch.ones(64))
    assert module.fixed_latent[:, :62].abs().max() <= 1  # U(-1, 1) noise, as the paper's code


# ----------------------------------------------------------------------------- the MI term
def test_categorical_term_is_the_cross_entropy_of_the_logits_by_hand() -> None:
    layout = CodeLayout((4, 3), 0)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 7, generator=g)
    targets = torch.stack([torch.randint(4, (6,), generator=g), torch.randint(3, (6,))], 1)
    term = MutualInformation(lambda_categorical=0.7)
    loss = term.information(q, {"categorical": targets}, layout)
    expected = 0.0
    for block, k in ((q[:, :4], 0), (q[:, 4:], 1)):
        log_z = torch.log(torch.exp(block).sum(1))  # -log softmax = log Σ exp - logit
        expected += (log_z - block[torch.arange(6), targets[:, k]]).mean()
    torch.testing.assert_close(loss, 0.7 * expected)
    entropy = math.log(4) + math.log(3)
    torch.testing.assert_close(term.estimates["mi_categorical"], entropy - expected)
    # Uniform logits know nothing: CE = log K, the MI estimate is 0.
    flat = term.information(torch.zeros(6, 7), {"categorical": targets}, layout)
    torch.testing.assert_close(flat, torch.tensor(0.7 * entropy))
    assert abs(term.estimates["mi_categorical"].item()) < 1e-6


def test_continuous_term_is_the_gaussian_nll_with_a_fixed_or_learned_std_by_hand() -> None:
    layout = CodeLayout((), 2)
    g = torch.Generator().manual_seed(1)
    c, mean, log_std = (torch.randn(5, 2, generator=g) for _ in range(3))
    fixed = MutualInformation(lambda_continuous=0.5, fix_std=True)
    loss = fixed.information(mean, {"continuous": c}, layout)
    by_hand = (HALF_LOG_2PI + 0.5 * (c - mean) ** 2).sum(1).mean()
    torch.testing.assert_close(loss, 0.5 * by_hand)
    torch.testing.assert_close(fixed.estimates["nll_continuous"], by_hand)
    learned = MutualInformation(lambda_continuous=1.0, fix_std=False)
    loss = learned.information(torch.cat([mean, log_std], 1), {"continuous": c}, layout)
    sigma = torch.exp(log_std)
    by_hand = (HALF_LOG_2PI + torch.log(sigma) + (c - mean) ** 2 / (2 * sigma**2)).sum(1).mean()
    torch.testing.assert_close(loss, by_hand)
    torch_nll = F.gaussian_nll_loss(mean, c, sigma**2, full=True, reduction="sum") / 5
    torch.testing.assert_close(loss, torch_nll)
    # At the code itself with unit std, only the normalizer is left.
    assert gaussian_nll(c, c, None).sub(HALF_LOG_2PI).abs().max() < 1e-7


def test_both_parts_add_and_zero_weights_turn_the_term_off() -> None:
    layout = CodeLayout((3,), 1)
    q, codes = (
        torch.tensor([[0.0, 0.0, 0.0, 0.5]]),
        {
            "categorical": torch.tensor([[2]]),
            "continuous": torch.tensor([[-0.5]]),
        },
    )
    loss = MutualInformation(2.0, 3.0).information(q, codes, layout)
    torch.testing.assert_close(loss, torch.tensor(2 * math.log(3) + 3 * (HALF_LOG_2PI + 0.5)))
    assert MutualInformation(0.0, 0.0).information(q, codes, layout) is None


# ----------------------------------------------------------------------------- who trains Q
def phase_changes(tmp_path, monkeypatch, *overrides) -> list[tuple[str, set[str], set[str]]]:
    """(phase, parameter groups it changed, its logged terms) for one D and one G phase."""
    record = []
    build = train_py.build_module

    def group(name: str) -> str:
        return "q" if name.startswith("discriminator.heads.codes.") else name.split(".")[0]

    def capture(cfg):
        module = build(cfg)
        inner = module._run_phase

        def run_phase(phase, batch, optimizer, logs):
            before = {n: p.detach().clone() for n, p in module.named_parameters()}
            inner(phase, batch, optimizer, logs)
            changed = {
                group(n) for n, p in module.named_parameters() if not torch.equal(p, before[n])
            }
            terms = {k.split("/")[1] for k in logs if k.startswith(f"{phase.name}/")}
            record.append((phase.name, changed, terms))

        module._run_phase = run_phase
        return module

    monkeypatch.setattr(train_py, "build_module", capture)
    cfg = compose_config([*TINY, "train.g_steps=1", *overrides], tmp_path)
    no_callbacks(cfg)
    train(cfg)
    return record


@pytest.mark.parametrize(
    "std",
    [[], ["terms.mutual_information.fix_std=false", "arch.discriminator.heads.codes.size=7"]],
    ids=["fixed_std", "learned_std"],
)
def test_q_with_the_critic_learns_in_the_critic_phase_and_g_alone_in_its_own(
    tmp_path, monkeypatch, std
) -> None:
    # openai/InfoGAN: the critic's step's MI loss trains Q and the shared trunk.
    (d, d_changed, d_terms), (g, g_changed, g_terms) = phase_changes(tmp_path, monkeypatch, *std)
    assert (d, g) == ("discriminator", "generator")
    assert d_changed == {"discriminator", "q"} and "mutual_information" in d_terms
    assert g_changed == {"generator"} and "mutual_information" in g_terms


def test_q_with_the_generator_learns_only_in_the_generator_phase(tmp_path, monkeypatch) -> None:
    # StudioGAN: Q in G's optimizer; the critic's step has no MI loss, so the trunk never
    # learns from it.
    owner = "game.players.generator=[generator,discriminator.heads.codes]"
    (_, d_changed, d_terms), (_, g_changed, g_terms) = phase_changes(tmp_path, monkeypatch, owner)
    assert d_changed == {"discriminator"} and "mutual_information" not in d_terms
    assert g_changed == {"generator", "q"} and "mutual_information" in g_terms


# ----------------------------------------------------------------------------- refusals
def tiny(*overrides: str, drop: tuple[str, ...] = ()) -> list[str]:
    """TINY less the overrides that start with any of `drop`, plus `overrides`."""
    return [o for o in TINY if not o.startswith(drop)] + list(overrides)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (tiny("game.codes=[{type: gaussian, size: 2}]"), "game.codes[0].type is 'gaussian'"),
        (tiny("game.codes=[{type: categorical, size: 1}]"), "integer n >= 2"),
        (tiny("game.codes=[{type: continuous, size: 1, low: 0}]"), "{type: continuous, size: n}"),
        (tiny("game.codes=[]"), "game.codes is empty"),
        (tiny("z_dim=5"), "z_dim=5 leaves no noise beside the codes' 5 entries"),
        (tiny("terms=[]"), "add terms=[mutual_information]"),
        (tiny(drop=("+arch.discriminator.heads",)), "add arch.discriminator.heads.codes"),
        (tiny("arch.discriminator.heads.codes.size=7"), "arch.discriminator.heads.codes.size=5"),
        (tiny("terms.mutual_information.fix_std=false"), "arch.discriminator.heads.codes.size=7"),
        (tiny("terms.mutual_information.lambda_continuous=-1"), "lambda_continuous=-1"),
        (tiny(drop=("game",)), "use game=infogan"),
    ],
)
def test_a_setup_infogan_cannot_train_is_refused_in_one_line(tmp_path, overrides, words) -> None:
    assert words in refused(compose_config(overrides, tmp_path))


# ----------------------------------------------------------------------------- traversal
def test_traversal_rows_are_categories_and_columns_sweep_one_continuous_code(tmp_path) -> None:
    module = build_module(compose_config(TINY, tmp_path))
    z, labels = traversal_latents(module, torch.Generator().manual_seed(0), steps=5, sweep=1)
    assert z.shape == (15, 9) and labels is None
    assert torch.equal(z[:, :4], z[:1, :4].expand(15, -1))  # one noise draw for the grid
    rows = z[:, 4:7].view(3, 5, 3)
    assert torch.equal(rows.argmax(-1), torch.arange(3)[:, None].expand(3, 5))
    assert torch.equal(rows.sum(-1), torch.ones(3, 5))
    assert torch.equal(z[:, 7], torch.zeros(15))  # the code not swept is held at 0
    sweep = torch.linspace(-2, 2, 5)
    assert torch.equal(z[:, 8].view(3, 5), sweep.expand(3, 5))
    with pytest.raises(UserError, match="traversal.sweep=2, but the model has 2 continuous"):
        traversal_latents(module, torch.Generator(), sweep=2)


def test_traversal_needs_an_infogan_model(tmp_path) -> None:
    module = build_module(compose_config([*QUICK, "data=ring8"], tmp_path))
    with pytest.raises(UserError, match="needs an InfoGAN checkpoint"):
        traversal_latents(module, torch.Generator())


# ----------------------------------------------------------------------------- training
def ring8_purity(module, source, n: int = 500) -> tuple[float, int]:
    """Mean share of each category's samples on its majority mode, and distinct such modes.

    The traversal without continuous codes: row c is category c, columns n noise draws."""
    z, _ = traversal_latents(module, torch.Generator().manual_seed(0), steps=n)
    points = module.sample(z).view(-1, n, 2)
    means = source.means.float()
    shares, majors = [], set()
    for row in points:
        counts = torch.bincount(torch.cdist(row, means).argmin(1), minlength=len(means))
        shares.append(counts.max().item() / n)
        majors.add(counts.argmax().item())
    return sum(shares) / len(shares), len(majors)


@pytest.mark.parametrize("seed", [0, 1])
def test_each_ring8_code_lands_on_its_own_mode_only_with_the_mi_term(tmp_path, seed) -> None:
    results = {}
    for lam in (1, 0):
        cfg = compose_config(
            [*RING8, f"seed={seed}", "train.g_steps=400", "train.log_every=400"]
            + [f"terms.mutual_information.lambda_categorical={lam}"],
            tmp_path / str(lam),
        )
        no_callbacks(cfg)
        run = prepare(cfg)
        run.fit()
        results[lam] = ring8_purity(run.module, run.datamodule.source)
        logged = run.trainer.callback_metrics
        results[f"mi{lam}"] = float(logged.get("train/generator/mi_categorical", float("nan")))
    print(f"ring8 InfoGAN seed {seed}, 400 G steps: purity, modes, MI estimate {results}")
    (purity, modes), (control, _) = results[1], results[0]
    assert purity >= 0.9 and modes >= 7, results
    assert control <= 0.4, results
    assert results["mi1"] >= 0.9 * math.log(8), results  # H(c) - CE approaches log 8


@torch.no_grad()
def cluster_accuracy(module, data) -> float:
    """argmax of Q's categorical logits on every real digit, categories matched to labels."""
    critic = module.discriminator
    critic.eval()
    logits = critic.outputs(to_model_range(data.samples)).heads["codes"][:, :10]
    critic.train()
    hits = np.zeros((10, 10))
    np.add.at(hits, (logits.argmax(1).numpy(), data.labels.numpy()), 1)
    rows, cols = linear_sum_assignment(-hits)  # the best one-to-one matching
    return hits[rows, cols].sum() / len(data)


@pytest.mark.slow
def test_the_categorical_code_clusters_digits(tmp_path) -> None:
    # §3.4(b)'s players (MLPs 256-256, Q head 128 -> 10+2) with the recipe's settings.
    results = {}
    for lam in (1, 0):
        cfg = compose_config(
            [*QUICK, "model=infogan", "data=digits", "data.resolution=8", "arch=mlp"]
            + ["arch.generator.hidden=[256,256]", "arch.discriminator.hidden=[256,256]"]
            + ["train.g_steps=2000", f"terms.mutual_information.lambda_categorical={lam}"]
            + [f"terms.mutual_information.lambda_continuous={lam}"],
            tmp_path / str(lam),
        )
        no_callbacks(cfg)
        run = prepare(cfg)
        run.fit()
        results[lam] = cluster_accuracy(run.module, run.datamodule.data)
    print(f"digits InfoGAN seed 0, 2000 G steps: cluster accuracy λ=1 / λ=0 {results}")
    assert results[1] >= 0.5 and results[1] >= results[0] + 0.15, results
