"""EBGAN: the pulling-away term, the per-sample margin loss and the energies by hand, the
generator's gradient through the reconstruction target, who each phase trains, the refusals,
the critic's view of samples, and training on ring8 and digits.

The training tests follow zoo-games.md §6.4: on ring8 an autoencoder critic (squared error,
m = 0.5) against a 2x128 generator covers 7-8 of 8 modes with the pulling-away term, and the
trained critic sits between the energies, E[D(real)] < m < E[D(fake)].
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import open_dict

import gan_runner.train as train_py
from conftest import QUICK, call_console, compose_config
from gan_runner import cli
from gan_runner.games.base import Phase
from gan_runner.games.energy import EnergyGame, EnergyMargin, PullingAway, pulling_away
from gan_runner.metrics.mixture import evaluate_mixture
from gan_runner.nets.autoencoder import AutoencoderCritic, reconstruction_energy
from gan_runner.train import build_module, train
from helpers_quality import pixel_frechet, prepare

TINY = [  # seconds-fast players on ring8, for the structural tests
    *QUICK,
    "data=ring8",
    "game=ebgan",
    "arch=autoencoder",
    "regularizer=[]",
    "arch.generator.hidden=[16]",
    "arch.discriminator.hidden=[16]",
    "arch.discriminator.code=8",
    "arch.discriminator.decoder_hidden=null",
    "arch.discriminator.energy=sum_squares",
    "game.margin=0.5",
    "game.margin_units=energy",
    "data.source.n_samples=512",
    "data.batch_size=64",
    "train.log_every=1",
]
# zoo-games.md §6.4's ring8 test: D = Enc(2->128->16) + Dec(16->128->2) with a linear code,
# per-sample squared error, m = 0.5, G an MLP 2x128 (no BatchNorm), Adam 1e-3 (0.5, 0.999),
# batch 256, z ~ N(0, I) in 2 dimensions, no EMA.
RING8 = [
    *QUICK,
    "data=ring8",
    "game=ebgan",
    "arch=autoencoder",
    "regularizer=[]",
    "optimizer=adam",
    "optimizer.generator.lr=1e-3",
    "optimizer.discriminator.lr=1e-3",
    "schedule=constant",
    "latent=normal",
    "z_dim=2",
    "arch.generator.hidden=[128,128]",
    "arch.generator.norm=none",
    "arch.discriminator.hidden=[128]",
    "arch.discriminator.code=16",
    "arch.discriminator.code_activation=none",
    "arch.discriminator.decoder_hidden=null",
    "arch.discriminator.energy=sum_squares",
    "game.margin=0.5",
    "game.margin_units=energy",
    "data.batch_size=256",
]


def no_callbacks(cfg) -> None:
    with open_dict(cfg):
        for name in cfg.callbacks:
            cfg.callbacks[name] = None


# ----------------------------------------------------------------------------- the losses
def test_pulling_away_is_zero_for_orthogonal_rows_one_for_identical_and_scale_free() -> None:
    assert pulling_away(torch.eye(4)).item() == 0.0
    assert pulling_away(torch.tensor([[1.0, 2.0, 3.0]]).expand(5, 3)).item() == pytest.approx(1.0)
    codes = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    assert pulling_away(10 * codes).item() == pytest.approx(pulling_away(codes).item(), rel=1e-6)
    # Per-row normalization: scaling one sample leaves it unchanged too (torchgan's column
    # normalization would not), and a hand pair at 60 degrees gives cos^2 = 1/4.
    scaled = codes.clone()
    scaled[2] *= 7
    assert pulling_away(scaled).item() == pytest.approx(pulling_away(codes).item(), rel=1e-6)
    pair = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert pulling_away(pair).item() == pytest.approx(0.25)
    # Against the paper's double sum, term by term.
    total = sum(
        (torch.dot(codes[i], codes[j]) / (codes[i].norm() * codes[j].norm())) ** 2
        for i in range(6)
        for j in range(6)
        if i != j
    )
    assert pulling_away(codes).item() == pytest.approx(total.item() / 30, rel=1e-5)


def test_the_margin_hinge_is_per_sample_not_on_the_batch_mean() -> None:
    objective = EnergyMargin(margin=0.5)
    fake = torch.tensor([0.2, 0.8])
    # mean(max(0, 0.5 - [0.2, 0.8])) = 0.15; a hinge on the mean energy 0.5 would give 0.
    assert objective.discriminator_loss(torch.zeros(2), fake).item() == pytest.approx(0.15)
    real = torch.tensor([0.1, 0.3])
    assert objective.discriminator_loss(real, fake).item() == pytest.approx(0.2 + 0.15)
    logs = objective.critic_logs(real, fake, torch.tensor(0.35))
    assert logs["discriminator/fake_within_margin"].item() == 0.5
    assert logs["discriminator/margin_hinge"].item() == pytest.approx(0.15)
    assert objective.generator_loss(fake).item() == pytest.approx(0.5)  # E[D(G(z))]
    with pytest.raises(ValueError, match="margin must be > 0"):
        EnergyMargin(margin=0)


def test_each_energy_is_its_hand_computation() -> None:
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    reconstruction = torch.tensor([[1.0, 0.0], [3.0, 4.0]])  # errors (0, -2) and (3, 4)
    expected = {
        "sum_squares": [4.0, 25.0],
        "norm": [2.0, 5.0],
        "mean_squares": [2.0, 12.5],
        "rms": [math.sqrt(2.0), math.sqrt(12.5)],
    }
    for kind, values in expected.items():
        energies = reconstruction_energy(x, reconstruction, kind)
        assert torch.allclose(energies, torch.tensor(values)), kind
    # The critic's score is that energy of its own reconstruction, on images too.
    images = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    critic = AutoencoderCritic([1, 4, 4], hidden=[8], code=4, energy="norm")
    out = critic.outputs(images)
    assert out.scores.shape == (3,) and out.features.shape == (3, 4)
    flat = (critic.reconstruct(images) - images).flatten(1).norm(dim=1)
    assert torch.allclose(out.scores, flat) and torch.allclose(critic(images), flat)


def test_the_energys_gradient_reaches_the_input_through_the_reconstruction_target() -> None:
    # A decoder that outputs 0 leaves only the -x path: E = ||x||^2, dE/dx = 2x. Detaching
    # the target (PyTorch-GAN's G loss) would give no gradient at all.
    critic = AutoencoderCritic([3], hidden=[], code=4, decoder_hidden=[], energy="sum_squares")
    last = critic.decoder[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = torch.tensor([[1.0, -2.0, 0.5]], requires_grad=True)
    critic(x).sum().backward()
    assert torch.allclose(x.grad, 2 * x.detach())


def test_the_generator_phase_trains_g_through_the_target_and_logs_its_terms(tmp_path) -> None:
    module = build_module(compose_config([*TINY, "game.pull_away_weight=0"], tmp_path))
    last = module.discriminator.decoder[-1]
    torch.nn.init.zeros_(last.weight)  # Dec = 0: no path into G but the target's
    torch.nn.init.zeros_(last.bias)
    module.noise = torch.Generator().manual_seed(0)  # set by fit otherwise
    fakes = []
    module.generator.register_forward_hook(lambda net, args, out: fakes.append(out.detach()))
    batch = {"samples": torch.randn(64, 2)}
    terms = module.game.terms(Phase("generator", "generator"), batch, module, gain=1)
    assert set(terms.losses) == {"adversarial", "pull_away"}
    assert terms.losses["pull_away"].item() == 0.0  # weight 0: the control, still logged
    assert 0 < terms.logs["generator/pull_away_similarity"].item() <= 1
    # E[D(G(z))] with Dec = 0 is the mean of ||G(z)||^2.
    expected = fakes[-1].pow(2).sum(1).mean().item()
    assert terms.losses["adversarial"].item() == pytest.approx(expected, rel=1e-5)
    sum(terms.losses.values()).backward()
    grads = [p.grad for p in module.generator.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_each_phase_changes_only_its_players_parameters(tmp_path, monkeypatch) -> None:
    record = []
    build = train_py.build_module

    def capture(cfg):
        module = build(cfg)
        inner = module._run_phase

        def run_phase(phase, batch, optimizer, logs):
            before = {n: p.detach().clone() for n, p in module.named_parameters()}
            inner(phase, batch, optimizer, logs)
            changed = {
                n.split(".")[0]
                for n, p in module.named_parameters()
                if not torch.equal(p, before[n])
            }
            record.append((phase.name, changed, {k for k in logs if "/" in k}))

        module._run_phase = run_phase
        return module

    monkeypatch.setattr(train_py, "build_module", capture)
    cfg = compose_config([*TINY, "train.g_steps=1"], tmp_path)
    no_callbacks(cfg)
    train(cfg)
    (d, d_changed, d_logs), (g, g_changed, g_logs) = record
    assert (d, d_changed, g, g_changed) == (
        "discriminator",
        {"discriminator"},
        "generator",
        {"generator"},
    )
    assert {
        "discriminator/adversarial",
        "discriminator/energy_real",
        "discriminator/energy_fake",
        "discriminator/margin_hinge",
    } <= d_logs
    assert not any("pull_away" in k for k in d_logs)  # the term is the generator's only
    assert {
        "generator/adversarial",
        "generator/pull_away",
        "generator/pull_away_similarity",
    } <= g_logs


@pytest.mark.parametrize(
    ("energy", "margin"),
    [("norm", 0.5 * 8), ("sum_squares", 0.25 * 64), ("mean_squares", 0.25), ("rms", 0.5)],
)
def test_an_rms_margin_is_the_energy_of_that_error_on_every_coordinate(
    tmp_path, energy, margin
) -> None:
    # 8x8 digits: 64 coordinates, each reconstructed 0.5 off.
    digits = [*QUICK, "model=ebgan", "data=digits", "data.resolution=8"]
    cfg = compose_config([*digits, f"arch.discriminator.energy={energy}"], tmp_path)
    assert (cfg.game.margin, cfg.game.margin_units) == (0.5, "rms")
    module = build_module(cfg)
    assert module.game.margin == pytest.approx(margin)
    assert module.game.objective.margin == pytest.approx(margin)  # what the hinge uses
    as_given = compose_config([*digits, "game.margin=10", "game.margin_units=energy"], tmp_path)
    assert build_module(as_given).game.margin == 10.0  # the paper's m, in norm units


def test_the_recipe_is_the_papers_mnist_setting(tmp_path) -> None:
    cfg = compose_config([*QUICK, "model=ebgan", "data=digits", "data.resolution=8"], tmp_path)
    assert (cfg.optimizer.generator.lr, cfg.optimizer.discriminator.lr) == (1e-3, 1e-3)
    assert cfg.game.pull_away_weight == 0.1 and cfg.arch.discriminator.energy == "norm"
    assert not cfg.regularizer and cfg.data.batch_size == 64
    module = build_module(cfg)
    assert module.game.margin == pytest.approx(0.5 * 8)  # 8x8 digits: 0.5 * sqrt(64)
    # nLayerD 2: one encoder layer to the 256 code, one decoder layer back to the 64 pixels.
    linears = [m for m in module.discriminator.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 256), (256, 64)]


# ----------------------------------------------------------------------------- refusals
def one_line_refusal(monkeypatch, capsys, tmp_path, *args: str) -> str:
    monkeypatch.chdir(tmp_path)
    quick = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "train.g_steps=1"]
    code, out, err = call_console(cli.run, "gan-run", monkeypatch, capsys, *quick, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (out, err)
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["game=ebgan", "arch=mlp"], "MLPDiscriminator; use arch=autoencoder"),
        (["model=ebgan", "game.margin=0"], "margin must be > 0, got 0; set game.margin"),
        (["model=ebgan", "game.pull_away_weight=-1"], "pull_away_weight must be >= 0"),
        (["model=ebgan", "objective=hinge"], "objective Hinge would be ignored"),
        (["model=ebgan", "arch.discriminator.energy=l1"], "energy must be one of"),
        (["model=ebgan", "game.margin_units=pixels"], "margin_units must be one of energy, rms"),
        (["model=ebgan", "data.num_classes=8", "num_classes=8"], "is unconditional"),
    ],
)
def test_a_setup_ebgan_cannot_train_is_refused_in_one_line(
    monkeypatch, capsys, tmp_path, args, words
) -> None:
    assert words in one_line_refusal(monkeypatch, capsys, tmp_path, *args)


def test_the_game_refuses_a_term_named_like_its_own() -> None:
    phases = [{"name": "discriminator", "player": "discriminator"}]
    players = {"discriminator": ["discriminator"]}
    with pytest.raises(ValueError, match="set game.pull_away_weight"):
        EnergyGame(players, phases, terms={"pull_away": PullingAway(1.0)})


# ----------------------------------------------------------------------------- views
def test_sample_views_draw_images_with_reconstructions_and_points_over_the_energy(
    tmp_path,
) -> None:
    module = build_module(compose_config(TINY, tmp_path / "points"))
    points = module.fixed_samples()
    views = module.game.sample_views(module, points)
    assert list(views) == ["energy"]
    image = views["energy"]
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and min(image.shape[1:]) > 300
    assert image.float().std() > 10  # a drawn figure, not a blank canvas
    digits = [*QUICK, "model=ebgan", "data=digits", "data.resolution=8"]
    module = build_module(compose_config(digits, tmp_path / "images"))
    views = module.game.sample_views(module, module.fixed_samples())
    image = views["energy"]
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and image.shape[2] > image.shape[1]
    assert module.game.sample_views(module, torch.zeros(4, 1)) == {}  # 1D: nothing to add


# ----------------------------------------------------------------------------- training
def energies(module, source, n: int = 2500) -> tuple[float, float]:
    """E[D(real)] and E[D(fake)] of the trained critic on fresh samples of the live generator
    (the critic's opponent; the EMA generator's samples sit lower)."""
    real, _ = source.sample(n, torch.Generator().manual_seed(5))
    z, _ = module.game.draw_latent(module, n, torch.Generator().manual_seed(6))
    with torch.no_grad():
        fake = module.generator(z)
        critic = module.discriminator
        return critic(real.float()).mean().item(), critic(fake).mean().item()


def train_ring8(tmp_path, *overrides: str):
    cfg = compose_config([*RING8, *overrides], tmp_path)
    with open_dict(cfg):  # only the generator EMA, which the mode count scores
        for name in cfg.callbacks:
            if name != "ema":
                cfg.callbacks[name] = None
    run = prepare(cfg)
    run.fit()
    source = run.datamodule.source
    return evaluate_mixture(run.module, source, n=2500, seed=0), energies(run.module, source)


@pytest.mark.slow  # ~12 s
def test_ring8_modes_with_the_pulling_away_term(tmp_path) -> None:
    # Measured at 3k G steps, seeds 0-3, modes with PT weight 0.1 / 0: 7/5, 8/8, 8/8, 6/8, HQ
    # 65-77% / 73-79%: the term did not reliably add modes here (zoo-games.md §6.4 measured
    # 7-8 / 6 on 2 seeds). Seed 2: 8/8, HQ 67.0%, E[D(real)] 0.13 < m < E[D(fake)] 0.47.
    stats, (real, fake) = train_ring8(
        tmp_path, "seed=2", "train.g_steps=3000", "train.log_every=3000"
    )
    print(f"EBGAN-PT ring8, 3000 G steps: {stats}; E[D(real)] {real:.3f}, E[D(fake)] {fake:.3f}")
    assert stats.modes >= 7 and stats.hq_fraction >= 0.4, stats
    assert real < 0.5 < fake, (real, fake)


def test_ring8_energies_separate_at_the_margin_early(tmp_path) -> None:
    # The critic lifts each fake's energy up to m and no further, so fakes straddle m. Measured
    # at 1k G steps, seeds 0-2: E[D(real)] 0.15 / 0.07 / 0.12, E[D(fake)] 0.54 / 0.56 / 0.59,
    # 8/8 modes (at 200 steps E[D(fake)] is still 0.11-0.23).
    stats, (real, fake) = train_ring8(tmp_path, "train.g_steps=1000", "train.log_every=1000")
    print(f"EBGAN-PT ring8, 1000 G steps: {stats}; E[D(real)] {real:.3f}, E[D(fake)] {fake:.3f}")
    assert real < 0.25 and fake > 0.4, (real, fake)
    assert stats.modes >= 7, stats  # the untrained generator is a blob off the ring


def test_the_recipe_learns_digits(tmp_path) -> None:
    cfg = compose_config(
        [*QUICK, "model=ebgan", "data=digits", "data.resolution=8", "train.g_steps=300"],
        tmp_path,
    )
    no_callbacks(cfg)
    run = prepare(cfg)
    before = pixel_frechet(run.module, run.datamodule.data)
    run.fit()
    after = pixel_frechet(run.module, run.datamodule.data)
    print(f"EBGAN recipe on digits 8x8, 300 G steps: pixel FD {before:.2f} -> {after:.2f}")
    assert after <= 0.3 * before, (before, after)
