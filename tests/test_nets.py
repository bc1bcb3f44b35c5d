"""The convolutional families: shapes at every resolution, norms, conditioning, init, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gan_runner.errors import UserError
from gan_runner.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from gan_runner.nets.layers import NORMS_2D
from gan_runner.nets.resnet import ResNetDiscriminator, ResNetGenerator
from gan_runner.regularizers import GradientPenalty, PenaltyInputs, SpectralNorm
from gan_runner.train import build_module, train

Z_DIM = 8
RESOLUTIONS = [8, 16, 32, 64, 128]
# Small widths keep every case fast on a CPU; the structure is what is under test.
FAMILIES = {
    "dcgan": (DCGANGenerator, DCGANDiscriminator, {"base_width": 4, "max_width": 16}),
    "resnet": (ResNetGenerator, ResNetDiscriminator, {"width": 8}),
}
NORM_TYPES = {
    "batch": nn.BatchNorm2d,
    "instance": nn.InstanceNorm2d,
    "layer": nn.GroupNorm,
    "none": type(None),
}


def build(family: str, data_shape: list[int], num_classes: int = 0, **kwargs):
    generator_cls, discriminator_cls, widths = FAMILIES[family]
    generator = generator_cls(Z_DIM, data_shape, num_classes=num_classes, **widths, **kwargs)
    discriminator = discriminator_cls(data_shape, num_classes=num_classes, **widths)
    return generator, discriminator


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_and_range_at_every_resolution(family: str, resolution: int) -> None:
    generator, discriminator = build(family, [3, resolution, resolution])
    fake = generator(torch.randn(2, Z_DIM) * 10)  # large z pushes outputs toward the bound
    assert fake.shape == (2, 3, resolution, resolution)
    assert fake.abs().max() <= 1.0
    scores = discriminator(fake)
    assert scores.shape == (2,)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_unbounded_generator_has_no_tanh(family: str) -> None:
    bounded, _ = build(family, [1, 8, 8])
    unbounded, _ = build(family, [1, 8, 8], bounded=False)
    layers = [m for m in bounded.modules() if not isinstance(m, nn.ModuleDict)]  # not attention
    assert isinstance(layers[-1], nn.Tanh)
    assert not any(isinstance(m, nn.Tanh) for m in unbounded.modules())


@pytest.mark.parametrize("norm", NORMS_2D)
def test_dcgan_norm_options(norm: str) -> None:
    generator = DCGANGenerator(Z_DIM, [1, 16, 16], base_width=4, norm=norm)
    discriminator = DCGANDiscriminator([1, 16, 16], base_width=4, norm=norm)
    # G normalizes at 4x4 and 8x8; D only at 4x4, its 8x8 input layer being the exception.
    for net, expected in ((generator, 2), (discriminator, 1)):
        norms = [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
        norms += [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
        assert all(isinstance(m, NORM_TYPES[norm]) for m in norms)
        assert len(norms) == (0 if norm == "none" else expected)
    # The first D layer is never normalized (Radford et al. §3): a LeakyReLU follows its conv.
    assert isinstance(discriminator.features[1], nn.LeakyReLU)
    scores = discriminator(generator(torch.randn(4, Z_DIM)))
    assert scores.shape == (4,)


def test_dcgan_generator_and_discriminator_norms_are_independent() -> None:
    generator = DCGANGenerator(Z_DIM, [1, 16, 16], base_width=4, norm="batch")
    discriminator = DCGANDiscriminator([1, 16, 16], base_width=4, norm="layer")
    assert any(isinstance(m, nn.BatchNorm2d) for m in generator.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in discriminator.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in discriminator.modules())


def test_dcgan_widths_double_as_maps_halve_and_respect_the_cap() -> None:
    generator = DCGANGenerator(Z_DIM, [3, 64, 64], base_width=8, max_width=32)
    convs = [m for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [32, 32, 16, 8, 3]
    discriminator = DCGANDiscriminator([3, 64, 64], base_width=8, max_width=32)
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 32, 1]


@pytest.mark.parametrize("family", FAMILIES)
def test_conditional_outputs_depend_on_labels(family: str) -> None:
    torch.manual_seed(0)
    generator, discriminator = build(family, [1, 16, 16], num_classes=10)
    with torch.no_grad():  # move off the init, where conditional BatchNorm is the same per class
        for p in [*generator.parameters(), *discriminator.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    generator.eval(), discriminator.eval()
    z, zeros, ones = torch.randn(4, Z_DIM), torch.zeros(4).long(), torch.ones(4).long()
    fake = generator(z, zeros)
    assert not torch.allclose(fake, generator(z, ones), atol=1e-5)
    assert not torch.allclose(discriminator(fake, zeros), discriminator(fake, ones), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_non_image_data_is_a_one_line_error(family: str) -> None:
    expected = (
        f"arch {family} needs image data (data.shape [C, H, W]), got [2]; use arch=mlp for 2D data"
    )
    for make in (lambda: build(family, [2])[0], lambda: build(family, [2])[1]):
        with pytest.raises(ValueError) as error:
            make()
        assert str(error.value) == expected


@pytest.mark.parametrize("shape", [[1, 12, 12], [3, 256, 256], [1, 4, 4], [1, 16, 32]])
@pytest.mark.parametrize("family", FAMILIES)
def test_bad_resolution_is_a_one_line_error(family: str, shape: list[int]) -> None:
    square = shape[1] == shape[2]
    match = f"resolution {shape[1]} is not supported" if square else "needs square images"
    with pytest.raises(ValueError, match=match) as error:
        build(family, shape)
    assert "\n" not in str(error.value)


def test_dcgan_init_statistics() -> None:
    torch.manual_seed(0)
    generator = DCGANGenerator(100, [3, 32, 32])
    discriminator = DCGANDiscriminator([3, 32, 32])
    for net in (generator, discriminator):
        convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        weights = torch.cat([c.weight.detach().flatten() for c in convs])
        assert weights.mean().abs() < 1e-3
        assert weights.std() == pytest.approx(0.02, rel=0.02)
        assert all(c.bias is None or not c.bias.any() for c in convs)
        norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        scales = torch.cat([m.weight.detach() for m in norms])
        assert scales.mean() == pytest.approx(1.0, abs=0.005)
        assert scales.std() == pytest.approx(0.02, rel=0.2)


def test_resnet_block_counts_follow_resolution() -> None:
    for resolution in RESOLUTIONS:
        generator, discriminator = build("resnet", [3, resolution, resolution])
        stages = int(math.log2(resolution)) - 2
        assert len(generator.blocks) == stages
        pooled = [b for b in discriminator.blocks if b.downsample]
        assert len(pooled) == stages and discriminator.blocks[0].first
        batch_norm = nn.modules.batchnorm._NormBase
        assert not any(isinstance(m, batch_norm) for m in discriminator.modules())


def test_resnet_critic_takes_spectral_norm_and_a_gradient_penalty() -> None:
    torch.manual_seed(0)
    discriminator = SpectralNorm().build(ResNetDiscriminator([3, 16, 16], width=8, num_classes=10))
    parametrized = torch.nn.utils.parametrize.is_parametrized
    assert all(parametrized(m) for m in discriminator.modules() if isinstance(m, nn.Conv2d))
    real, fake = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3])
    inputs = PenaltyInputs(discriminator, real, fake, labels, labels, 0, torch.Generator())
    penalty = GradientPenalty().discriminator_penalty(inputs)
    params = [p for p in discriminator.parameters() if p.requires_grad]
    # Double backward: the penalty's own gradient must reach the critic's weights.
    penalty_grads = torch.autograd.grad(penalty, params, retain_graph=True, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in penalty_grads)
    loss = discriminator(real, labels).mean() - discriminator(fake, labels).mean() + penalty
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)


DCGAN_WIDTHS = ["arch.generator.base_width=8", "arch.discriminator.base_width=8"]
RESNET_WIDTHS = ["arch.generator.width=8", "arch.discriminator.width=8"]


@pytest.mark.parametrize(
    "overrides, n_critic",
    [
        (["arch=dcgan", *DCGAN_WIDTHS], 1),
        (["arch=resnet", *RESNET_WIDTHS], 1),
        # SNGAN's recipe, conditional: CBN generator, spectral-normed projection critic, hinge.
        (["model=sngan", "num_classes=10", "n_critic=2", *RESNET_WIDTHS], 2),
    ],
    ids=["dcgan", "resnet", "sngan_conditional"],
)
def test_trains_through_the_real_config(make_cfg, overrides: list[str], n_critic: int) -> None:
    cfg = make_cfg(
        "data=digits", "data.resolution=8", "data.batch_size=16", "train.g_steps=3",
        "train.log_every=1", "callbacks=none", *overrides,
    )  # fmt: skip
    metrics = train(cfg)
    assert metrics["train/g_steps"] == 3
    assert metrics["train/d_steps"] == 3 * n_critic
    assert math.isfinite(metrics["train/d_loss"]) and math.isfinite(metrics["train/g_loss"])


@pytest.mark.parametrize("family", FAMILIES)
def test_image_arch_on_2d_data_is_a_user_error(make_cfg, family: str) -> None:
    with pytest.raises(UserError, match="needs image data") as error:
        train(make_cfg(f"arch={family}", "train.g_steps=1"))
    assert "arch=mlp" in str(error.value) and "\n" not in str(error.value)


def test_batch_norm_critic_with_gradient_penalty_names_the_norm_key(make_cfg) -> None:
    # At 16x16 D has one normalized layer (at 8x8 its only stride-2 layer is the unnormalized one).
    base = ["data=digits", "data.resolution=16", "arch=dcgan", "regularizer=[gradient_penalty]"]
    with pytest.raises(UserError, match="arch.discriminator.norm"):
        build_module(make_cfg(*base))
    module = build_module(make_cfg(*base, "arch.discriminator.norm=layer"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.discriminator.modules())
