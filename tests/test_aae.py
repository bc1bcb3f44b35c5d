"""The adversarial autoencoder (Makhzani et al. 2016): what each phase changes, its losses by
hand, the refusals, q(z) matched to the prior on digits, samples that beat the plain GAN with
the same decoder, and an exact resume.

Measured on 8x8 digits (64-wide MLPs, z_dim 2, batch 64, 500 steps, seeds 0 and 1, one
thread, ~2.5 s a run): MMD^2(q(z), N(0, I)) 0.0054, 0.0015 under the AAE against 0.288, 0.301 for
the same autoencoder without the regularization phase; reconstruction MSE 0.039, 0.041 on [0, 1]
against the mean image's 0.073; the pixel Fréchet distance of Dec(z), z ~ N(0, I), to the digits
6.7, 7.4 against 24.1, 28.1 for the plain GAN with the same generator (a 64-wide critic on x,
Adam 2e-3/1e-3, its best of 2e-4, 1e-3 and 2e-3). At 3,000 steps: 3.4, 3.5 against 12.9, 14.5
(the mean image alone scores 18.7; two halves of the digits 0.28).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import QUICK, compose_config
from gan_runner.errors import UserError
from gan_runner.train import build_module
from helpers_quality import frechet_distance
from test_bigan import digits, snapshot
from test_resume import _assert_same_state, straight_and_resumed

WIDTH = [
    "arch.generator.hidden=[64,64]",
    "arch.encoder.hidden=[64,64]",
    "arch.discriminator.hidden=[64,64]",
]
TINY = [*QUICK, "data=digits", "data.resolution=8", "model=aae", "z_dim=2", *WIDTH]
# The plain game with the same decoder as its generator and an MLP critic on x.
PLAIN = [
    *QUICK,
    "data=digits",
    "data.resolution=8",
    "game=adversarial",
    "arch=mlp",
    "objective=non_saturating",
    "regularizer=[]",
    "latent=normal",
    "z_dim=2",
    "arch.generator.hidden=[64,64]",
    "arch.generator.norm=none",
    "arch.discriminator.hidden=[64,64]",
]
STEPS, BATCH = 500, 64


def build(tmp_path, *overrides: str, base: list[str] = TINY, seed: int = 0):
    torch.manual_seed(seed)
    module = build_module(compose_config([*base, f"seed={seed}", *overrides], tmp_path))
    module.noise = torch.Generator().manual_seed(seed)
    return module


def phase(module, name: str):
    return next(p for p in module.game.phases if p.name == name)


def fit(module, lrs: dict[str, float], steps: int = STEPS, seed: int = 0):
    """The module's phases in config order on random digit batches, one Adam per player."""
    opts = {
        player: torch.optim.Adam(
            [p for net in nets for p in getattr(module, net).parameters()],
            lr=lrs[player],
            betas=(0.5, 0.999),
        )
        for player, nets in module.players.items()
    }
    x, draw = digits(), torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = {"samples": x[torch.randint(len(x), (BATCH,), generator=draw)]}
        for step in module.game.phases:
            opts[step.player].zero_grad(set_to_none=True)
            terms = module.game.terms(step, batch, module, 1).losses
            losses = [v for v in terms.values() if v is not None]
            if losses:  # as GANModule: a phase with no active term is skipped
                sum(losses).backward()
                opts[step.player].step()
    return module


def mmd2(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.0) -> float:
    """The (biased) squared MMD between two samples under an RBF kernel of width sigma."""

    def kernel(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(u, v).pow(2) / (2 * sigma**2))

    return float(kernel(a, a).mean() + kernel(b, b).mean() - 2 * kernel(a, b).mean())


# ----------------------------------------------------------------------------- phases and losses
def test_each_phase_changes_only_its_own_networks(tmp_path) -> None:
    module = build(tmp_path)
    assert module.players == {
        "generator": ("generator", "encoder"),
        "discriminator": ("discriminator",),
    }
    assert [p.name for p in module.game.phases] == ["reconstruction", "discriminator", "encoder"]
    batch = {"samples": digits()[:32]}
    moves = {
        "reconstruction": ("generator", "encoder"),
        "discriminator": ("discriminator",),
        "encoder": ("encoder",),  # the decoder gets no gradient, so Adam leaves it alone
    }
    for name, moved_nets in moves.items():
        step = phase(module, name)
        params = [
            p for net in module.players[step.player] for p in getattr(module, net).parameters()
        ]
        optimizer = torch.optim.Adam(params, lr=1e-2)
        before = snapshot(module)
        optimizer.zero_grad(set_to_none=True)
        sum(module.game.terms(step, batch, module, 1).losses.values()).backward()
        optimizer.step()
        for key, value in snapshot(module).items():
            moved = not torch.equal(value, before[key])
            assert moved == key.startswith(moved_nets), (name, key)


