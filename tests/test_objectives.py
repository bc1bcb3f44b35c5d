"""Adversarial objectives against their closed forms, computed independently in float64.

Every conf/objective/*.yaml is instantiated, so a new objective is tested (and must bring a
closed-form reference below) without editing the parametrization.
"""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, options
from gan_runner.objectives import (
    Hinge,
    LeastSquares,
    Minimax,
    NonSaturating,
    Objective,
    Wasserstein,
)


def _log_sig(x):  # log σ(x), the naive way: only for moderate scores
    return torch.log(torch.sigmoid(x))


def _log_one_minus_sig(x):  # log(1 - σ(x))
    return torch.log(1 - torch.sigmoid(x))


def _logistic_d(o, r, f):
    t = o.real_label
    real = -(t * _log_sig(r) + (1 - t) * _log_one_minus_sig(r)).mean()
    return real - _log_one_minus_sig(f).mean()


# Class name -> (D loss, G loss) on float64 scores; `o` is the instance (for its labels).
REFERENCES = {
    "Minimax": (_logistic_d, lambda o, f: _log_one_minus_sig(f).mean()),
    "NonSaturating": (_logistic_d, lambda o, f: -_log_sig(f).mean()),
    "Wasserstein": (lambda o, r, f: f.mean() - r.mean(), lambda o, f: -f.mean()),
    "Hinge": (
        lambda o, r, f: torch.relu(1 - r).mean() + torch.relu(1 + f).mean(),
        lambda o, f: -f.mean(),
    ),
    # f-GAN: −(E g_f(real) − E f*(g_f(fake))) from the table's plain conjugate, not the stable
    # composite the class uses (tests/test_f_divergence.py checks every divergence by hand).
    "FDivergence": (
        lambda o, r, f: (
            -(
                o.divergence.activation(r).mean()
                - o.divergence.conjugate(o.divergence.activation(f)).mean()
            )
        ),
        lambda o, f: (
            -(
                o.divergence.conjugate(o.divergence.activation(f))
                if o.saddle
                else o.divergence.activation(f)
            ).mean()
        ),
    ),
    "LeastSquares": (
        lambda o, r, f: (
            0.5 * ((r - o.real_label) ** 2).mean() + 0.5 * ((f - o.fake_label) ** 2).mean()
        ),
        lambda o, f: 0.5 * ((f - o.target) ** 2).mean(),
    ),
}


def _from_conf(name: str) -> Objective:
    return instantiate(OmegaConf.load(CONF / "objective" / f"{name}.yaml"))


def _reference(objective: Objective):
    name = type(objective).__name__
    if name not in REFERENCES:
        pytest.fail(f"no closed-form reference for {name}: add one to REFERENCES")
    return REFERENCES[name]


