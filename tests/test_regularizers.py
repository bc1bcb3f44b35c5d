"""Regularizers against hand computations on critics whose input gradient is known in closed form.

Every conf/regularizer/*.yaml is also instantiated and run through its hooks on a small critic.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from conftest import CONF, options
from gan_runner.nets.mlp import MLPDiscriminator
from gan_runner.regularizers import (
    R1,
    GradientPenalty,
    PenaltyInputs,
    Regularizer,
    SpectralNorm,
    WeightClip,
)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _inputs(critic, real, fake, seed=0, d_steps=0, labels=None) -> PenaltyInputs:
    noise = torch.Generator().manual_seed(seed)
    return PenaltyInputs(critic, real, fake, labels, labels, d_steps, noise)


def _images(n=5, shape=(2, 3, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randn(n, *shape, generator=g) + 1.0


class Linear4d(nn.Module):
    """critic(x) = <x, W> over a whole (C, H, W) sample: ∇ = W for every sample."""

    def __init__(self, shape=(2, 3, 3), seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(*shape, generator=g))

    def forward(self, x, labels=None):
        return (x * self.weight).flatten(1).sum(1)


def _half_sq_norm(x, labels=None):  # critic(x) = ½‖x‖²: ∇ = x
    return 0.5 * x.flatten(1).pow(2).sum(1)


# --------------------------------------------------------------------- gradient penalty
def test_gp_on_linear_critic_is_weight_norm_penalty_and_trains_the_weight():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    penalty = GradientPenalty(weight=10.0).discriminator_penalty(
        _inputs(lambda x, y: x @ w, real, fake)
    )
    assert penalty.item() == pytest.approx(10.0 * (5.0 - 1.0) ** 2)
    penalty.backward()  # needs create_graph: d/dw λ(‖w‖-1)² = 2λ(‖w‖-1) w/‖w‖
    torch.testing.assert_close(w.grad, torch.tensor([48.0, 64.0]))


def test_gp_target_is_the_norm_it_pulls_towards():
    w = torch.tensor([3.0, 4.0])
    penalty = GradientPenalty(weight=2.0, target=5.0).discriminator_penalty(
        _inputs(lambda x, y: x @ w, torch.randn(3, 2), torch.randn(3, 2))
    )
    assert penalty.item() == pytest.approx(0.0, abs=1e-6)


def test_zero_centred_gp_is_the_mean_squared_gradient_norm_at_interpolates():
    # 0-GP (Thanh-Tung et al. 2019; conf/regularizer/zero_gp.yaml): λ E‖∇D(x̂)‖², no "-1".
    real, fake = _images(n=5, seed=2)
    penalty = GradientPenalty(weight=0.1, target=0.0).discriminator_penalty(
        _inputs(_half_sq_norm, real, fake, seed=3)
    )
    eps = torch.rand(5, generator=torch.Generator().manual_seed(3)).double().view(5, 1, 1, 1)
    x_hat = eps * real.double() + (1 - eps) * fake.double()  # ∇ of ½‖x‖² at x̂ is x̂
    expected = 0.1 * x_hat.flatten(1).pow(2).sum(1).mean()
    torch.testing.assert_close(penalty.double(), expected, rtol=1e-5, atol=1e-6)
    one_centred = 0.1 * ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert abs(one_centred - expected) > 1e-2  # a penalty still centred on 1 would differ


def test_gp_lazy_every_skips_then_scales_by_every():
    real, fake = _images(n=4, seed=4)
    base = GradientPenalty(weight=2.0, target=0.0).discriminator_penalty(
        _inputs(_half_sq_norm, real, fake, seed=5)
    )
    lazy = GradientPenalty(weight=2.0, target=0.0, every=3)
    for d_steps in range(7):
        inputs = _inputs(_half_sq_norm, real, fake, seed=5, d_steps=d_steps)
        value = lazy.discriminator_penalty(inputs)
        if d_steps % 3:
            assert value is None, d_steps
            # A skipped step draws no interpolation noise: the run's stream is untouched.
            assert torch.rand(1, generator=inputs.noise).item() == (
                torch.rand(1, generator=torch.Generator().manual_seed(5)).item()
            )
        else:
            torch.testing.assert_close(value, 3 * base)


def test_gp_norm_is_over_the_flattened_sample():
    critic = Linear4d()
    real, fake = _images()
    penalty = GradientPenalty(weight=10.0).discriminator_penalty(_inputs(critic, real, fake))
    w = critic.weight.detach().double()
    expected = 10.0 * (w.norm() - 1) ** 2
    torch.testing.assert_close(penalty.double(), expected, rtol=1e-5, atol=1e-6)
    # The classic bug (norm over dim=1 of the 4-D gradient) would give a clearly different value.
    per_channel = 10.0 * ((w.expand(5, *w.shape).norm(dim=1) - 1) ** 2).mean()
    assert abs(per_channel - expected) > 1.0


def test_gp_interpolates_with_one_epsilon_per_sample_from_the_run_generator():
    real, fake = _images(n=5, seed=1)
    penalty = GradientPenalty(weight=3.0).discriminator_penalty(
        _inputs(_half_sq_norm, real, fake, seed=7)
    )
    # Re-derive: ∇ at x̂ is x̂ itself, x̂ = ε real + (1-ε) fake with ε_i ~ U(0,1) per sample.
    eps = torch.rand(5, generator=torch.Generator().manual_seed(7)).double().view(5, 1, 1, 1)
    x_hat = eps * real.double() + (1 - eps) * fake.double()
    expected = 3.0 * ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(penalty.double(), expected, rtol=1e-5, atol=1e-6)
    # A per-pixel ε (one per element) would give a different value.
    eps_pixel = torch.rand(real.shape, generator=torch.Generator().manual_seed(7)).double()
    x_pixel = eps_pixel * real.double() + (1 - eps_pixel) * fake.double()
    assert abs(3.0 * ((x_pixel.flatten(1).norm(dim=1) - 1) ** 2).mean() - expected) > 1e-2


def test_gp_draws_exactly_one_number_per_sample_from_inputs_noise():
    real, fake = _images(n=4)
    inputs = _inputs(_half_sq_norm, real, fake, seed=11)
    GradientPenalty().discriminator_penalty(inputs)
    after = torch.rand(1, generator=inputs.noise)
    stream = torch.rand(5, generator=torch.Generator().manual_seed(11))
    assert after.item() == stream[4].item()  # the 5th draw: 4 were used, one per sample


def test_gp_passes_the_real_labels_to_a_conditional_critic():
    table = torch.tensor([[3.0, 4.0], [0.0, 0.5]])  # ∇ of <x, table[y]> is table[y]

    def critic(x, labels):
        return (x * table[labels]).sum(1)

    labels = torch.tensor([0, 1, 1, 1])
    real, fake, noise = torch.randn(4, 2), torch.randn(4, 2), torch.Generator().manual_seed(0)
    inputs = PenaltyInputs(critic, real, fake, labels, 1 - labels, 0, noise)
    penalty = GradientPenalty(weight=1.0).discriminator_penalty(inputs)
    assert penalty.item() == pytest.approx((16.0 + 3 * 0.25) / 4)


def test_penalties_do_not_backpropagate_into_the_samples():
    real = torch.randn(4, 2, requires_grad=True)
    fake = torch.randn(4, 2, requires_grad=True)
    w = nn.Parameter(torch.tensor([1.0, 2.0]))

    def critic(x, y):
        return x @ w + x.pow(2).sum(1)

    for reg in (GradientPenalty(), R1()):
        reg.discriminator_penalty(_inputs(critic, real, fake)).backward()
    assert real.grad is None and fake.grad is None and w.grad is not None


# --------------------------------------------------------------------- R1
def test_r1_matches_hand_computation_and_its_parameter_gradient():
    w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
    real = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))

    def critic(x, y):  # ∇ = w + x
        return x @ w + 0.5 * x.pow(2).sum(1)

    penalty = R1(gamma=4.0).discriminator_penalty(_inputs(critic, real, torch.randn(6, 3) * 50))
    grad = w.detach() + real
    torch.testing.assert_close(penalty, 4.0 / 2 * grad.pow(2).sum(1).mean())
    penalty.backward()  # d/dw γ/2 mean‖w + x‖² = γ mean(w + x)
    torch.testing.assert_close(w.grad, 4.0 * grad.mean(0))


def test_r1_uses_real_samples_only_and_flattens_4d_gradients():
    real, fake = _images(n=3)
    penalty = R1(gamma=10.0).discriminator_penalty(_inputs(_half_sq_norm, real, fake))
    torch.testing.assert_close(penalty, 10.0 / 2 * real.flatten(1).pow(2).sum(1).mean())
    other = R1(gamma=10.0).discriminator_penalty(_inputs(_half_sq_norm, real, fake * 7))
    torch.testing.assert_close(other, penalty)


def test_r1_lazy_every_skips_then_scales_by_every():
    real = torch.randn(4, 2)
    base = R1(gamma=2.0, every=1).discriminator_penalty(_inputs(_half_sq_norm, real, real))
    lazy = R1(gamma=2.0, every=4)
    for d_steps in range(9):
        value = lazy.discriminator_penalty(_inputs(_half_sq_norm, real, real, d_steps=d_steps))
        if d_steps % 4:
            assert value is None, d_steps
        else:
            torch.testing.assert_close(value, 4 * base)


# --------------------------------------------------------------------- autocast
def _mlp_critic(seed=0):
    torch.manual_seed(seed)
    return MLPDiscriminator(data_shape=[2], hidden=[16, 16])


@pytest.mark.parametrize("reg", [GradientPenalty(), R1()], ids=["gp", "r1"])
def test_penalties_under_bf16_autocast_are_float32_and_equal_the_fp32_value(reg):
    critic = _mlp_critic()
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    reference = reg.discriminator_penalty(_inputs(critic, real, fake, seed=5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert critic(real).dtype == torch.bfloat16  # autocast really is on
        value = reg.discriminator_penalty(_inputs(critic, real.bfloat16(), fake, seed=5))
    assert value.dtype == torch.float32
    # Same ε; only the bf16 rounding of `real` differs (the critic runs in float32 inside).
    torch.testing.assert_close(value, reference, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("reg", [GradientPenalty(), R1()], ids=["gp", "r1"])
def test_penalty_runs_the_critic_in_float32_inside_autocast(reg):
    mlp, dtypes = _mlp_critic(1), []

    def critic(x, labels):
        scores = mlp(x, labels)
        dtypes.append((x.dtype, scores.dtype))
        return scores

    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    reference = reg.discriminator_penalty(_inputs(critic, real, fake, seed=5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = reg.discriminator_penalty(_inputs(critic, real, fake, seed=5))
    assert dtypes == [(torch.float32, torch.float32)] * 2
    torch.testing.assert_close(value, reference)


# --------------------------------------------------------------------- weight clipping
def test_weight_clip_bounds_every_critic_parameter_and_clamps_rather_than_rescales():
    critic = _mlp_critic()
    with torch.no_grad():
        for p in critic.parameters():
            p.mul_(10)
    before = [p.detach().clone() for p in critic.parameters()]
    WeightClip(clip_value=0.05).after_discriminator_step(critic)
    for p, old in zip(critic.parameters(), before):
        assert p.abs().max() <= 0.05
        torch.testing.assert_close(p.detach(), old.clamp(-0.05, 0.05), rtol=0, atol=0)
    assert any((old.abs() < 0.05).any() for old in before)  # some values had to stay as they were


# --------------------------------------------------------------------- spectral norm
class ConvCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 16)
        self.score = nn.Linear(16, 1)

    def forward(self, x, labels=None):
        h = nn.functional.leaky_relu(self.conv(x), 0.2)
        h = nn.functional.leaky_relu(self.up(h), 0.2)
        return self.score(nn.functional.leaky_relu(self.fc(h.flatten(1)), 0.2)).squeeze(1)


def _as_matrix(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.ConvTranspose2d):  # (in, out, k, k): the output dim is 1
        weight = weight.transpose(0, 1)
    return weight.reshape(weight.shape[0], -1)


def _sigma(module: nn.Module, weight: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(_as_matrix(module, weight).double(), ord=2).item()


def _sn_critic():
    torch.manual_seed(0)
    critic = ConvCritic()
    with torch.no_grad():
        for p in critic.parameters():
            p.mul_(5)  # start far from σ = 1
    return critic


def test_spectral_norm_makes_every_layer_1_lipschitz_after_power_iterations():
    critic = _sn_critic()
    layers = [critic.conv, critic.up, critic.fc, critic.score]
    raw = [layer.weight.detach().clone() for layer in layers]
    assert min(_sigma(m, w) for m, w in zip(layers, raw)) > 1.5
    SpectralNorm().build(critic)
    critic.train()
    x = torch.randn(4, 3, 6, 6)
    for _ in range(20):
        critic(x)
    critic.eval()  # eval uses the stored u, v: what a trained critic really applies
    with torch.no_grad():
        for layer, original in zip(layers, raw):
            assert _sigma(layer, layer.weight) == pytest.approx(1.0, abs=0.05), layer
            # A reparametrization: the trained tensor is kept, only its use is rescaled.
            torch.testing.assert_close(layer.parametrizations.weight.original, original)


def test_spectral_norm_build_is_idempotent():
    critic = SpectralNorm().build(SpectralNorm().build(_sn_critic()))
    for layer in (critic.conv, critic.up, critic.fc, critic.score):
        assert len(layer.parametrizations.weight) == 1


def test_spectral_norm_critic_supports_two_forwards_one_backward():
    critic = SpectralNorm().build(_sn_critic()).train()
    real, fake = torch.randn(4, 3, 6, 6), torch.randn(4, 3, 6, 6)
    (critic(real).mean() - critic(fake).mean()).backward()
    for name, p in critic.named_parameters():  # a mean difference cancels the last bias
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0 or name == "score.bias", name
    critic.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # pytorch#125544 regression guard
        loss = critic(real).float().mean() - critic(fake).float().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in critic.parameters())


def test_spectral_norm_critic_with_gradient_penalty_backward():
    critic = SpectralNorm().build(_sn_critic()).train()
    real, fake = torch.randn(4, 3, 6, 6), torch.randn(4, 3, 6, 6)
    loss = critic(fake).mean() - critic(real).mean()
    loss = loss + GradientPenalty().discriminator_penalty(_inputs(critic, real, fake))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in critic.parameters())


# --------------------------------------------------------------------- every conf option
@pytest.mark.parametrize("name", options("regularizer"))
def test_conf_regularizer_runs_through_every_hook(name):
    reg = instantiate(OmegaConf.load(CONF / "regularizer" / f"{name}.yaml"))
    assert isinstance(reg, Regularizer)
    critic = reg.build(_mlp_critic())
    assert isinstance(critic, nn.Module)
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    penalty = reg.discriminator_penalty(_inputs(critic, real, fake))
    if penalty is not None:
        assert penalty.shape == () and penalty.dtype == torch.float32
        assert torch.isfinite(penalty) and penalty.item() >= 0
        penalty.backward()
        assert any(p.grad is not None for p in critic.parameters())
    reg.after_discriminator_step(critic)
    assert torch.isfinite(critic(real)).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda: GradientPenalty(weight=-1.0),
        lambda: R1(gamma=-1.0),
        lambda: R1(every=0),
        lambda: GradientPenalty(every=0),
        lambda: WeightClip(clip_value=0.0),
        lambda: SpectralNorm(n_power_iterations=0),
    ],
)
def test_invalid_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


def test_per_sample_gradient_flags():
    assert GradientPenalty.per_sample_gradient and R1.per_sample_gradient
    assert not WeightClip.per_sample_gradient and not SpectralNorm.per_sample_gradient