def test_the_losses_equal_their_hand_computations(tmp_path) -> None:
    module = build(tmp_path, "game.reconstruction_weight=2.5", "game.adversarial_weight=0.5")
    x = digits()[:16]
    losses = {}
    for name in ("reconstruction", "discriminator", "encoder"):
        module.noise = torch.Generator().manual_seed(5)
        losses[name] = module.game.terms(phase(module, name), {"samples": x}, module, 1).losses
    prior = torch.randn(16, 2, generator=torch.Generator().manual_seed(5))  # latent=normal
    with torch.no_grad():
        codes = module.encoder(x)
        reconstructed = module.generator(codes, None)
        by_hand = 2.5 * ((reconstructed - x) ** 2).sum() / x.numel()
        critic = F.softplus(-module.discriminator(prior)).mean()  # prior samples real
        critic = critic + F.softplus(module.discriminator(codes)).mean()  # codes fake
        encoder = 0.5 * F.softplus(-module.discriminator(codes)).mean()  # non-saturating
    torch.testing.assert_close(losses["reconstruction"]["reconstruction"].detach(), by_hand)
    torch.testing.assert_close(losses["discriminator"]["adversarial"].detach(), critic)
    torch.testing.assert_close(losses["encoder"]["adversarial"].detach(), encoder)


def test_adversarial_weight_zero_leaves_the_encoder_phase_without_a_term(tmp_path) -> None:
    module = build(tmp_path, "game.adversarial_weight=0")
    terms = module.game.terms(phase(module, "encoder"), {"samples": digits()[:8]}, module, 1)
    assert terms.losses == {"adversarial": None}


# ----------------------------------------------------------------------------- refusals
def refused(tmp_path, *overrides: str) -> str:
    with pytest.raises(UserError) as error:
        build_module(compose_config([*TINY, *overrides], tmp_path))
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_refuses_a_missing_encoder_a_critic_off_z_and_a_conditional_run(tmp_path) -> None:
    alone = refused(tmp_path, "game.players.generator=[generator]", "~arch.encoder")
    assert "needs an encoder network" in alone and "arch=aae_mlp" in alone
    on_x = refused(tmp_path, "arch.discriminator.data_shape=[1,8,8]")
    assert "needs a critic on z" in on_x and "data_shape=[2]" in on_x
    conditional = refused(tmp_path, "num_classes=10")
    assert "num_classes=10" in conditional and "num_classes=0" in conditional
    penalized = refused(tmp_path, "regularizer=[r1]")
    assert "regularizer=[] terms=[]" in penalized


# ----------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def aae(tmp_path_factory):
    module = build(tmp_path_factory.mktemp("aae"))
    return fit(module, {"generator": 2e-3, "discriminator": 1e-3})


def test_codes_match_the_prior_and_reconstruct_better_than_the_mean_image(aae, tmp_path) -> None:
    plain_ae = build(tmp_path, "game.phases=[{name:reconstruction,player:generator}]")
    plain_ae = fit(plain_ae, {"generator": 2e-3, "discriminator": 1e-3})
    x = digits()
    prior = torch.randn(len(x), 2, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        matched = mmd2(aae.encoder(x), prior)
        unmatched = mmd2(plain_ae.encoder(x), prior)
        error = float(((aae.generator(aae.encoder(x), None) - x) ** 2).mean())
    mean_image = float(((x - x.mean(0)) ** 2).mean())
    print(f"MMD^2 AAE {matched:.4f}, AE {unmatched:.4f}; MSE {error:.4f} vs {mean_image:.4f}")
    assert matched < 0.6 * unmatched and matched < 0.05, (matched, unmatched)
    assert error < 0.7 * mean_image, (error, mean_image)


def sample_frechet(module) -> float:
    z, _ = module.game.draw_latent(module, 1500, torch.Generator().manual_seed(7))
    return frechet_distance(module.sample(z).flatten(1), digits().flatten(1))


def test_samples_beat_the_plain_gan_with_the_same_decoder(aae, tmp_path) -> None:
    gan = build(tmp_path, base=PLAIN)
    gan = fit(gan, {"generator": 2e-3, "discriminator": 1e-3})  # its best of 2e-4..2e-3
    ours, theirs = sample_frechet(aae), sample_frechet(gan)
    print(f"pixel Fréchet distance of samples: AAE {ours:.2f}, plain GAN {theirs:.2f}")
    assert ours < 0.5 * theirs, (ours, theirs)


# ----------------------------------------------------------------------------- runs
RUN = [
    *TINY,
    "arch.generator.hidden=[16]",
    "arch.encoder.hidden=[16]",
    "arch.discriminator.hidden=[16]",
    "schedule=linear_decay",
    "train.log_every=5",
    "callbacks.samples.every=20",
    "callbacks.metrics=null",
    "callbacks.loss_curve=null",
    "callbacks.progress=null",
    "callbacks.checkpoint.every=10",
]


def test_a_resumed_run_equals_the_straight_run_and_draws_reconstructions(tmp_path) -> None:
    a, b = straight_and_resumed(tmp_path, [*RUN, "train.g_steps=20"], at=10)
    assert a["gan_runner"]["counters"]["g_steps"] == 20
    _assert_same_state(a, b)
    assert torch.equal(a["gan_runner"]["game"]["shown"], b["gan_runner"]["game"]["shown"])
    view = tmp_path / "straight" / "samples" / "g0000020_reconstructions.png"
    assert view.is_file()