def _scores(n: int = 64, seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * scale + 0.5, torch.randn(n, generator=g) * scale - 0.5


def _check_closed_form(objective: Objective, real: torch.Tensor, fake: torch.Tensor) -> None:
    d_ref, g_ref = _reference(objective)
    r64, f64 = real.double(), fake.double()
    d = objective.discriminator_loss(real, fake)
    g = objective.generator_loss(fake, real)
    assert d.shape == () and g.shape == ()
    torch.testing.assert_close(d.double(), d_ref(objective, r64, f64), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double(), g_ref(objective, f64), rtol=1e-5, atol=1e-6)
    # The generator loss never depends on the real scores (none of these games uses them).
    torch.testing.assert_close(objective.generator_loss(fake, None), g)


def test_conf_folder_has_the_known_objectives():
    assert {"minimax", "non_saturating", "wasserstein", "hinge", "least_squares"} <= set(
        options("objective")
    )


@pytest.mark.parametrize("name", options("objective"))
def test_conf_objective_matches_closed_form(name):
    _check_closed_form(_from_conf(name), *_scores())


@pytest.mark.parametrize(
    "objective",
    [
        Minimax(real_label=0.8),
        NonSaturating(real_label=0.9),
        LeastSquares(fake_label=-1.0, real_label=1.0, target=0.0),  # LSGAN's a-b-c = -1-1-0
        LeastSquares(fake_label=0.0, real_label=1.0, target=1.0),
        Wasserstein(),
        Hinge(),
    ],
    ids=lambda o: f"{type(o).__name__}{vars(o)}",
)
def test_explicit_objective_matches_closed_form(objective):
    _check_closed_form(objective, *_scores(n=33, seed=1))


def test_losses_are_means_not_sums():
    # Doubling the batch with a copy of itself must not change any loss.
    real, fake = _scores(n=16, seed=2)
    for name in options("objective"):
        o = _from_conf(name)
        torch.testing.assert_close(
            o.discriminator_loss(real.repeat(2), fake.repeat(2)), o.discriminator_loss(real, fake)
        )
        torch.testing.assert_close(o.generator_loss(fake.repeat(2)), o.generator_loss(fake))


def test_hand_values():
    r, f = torch.tensor([2.0, -0.5]), torch.tensor([0.5, -3.0])
    assert Hinge().discriminator_loss(r, f).item() == pytest.approx((0 + 1.5) / 2 + (1.5 + 0) / 2)
    assert Wasserstein().discriminator_loss(r, f).item() == pytest.approx(-1.25 - 0.75)
    ls = LeastSquares()
    assert ls.discriminator_loss(r, f).item() == pytest.approx(0.5 * 3.25 / 2 + 0.5 * 9.25 / 2)
    assert ls.generator_loss(f).item() == pytest.approx(0.5 * (0.25 + 16) / 2)
    zero = torch.zeros(4)  # a critic that cannot tell: D = 2 log 2, G = ∓log 2
    assert Minimax().discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert Minimax().generator_loss(zero).item() == pytest.approx(-math.log(2))
    assert NonSaturating().generator_loss(zero).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("name", options("objective"))
def test_gradients_point_the_right_way_at_a_neutral_critic(name):
    # At scores 0 the critic gains by raising real and lowering fake scores; G by raising fake.
    o = _from_conf(name)
    real, fake = torch.zeros(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    o.discriminator_loss(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad >= 0).all()
    fake_g = torch.zeros(8, requires_grad=True)
    o.generator_loss(fake_g).backward()
    assert (fake_g.grad < 0).all()


def test_minimax_saturates_where_non_saturating_does_not():
    # D confidently rejects the fakes (f = -10): the true minimax G loss gives G no signal.
    n = 8
    grads = {}
    for objective in (Minimax(), NonSaturating()):
        fake = torch.full((n,), -10.0, requires_grad=True)
        objective.generator_loss(fake).backward()
        grads[type(objective).__name__] = fake.grad
    assert grads["Minimax"].abs().max() < 1e-4
    expected = -torch.sigmoid(torch.tensor(10.0)) / n  # d/df of -mean(log σ(f)) = -σ(-f)/N
    torch.testing.assert_close(grads["NonSaturating"], expected.expand(n))
    assert grads["NonSaturating"].abs().min() > 0.99 / n


@pytest.mark.parametrize("cls", [Minimax, NonSaturating])
def test_one_sided_label_smoothing_changes_only_the_real_term(cls):
    real, fake = _scores(n=32, seed=3)
    other_fake = fake.flip(0) * 2 + 1
    sharp, smooth = cls(real_label=1.0), cls(real_label=0.9)
    # The shift from smoothing depends on the real scores only...
    shift = smooth.discriminator_loss(real, fake) - sharp.discriminator_loss(real, fake)
    shift_other = smooth.discriminator_loss(real, other_fake) - sharp.discriminator_loss(
        real, other_fake
    )
    torch.testing.assert_close(shift, shift_other)
    r = real.double()
    expected = (-0.1 * _log_one_minus_sig(r) + 0.1 * _log_sig(r)).mean()  # (t=1) - (t=0.9)
    torch.testing.assert_close(shift.double(), expected, rtol=1e-5, atol=1e-6)
    # ...the generator's loss is untouched, and the real optimum moves to logit(0.9).
    torch.testing.assert_close(smooth.generator_loss(fake), sharp.generator_loss(fake))
    at_optimum = torch.full((4,), math.log(0.9 / 0.1), requires_grad=True)
    smooth.discriminator_loss(at_optimum, torch.zeros(4)).backward()
    assert at_optimum.grad.abs().max() < 1e-6


@pytest.mark.parametrize("name", options("objective"))
def test_extreme_scores_give_finite_losses_and_gradients(name):
    o = _from_conf(name)
    for r_value, f_value in [(100.0, -100.0), (-100.0, 100.0), (100.0, 100.0)]:
        real = torch.full((4,), r_value, requires_grad=True)
        fake = torch.full((4,), f_value, requires_grad=True)
        d, g = o.discriminator_loss(real, fake), o.generator_loss(fake)
        assert torch.isfinite(d) and torch.isfinite(g)
        (d + g).backward()
        assert torch.isfinite(real.grad).all() and torch.isfinite(fake.grad).all()


def test_logistic_losses_at_extreme_scores_are_exact():
    # log(1 + e^100) = 100 to float precision: a naive log(sigmoid) would give inf here.
    hi, lo = torch.full((4,), 100.0), torch.full((4,), -100.0)
    for o in (Minimax(), NonSaturating()):
        assert o.discriminator_loss(hi, lo).item() == pytest.approx(0.0, abs=1e-6)
        assert o.discriminator_loss(lo, hi).item() == pytest.approx(200.0)
    assert NonSaturating().generator_loss(lo).item() == pytest.approx(100.0)
    assert Minimax().generator_loss(hi).item() == pytest.approx(-100.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Minimax(real_label=0.3),
        lambda: NonSaturating(real_label=0.5),
        lambda: NonSaturating(real_label=1.1),
        lambda: LeastSquares(fake_label=1.0, real_label=1.0),
        lambda: LeastSquares(fake_label=0.0, real_label=0.0, target=1.0),
    ],
)
def test_invalid_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


def test_only_wasserstein_is_flagged_wasserstein():
    flagged = {
        type(_from_conf(n)).__name__ for n in options("objective") if _from_conf(n).wasserstein
    }
    assert flagged == {"Wasserstein"}
