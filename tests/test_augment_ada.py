"""ADA (Karras et al. 2020): each op against its distribution, the p heuristic step by step, its
buffers in the critic's state_dict, double backward for R1, and p rising on an overfitting critic.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from conftest import CONF, QUICK, TINY_DIGITS
from gan_runner.augment import attach_augmentation
from gan_runner.augment_ada import AdaptiveAugment
from gan_runner.nets.dcgan import DCGANDiscriminator

OPS = list(AdaptiveAugment().multipliers)  # the 12 ops of 'bgc', in the reference's order


def only(op: str, p: float = 1.0, **kwargs: float) -> AdaptiveAugment:
    """The pipeline with every op off but `op`, at a fixed p."""
    return AdaptiveAugment(**{o: float(o == op) for o in OPS}, fixed_p=p, **kwargs)


def run(aug: AdaptiveAugment, x: Tensor, seed: int = 0) -> Tensor:
    torch.manual_seed(seed)
    return aug(x)


def unique(n: int, side: int, channels: int = 1) -> Tensor:
    """(n, C, side, side) float64 images whose every pixel value is unique."""
    return torch.randperm(n * channels * side * side).double().view(n, channels, side, side)


def affine_read_off(aug: AdaptiveAugment, n: int, side: int = 33) -> tuple[Tensor, Tensor]:
    """The per-sample map out(q) = A q + t, read off an image holding its own coordinates:
    bilinear sampling reproduces a linear ramp exactly away from the borders."""
    c = (side - 1) / 2
    coords = torch.arange(side, dtype=torch.float64) - c
    ramp = torch.stack([coords.expand(side, side), coords[:, None].expand(side, side)])
    x = torch.cat([ramp, torch.zeros(1, side, side, dtype=torch.float64)]).expand(n, 3, side, side)
    out = run(aug, x.contiguous())[:, :2]
    mid = side // 2
    t = out[:, :, mid, mid]
    a = torch.stack([out[:, :, mid, mid + 1] - t, out[:, :, mid + 1, mid] - t], dim=-1)
    return a, t


# ----------------------------------------------------------------------------- the pipeline
def test_p_zero_is_bitwise_identity_and_p_one_changes_every_sample() -> None:
    rgb, gray = torch.rand(64, 3, 16, 16) * 2 - 1, torch.rand(64, 1, 16, 16) * 2 - 1
    aug = AdaptiveAugment()
    assert torch.equal(run(aug, rgb), rgb) and torch.equal(run(aug, gray), gray)
    aug.p.fill_(1.0)
    for x in (rgb, gray):
        assert ((run(aug, x) - x).flatten(1).abs().amax(dim=1) > 0.05).all()
    aug.eval()  # evaluation sees the plain images
    assert torch.equal(aug(rgb), rgb)


def test_each_op_fires_with_probability_p() -> None:
    x = torch.rand(2000, 3, 4, 4)
    changed = (run(only("brightness", p=0.3), x) != x).flatten(1).any(dim=1)
    assert abs(changed.double().mean().item() - 0.3) < 0.03
    # Rotation is drawn twice, each with 1 - sqrt(1 - p): at least one fires with probability p.
    for p in (0.2, 0.5):
        a, _ = affine_read_off(only("rotate", p=p), 2000, side=9)
        rotated = (a - torch.eye(2, dtype=a.dtype)).abs().flatten(1).amax(dim=1) > 1e-9
        assert abs(rotated.double().mean().item() - p) < 0.03


def test_xflip_mirrors_half_the_samples() -> None:
    x = unique(400, 6)
    out = run(only("xflip"), x)
    flipped = torch.isclose(out, x.flip(-1), atol=1e-9).flatten(1).all(dim=1)
    kept = torch.equal(out[~flipped], x[~flipped])
    assert kept and 0.43 < flipped.double().mean().item() < 0.57


def test_rotate90_draws_each_quarter_turn_equally() -> None:
    x = unique(800, 6)
    out = run(only("rotate90"), x)
    counts = [
        torch.isclose(out, torch.rot90(x, k, dims=(2, 3)), atol=1e-9).flatten(1).all(dim=1)
        for k in range(4)
    ]
    assert torch.stack(counts).sum(dim=0).eq(1).all()  # every sample is exactly one quarter turn
    for hits in counts:
        assert 0.2 < hits.double().mean().item() < 0.3


def test_integer_translation_moves_whole_pixels_and_keeps_values() -> None:
    side, n = 16, 200
    x = unique(n, side)
    out = run(only("xint"), x)
    # Every output pixel is some input pixel of its own sample: a shift with reflected borders.
    assert torch.isclose(out[..., None], x.flatten(2)[:, :, None, None], atol=1e-9).any(-1).all()
    a, t = affine_read_off(only("xint"), n, side=33)
    assert torch.allclose(a, torch.eye(2, dtype=a.dtype).expand_as(a), atol=1e-9)
    assert torch.allclose(t, t.round(), atol=1e-9) and t.abs().max() == 4  # round(33 / 8)
    # t ~ U(-1/8, 1/8) * 33 = U(-4.125, 4.125) rounded: 0 with probability 1/8.25 per axis.
    assert abs((t == 0).double().mean().item() - 1 / 8.25) < 0.025


@pytest.mark.parametrize(("op", "log2_std"), [("scale", 0.2), ("aniso", 0.2)])
def test_scalings_are_log2_normal(op: str, log2_std: float) -> None:
    a, t = affine_read_off(only(op), 2000)
    assert torch.allclose(t, torch.zeros_like(t), atol=1e-9)  # about the image centre
    assert torch.allclose(a[:, 0, 1], torch.zeros(2000, dtype=a.dtype), atol=1e-9)
    sx, sy = a[:, 0, 0].log2(), a[:, 1, 1].log2()
    assert torch.allclose(sy, sx if op == "scale" else -sx, atol=1e-9)
    assert abs(sx.std().item() - log2_std) < 0.012 and abs(sx.mean().item()) < 0.015


def test_rotation_is_uniform_and_xfrac_is_normal() -> None:
    a, _ = affine_read_off(only("rotate"), 2000)
    assert torch.allclose(a @ a.transpose(1, 2), torch.eye(2, dtype=a.dtype), atol=1e-9)
    theta = torch.atan2(a[:, 1, 0], a[:, 0, 0])  # the sum of two U(-pi, pi), wrapped: uniform
    assert abs(theta.abs().mean().item() - math.pi / 2) < 0.08
    a, t = affine_read_off(only("xfrac"), 2000)
    assert torch.allclose(a, torch.eye(2, dtype=a.dtype).expand_as(a), atol=1e-9)
    assert abs(t.std().item() / 33 - 0.125) < 0.005


def test_brightness_adds_and_contrast_multiplies_a_per_sample_constant() -> None:
    x = torch.rand(4000, 3, 4, 4, dtype=torch.float64) * 2 - 1
    b = run(only("brightness"), x) - x
    assert torch.allclose(b, b[:, :1, :1, :1].expand_as(b), atol=1e-12)
    assert abs(b[:, 0, 0, 0].std().item() - 0.2) < 0.008
    k = run(only("contrast"), x) / x  # about zero, as the reference (mid-grey of [-1, 1] data)
    assert torch.allclose(k, k[:, :1, :1, :1].expand_as(k), atol=1e-9)
    assert abs(k[:, 0, 0, 0].log().std().item() - 0.5 * math.log(2)) < 0.015


def test_lumaflip_reflects_the_luma_axis_and_negates_grayscale() -> None:
    x = torch.rand(400, 3, 4, 4, dtype=torch.float64) * 2 - 1
    out = run(only("lumaflip"), x)
    flipped = x - 2 * x.mean(dim=1, keepdim=True)  # (I - 2 v v^T) x with v = [1, 1, 1] / sqrt 3
    hit = torch.isclose(out, flipped, atol=1e-12).flatten(1).all(dim=1)
    assert torch.equal(out[~hit], x[~hit]) and 0.42 < hit.double().mean().item() < 0.58
    gray = x[:, :1]
    out = run(only("lumaflip"), gray)
    assert torch.isclose(out.abs(), gray.abs(), atol=1e-12).all()


def test_hue_rotates_chroma_about_luma_and_saturation_scales_it() -> None:
    x = torch.rand(2000, 3, 2, 2, dtype=torch.float64) * 2 - 1
    luma = x.mean(dim=1, keepdim=True)
    out = run(only("hue"), x)
    assert torch.allclose(out.mean(dim=1, keepdim=True), luma, atol=1e-9)
    before, after = x - luma, out - luma
    assert torch.allclose(after.norm(dim=1), before.norm(dim=1), atol=1e-9)
    cos = (before * after).sum(dim=1) / before.norm(dim=1).square()
    angle = cos.clamp(-1, 1).acos()[:, 0, 0]  # |theta|, theta ~ U(-pi, pi)
    assert abs(angle.mean().item() - math.pi / 2) < 0.08
    out = run(only("saturation"), x)
    assert torch.allclose(out.mean(dim=1, keepdim=True), luma, atol=1e-9)
    s = ((out - luma) / (x - luma))[:, 0, 0, 0]
    assert abs(s.log2().std().item() - 1.0) < 0.05
    gray = x[:, :1]  # no chroma: hue and saturation leave grayscale alone
    assert torch.equal(run(only("hue"), gray), gray)
    assert torch.equal(run(only("saturation"), gray), gray)


def test_double_backward_reaches_the_critic_weights() -> None:
    # R1 differentiates D(aug(x)) in x with a graph, then backpropagates to D's weights.
    critic = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.Flatten(), nn.LazyLinear(1))
    aug = AdaptiveAugment(initial_p=1.0)
    x = (torch.rand(8, 3, 8, 8) * 2 - 1).requires_grad_()
    (grad,) = torch.autograd.grad(critic(run(aug, x)).sum(), x, create_graph=True)
    grad.square().sum().backward()
    weight = critic[0].weight.grad
    assert torch.isfinite(weight).all() and weight.abs().sum() > 0
    # The second derivative is right, not only present: against finite differences.
    small = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Softplus(), nn.Flatten()).double()
    xs = (torch.rand(2, 3, 5, 5, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda v: small(run(aug, v)), (xs,), atol=1e-5)


# ----------------------------------------------------------------------------- adjusting p
def test_p_steps_by_batch_times_interval_over_speed_only_at_interval_ends() -> None:
    # 32 images x 4 steps / (1.024 kimg * 1000) = 0.125 per adjustment: exact in float32.
    aug = AdaptiveAugment(interval=4, speed_kimg=1.024)
    up, down = torch.ones(32, 1), -torch.ones(32, 1)
    expected = [0.0, 0.0, 0.0, 0.125, 0.125, 0.125, 0.125, 0.25]
    for want in expected:
        aug.observe(up)
        assert aug.p.item() == want
    assert aug.r_t.item() == 1.0 and aug.stats.abs().sum() == 0  # reset after each adjustment
    aug.observe(up, world_size=2)  # every rank's batch counts: 2 x 32 x 4 images
    for _ in range(3):
        aug.observe(up, world_size=2)
    assert aug.p.item() == 0.5
    for want in (0.375, 0.25, 0.125, 0.0, 0.0):  # all negative: falls, and stops at 0
        for _ in range(4):
            aug.observe(down)
        assert aug.p.item() == want and aug.r_t.item() == -1.0
    top = AdaptiveAugment(initial_p=0.95, interval=1, speed_kimg=0.256)
    top.observe(up)
    assert top.p.item() == 1.0  # clamped at 1


def test_r_t_is_the_mean_sign_over_the_interval_and_the_default_speed() -> None:
    aug = AdaptiveAugment()  # target 0.6, 4 steps, 500 kimg
    for scores in (
        [1.0, 1.0, 1.0, -1.0],
        [1.0, -2.0, 3.0, 0.5],
        [2.0, 2.0, -1.0, 1.0],
        [-1.0] * 4,
    ):
        aug.observe(torch.tensor(scores))
    assert aug.r_t.item() == pytest.approx(2 / 16)  # 10 positive, 6 negative
    assert aug.p.item() == 0.0  # below target: would fall, clamped
    for _ in range(4):
        aug.observe(torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0]))  # r_t = 0.6 = target: no move
    assert aug.r_t.item() == pytest.approx(0.6) and aug.p.item() == 0.0
    for _ in range(4):
        aug.observe(torch.ones(64))
    assert aug.p.item() == pytest.approx(64 * 4 / 500_000, rel=1e-6)
    fixed = AdaptiveAugment(fixed_p=0.3, interval=1)  # the fixed-p ablation: r_t logged, p kept
    fixed.observe(torch.ones(8))
    assert fixed.p.item() == pytest.approx(0.3) and fixed.r_t.item() == 1.0


def test_state_round_trips_through_the_critic_checkpoint_bitwise() -> None:
    critic = attach_augmentation(DCGANDiscriminator((3, 8, 8), base_width=8),
                                 AdaptiveAugment(interval=4, speed_kimg=1.024))  # fmt: skip
    for _ in range(5):  # one adjustment, then one step into the next interval
        critic.augment.observe(torch.ones(32))
    state = critic.state_dict()
    assert {"augment.p", "augment.r_t", "augment.stats", "augment.observations"} <= set(state)
    resumed = AdaptiveAugment(interval=4, speed_kimg=1.024)
    resumed.load_state_dict({k[len("augment.") :]: v for k, v in state.items() if "augment" in k})
    for aug in (critic.augment, resumed):
        for _ in range(3):  # completes the interval only where the count was restored
            aug.observe(torch.ones(32))
    assert critic.augment.p.item() == 0.25
    for name, buffer in critic.augment.named_buffers():
        assert torch.equal(buffer, resumed.get_buffer(name))
    x = torch.rand(8, 3, 8, 8)
    assert torch.equal(run(critic.augment, x), run(resumed, x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 1.5}, "aug.target=1.5 must be in (0, 1): the fraction of real images"),
        ({"speed_kimg": -5}, "aug.speed_kimg=-5 must be > 0"),
        ({"initial_p": 1.2}, "aug.initial_p=1.2 must be in [0, 1]"),
        ({"fixed_p": -0.1}, "aug.fixed_p=-0.1 must be in [0, 1], or null"),
        ({"interval": 0}, "aug.interval=0 must be a whole number >= 1"),
        ({"hue": -1}, "aug.hue=-1 must be >= 0"),
    ],
)
def test_bad_settings_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        AdaptiveAugment(**kwargs)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(ValueError, match=r"aug=ada augments RGB or grayscale images"):
        AdaptiveAugment()(torch.zeros(2, 4, 8, 8))


def test_the_config_builds_the_reference_defaults() -> None:
    built = instantiate(OmegaConf.load(CONF / "aug" / "ada.yaml"))
    default = AdaptiveAugment()
    settings = [k for k, v in vars(default).items() if not k.startswith("_") and k != "training"]
    assert len(settings) == 14  # the multipliers, 9 distributions, 4 heuristic settings
    assert all(getattr(built, k) == getattr(default, k) for k in settings)
    assert built.fixed_p is None and built.p.item() == 0.0


def test_a_run_resumed_mid_interval_is_bit_exact(tmp_path) -> None:
    # The game shows each critic step's real scores to observe(); p, the sign statistics and
    # the step count ride in the critic's state_dict, so the g6 checkpoint (two steps into the
    # second interval) resumes to the same p as the straight run.
    from test_resume import _assert_same_state, straight_and_resumed

    common = [
        *QUICK,
        *TINY_DIGITS,
        "aug=ada",
        "aug.initial_p=0.5",
        "aug.speed_kimg=1",  # 16 x 4 / 1000 = 0.064 per adjustment
        "data.batch_size=16",
        "callbacks=default",
        "callbacks.metrics=null",
        "callbacks.samples=null",
        "callbacks.checkpoint.every=6",
        "train.g_steps=12",
    ]
    a, b = straight_and_resumed(tmp_path, common, at=6)
    _assert_same_state(a, b)
    p = a["state_dict"]["discriminator.augment.p"].item()
    assert a["state_dict"]["discriminator.augment.observations"].item() == 12
    assert p != 0.5 and abs(p - 0.5) / 0.064 == pytest.approx(round(abs(p - 0.5) / 0.064))


# ----------------------------------------------------------------------------- the heuristic
def test_an_overfitting_critic_drives_r_t_up_and_p_rises() -> None:
    torch.manual_seed(0)
    real = F.interpolate(torch.rand(32, 3, 2, 2) * 2 - 1, size=8, mode="bilinear")  # smooth
    critic = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(),
                           nn.Linear(16 * 16, 1))  # fmt: skip
    aug = AdaptiveAugment(speed_kimg=2.0)  # 32 x 4 / 2000 = 0.064 per adjustment
    opt = torch.optim.Adam(critic.parameters(), lr=5e-3)
    history = []
    for _ in range(48):
        real_scores, fake_scores = critic(aug(real)), critic(aug(torch.randn_like(real)))
        loss = F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        aug.observe(real_scores)
        history.append(aug.p.item())
    assert history[:3] == [0.0] * 3  # nothing moves before the first interval ends
    assert aug.r_t.item() > 0.8 and aug.p.item() > 0.4  # 0.064 x (number of rises)
    assert all(b >= a for a, b in zip(history[16:], history[17:]))  # once fitted, p only rises


def _observe_on_rank(rank: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    aug = AdaptiveAugment(interval=2, speed_kimg=1.024)
    for _ in range(2):  # rank 0 scores its 16 reals positive, rank 1 three in four
        scores = torch.ones(16) if rank == 0 else torch.tensor([1.0, 1.0, 1.0, -1.0] * 4)
        aug.observe(scores, world_size=2)
    torch.save(dict(aug.named_buffers()), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned gloo processes: 6-12 s on the shared CPUs
def test_ranks_pool_their_signs_and_move_p_alike(tmp_path) -> None:
    from test_distributed import _free_port

    init = f"tcp://127.0.0.1:{_free_port()}"
    torch.multiprocessing.spawn(_observe_on_rank, args=(init, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    # (32 + 16) / 64 over both ranks: rank 1 alone (0.5, below target) would lower p.
    assert ranks[0]["r_t"].item() == 0.75
    assert ranks[0]["p"].item() == 0.0625  # 16 images x 2 ranks x 2 steps / 1024
