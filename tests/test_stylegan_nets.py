"""StyleGAN's and StyleGAN2's networks (Karras et al. 2019, 2020): research notes §3.8."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from conftest import compose_config
from gan_runner.nets.equalized import EqualizedLinear, MinibatchStd, fir_filter, upsample_2x
from gan_runner.nets.stylegan import StyleGANDiscriminator, StyleGANGenerator
from gan_runner.nets.stylegan_blocks import AdaINLayer, SynthesisLayer, ToRGB, modulated_conv2d

TINY = {"channel_base": 256, "channel_max": 32}
Z = 32


def generator(resolution: int = 32, **kwargs) -> StyleGANGenerator:
    torch.manual_seed(0)
    kwargs = {"w_dim": 32, "mapping_layers": 2, **TINY, **kwargs}
    return StyleGANGenerator(Z, [3, resolution, resolution], **kwargs).eval()


def critic(resolution: int = 16, **kwargs) -> StyleGANDiscriminator:
    torch.manual_seed(0)
    return StyleGANDiscriminator([3, resolution, resolution], **{**TINY, **kwargs})


def latents(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, Z, generator=torch.Generator().manual_seed(seed))


def test_truncation_to_zero_gives_the_mean_image_and_psi_interpolates() -> None:
    net = generator()
    with torch.no_grad():
        net.mapping.w_avg.normal_()  # a nonzero centre, so ψ=0 is not the all-zero w
        images = net(latents(), truncation_psi=0.0, noise_mode="const")
        assert torch.equal(images, images[:1].expand_as(images))  # bitwise, across z
        mean_ws = net.mapping.w_avg.expand(1, net.num_ws, -1)
        mean_image = net.synthesis(mean_ws, noise_mode="const")
        torch.testing.assert_close(images[:1], mean_image, atol=1e-5, rtol=0)
        ws = net.mapping(latents())
        assert torch.equal(
            net(latents(), truncation_psi=1.0, noise_mode="const"),
            net.synthesis(ws, noise_mode="const"),
        )
        half = net.mapping(latents(), truncation_psi=0.5, truncation_cutoff=3)
        expected = net.mapping.w_avg + 0.5 * (ws[:, :3] - net.mapping.w_avg)
        torch.testing.assert_close(half[:, :3], expected, atol=1e-6, rtol=0)
        assert torch.equal(half[:, 3:], ws[:, 3:])  # layers past the cutoff keep their w


def block_features(net: StyleGANGenerator, ws: torch.Tensor, resolution: int) -> torch.Tensor:
    """The feature map (not the image) that the block at `resolution` outputs."""
    seen = []
    block = net.synthesis.blocks[net.synthesis.resolutions.index(resolution)]
    hook = block.register_forward_hook(lambda _m, _i, out: seen.append(out[0]))
    with torch.no_grad():
        net.synthesis(ws, noise_mode="const")
    hook.remove()
    return seen[0]


@pytest.mark.parametrize(
    ("synthesis", "layout"),
    [
        ("modulated", {4: (0, 2), 8: (1, 4), 16: (3, 6), 32: (5, 8)}),
        ("adain", {4: (0, 2), 8: (2, 4), 16: (4, 6), 32: (6, 8)}),
    ],
)
def test_fine_styles_leave_the_coarse_features_unchanged(synthesis: str, layout: dict) -> None:
    net = generator(synthesis=synthesis, architecture="skip")
    assert (net.num_ws, net.w_dim, net.ws_at_resolution) == (8, 32, layout)  # 2·log2(32) − 2
    with torch.no_grad():
        ws, other = net.mapping(latents(seed=1)), net.mapping(latents(seed=2))
    coarse = block_features(net, ws, 8)
    fine_end = layout[8][1]
    mixed = torch.cat([ws[:, :fine_end], other[:, fine_end:]], dim=1)
    assert torch.equal(block_features(net, mixed, 8), coarse)  # bitwise
    first = torch.cat([other[:, :2], ws[:, 2:]], dim=1)
    assert (block_features(net, first, 8) - coarse).abs().max() > 1e-2
    with torch.no_grad():
        image = net.synthesis(ws, noise_mode="const")
        for i in range(net.num_ws):  # every w is read: the last one by the last ToRGB alone
            moved = torch.cat([ws[:, :i], other[:, i : i + 1], ws[:, i + 1 :]], dim=1)
            assert (net.synthesis(moved, noise_mode="const") - image).abs().max() > 1e-4, i


def test_demodulation_is_scale_free_and_keeps_unit_variance() -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(4, 32, 16, 16), torch.randn(24, 32, 3, 3)
    styles = torch.randn(4, 32) + 1
    out = modulated_conv2d(x, weight, styles)
    torch.testing.assert_close(modulated_conv2d(x, weight, 3.7 * styles), out, atol=1e-5, rtol=0)
    std = out[:, :, 1:-1, 1:-1].transpose(0, 1).flatten(1).std(dim=1)  # per channel, interior
    assert ((std - 1).abs() < 0.15).all(), std
    fir = torch.tensor([1.0, 3.0, 3.0, 1.0])
    fir = torch.outer(fir, fir) / 64
    up = modulated_conv2d(x, weight, styles, up_filter=fir)
    assert up.shape == (4, 24, 32, 32)
    torch.testing.assert_close(
        modulated_conv2d(x, weight, 0.2 * styles, up_filter=fir), up, atol=1e-5, rtol=0
    )
    plain = modulated_conv2d(x, weight, styles, demodulate=False)  # ToRGB's path: no σ_o
    torch.testing.assert_close(
        modulated_conv2d(x, weight, 2 * styles, demodulate=False), 2 * plain
    )


def test_up_conv_is_the_fir_upsampling_then_the_conv_away_from_the_border() -> None:
    # S2A's fused up path (stride-2 transposed conv, then the [1,3,3,1] FIR × 4) is, away from
    # the 1-pixel border, upsample_2x then the 3×3 conv with the kernel flipped.
    torch.manual_seed(0)
    x, weight = torch.randn(2, 5, 8, 8), torch.randn(4, 5, 3, 3)
    up = modulated_conv2d(x, weight, torch.ones(2, 5), demodulate=False, up_filter=fir_filter())
    reference = F.conv2d(upsample_2x(x, fir_filter()), weight.flip([2, 3]), padding=1)
    assert up.shape == reference.shape == (2, 4, 16, 16)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], reference[..., 1:-1, 1:-1])


def noise_strengths(net: nn.Module) -> list[nn.Parameter]:
    return [m.noise_strength for m in net.modules() if isinstance(m, SynthesisLayer | AdaINLayer)]


@pytest.mark.parametrize("synthesis", ["modulated", "adain"])
def test_noise_strength_starts_at_zero_and_const_noise_is_fixed(synthesis: str) -> None:
    net, z = generator(resolution=16, synthesis=synthesis), latents()
    shapes = {tuple(s.shape) for s in noise_strengths(net)}
    assert shapes == ({()} if synthesis == "modulated" else {(32,), (16,)})  # SG1: per channel
    with torch.no_grad():
        assert torch.equal(net(z, noise_mode="random"), net(z, noise_mode="const"))
        for strength in noise_strengths(net):
            strength.fill_(1.0)
        assert (net(z, noise_mode="random") - net(z, noise_mode="random")).abs().max() > 1e-3
        assert torch.equal(net(z, noise_mode="const"), net(z, noise_mode="const"))
        assert (net(z, noise_mode="const") - net(z, noise_mode="none")).abs().max() > 1e-3


def test_initial_styles_and_constants_follow_the_references() -> None:
    v2, v1 = generator(resolution=16), generator(resolution=16, synthesis="adain")
    affines = [m.affine for m in v2.modules() if isinstance(m, SynthesisLayer | ToRGB)]
    assert len(affines) == 5 + 3  # convs 1 + 2 + 2, ToRGBs at 4, 8, 16 (skip)
    assert all(torch.equal(a.bias * a.bias_gain, torch.ones_like(a.bias)) for a in affines)
    styles = [m.style for m in v1.modules() if isinstance(m, AdaINLayer)]
    assert len(styles) == 6 and all(torch.equal(s.bias, torch.zeros_like(s.bias)) for s in styles)
    const = v2.synthesis.blocks[0].const
    assert torch.equal(v1.synthesis.blocks[0].const, torch.ones(32, 4, 4))
    assert const.shape == (32, 4, 4) and 0.8 < const.std() < 1.2  # StyleGAN2: randn


def test_mapping_lr_multiplier_slows_its_effective_weights_a_hundredfold() -> None:
    torch.manual_seed(0)
    slow, fast = EqualizedLinear(32, 32, lr_mul=0.01).double(), EqualizedLinear(32, 32).double()
    before = [layer.weight.detach() * layer.weight_gain for layer in (slow, fast)]
    grad = torch.randn(32, 32, dtype=torch.float64)
    for layer in (slow, fast):
        layer.weight.grad = grad.clone()
    torch.optim.Adam([slow.weight, fast.weight], lr=1e-3).step()
    after = [layer.weight.detach() * layer.weight_gain for layer in (slow, fast)]
    ratio = (after[0] - before[0]) / (after[1] - before[1])
    assert (ratio - 0.01).abs().max() < 1e-6
    assert generator().mapping.layers[0].weight_gain == pytest.approx(0.01 / math.sqrt(Z))


def test_w_avg_tracks_the_batch_mean_only_in_training() -> None:
    net, z = generator(), latents(8)
    assert torch.equal(net.mapping.w_avg, torch.zeros(32))
    assert "mapping.w_avg" in net.state_dict()  # persistent: checkpoints and EMA keep it
    with torch.no_grad():
        net.mapping(z)  # eval mode
        net.train().mapping(z, update_w_avg=False)  # the style-mixing pass
        assert torch.equal(net.mapping.w_avg, torch.zeros(32))
        ws = net.mapping(z)
    torch.testing.assert_close(net.mapping.w_avg, 0.005 * ws[:, 0].mean(dim=0), atol=1e-7, rtol=0)


def minibatch_std_reference(x: np.ndarray, group: int, features: int) -> np.ndarray:
    n, c, h, w = x.shape
    groups = n // group
    extra = np.zeros((n, features, h, w))
    for m in range(groups):  # sample i joins group i mod (n / group)
        members = x[m::groups].reshape(group, features, c // features, h, w)
        std = np.sqrt(members.var(axis=0) + 1e-8).mean(axis=(1, 2, 3))
        extra[m::groups] = std[:, None, None]
    return np.concatenate([x, extra], axis=1)


def test_minibatch_std_matches_a_numpy_reference_and_refuses_a_ragged_batch() -> None:
    x = torch.randn(8, 6, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for group, features in [(4, 1), (2, 2), (8, 3)]:
        got = MinibatchStd(group, features)(x)
        np.testing.assert_allclose(
            got.numpy(), minibatch_std_reference(x.numpy(), group, features), rtol=1e-6
        )
    assert MinibatchStd(4)(x[:2]).shape == (2, 7, 4, 4)  # group > batch: one group of 2
    with pytest.raises(ValueError, match="data.batch_size to a multiple"):
        MinibatchStd(4)(x[:6])


def test_r1_and_path_length_double_backward_on_cpu() -> None:
    net, critic_net = generator(resolution=16), critic(mbstd_group=2)
    real = torch.randn(4, 3, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(critic_net(real).sum(), real, create_graph=True)
    grad.square().sum(dim=[1, 2, 3]).mean().backward()  # R1
    weights = [m.weight.grad for m in critic_net.modules() if hasattr(m, "weight")]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in weights)
    with torch.no_grad():
        ws = net.mapping(latents())
    ws.requires_grad_(True)
    images = net.synthesis(ws)
    noise = torch.randn_like(images) / 16  # 1/√(H·W)
    (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    grad.square().sum(dim=2).mean(dim=1).sqrt().mean().backward()  # path length
    convs = [m.weight.grad for m in net.modules() if isinstance(m, SynthesisLayer)]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in convs)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_stylegan2_ada_cifar() -> None:
    # Instantiating S2A's `--cfg=cifar` networks: G 19.95M (mapping 0.53M), D 20.72M ('orig');
    # conditional on 10 classes G 20.22M, D 23.09M (its label mapping has 8 layers).
    big = {"channel_base": 32768, "channel_max": 512}
    with torch.device("meta"):  # shapes only: no memory, no init time
        g = StyleGANGenerator(512, [3, 32, 32], mapping_layers=2, **big)
        d = StyleGANDiscriminator([3, 32, 32], architecture="orig", **big)
        resnet = StyleGANDiscriminator([3, 32, 32], **big)
        g10 = StyleGANGenerator(512, [3, 32, 32], num_classes=10, mapping_layers=2, **big)
        d10 = StyleGANDiscriminator([3, 32, 32], 10, architecture="orig", mapping_layers=8, **big)
    assert (count(g), count(g.mapping)) == (19_947_539, 525_312)
    assert count(d) == 20_720_641
    assert count(resnet) - count(d) == 3 * 512 * 512  # the three 1x1 skips, no bias
    assert (count(g10), count(d10)) == (20_215_315, 23_089_664)


def test_conditional_critic_projects_on_the_label_mapping() -> None:
    net = critic(num_classes=10, cmap_dim=8)
    x, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        out = net.outputs(x, labels)
        raw, features = net.epilogue(net.blocks[1](net.blocks[0](x)))
        cmap = net.mapping(None, labels)
    assert out.features.shape == (4, 32) and torch.equal(out.features, features)
    torch.testing.assert_close(out.scores, (raw * cmap).sum(dim=1) / math.sqrt(8))
    with pytest.raises(ValueError, match="class-conditional"):
        net(x)


@pytest.mark.parametrize("resolution", [12, 4, 2048])
def test_bad_resolutions_are_refused_in_one_line(resolution: int) -> None:
    for build in (generator, critic):
        with pytest.raises(ValueError, match=r"^resolution .*set data.resolution\)$"):
            build(resolution)


@pytest.mark.parametrize("arch", ["stylegan2", "stylegan"])
def test_arch_configs_build_the_networks_they_name(tmp_path, arch: str) -> None:
    widths = [
        f"arch.{side}.{k}={v}" for side in ("generator", "discriminator") for k, v in TINY.items()
    ]
    cfg = compose_config([f"arch={arch}", "data=digits", "data.resolution=16", *widths], tmp_path)
    g, d = instantiate(cfg.arch.generator), instantiate(cfg.arch.discriminator)
    kind = "modulated" if arch == "stylegan2" else "adain"
    direct = StyleGANGenerator(
        cfg.z_dim,
        [1, 16, 16],
        synthesis=kind,
        architecture=cfg.arch.generator.architecture,
        **TINY,
    )
    assert count(g) == count(direct)
    images = g(torch.randn(4, cfg.z_dim))
    assert images.shape == (4, 1, 16, 16) and d(images).shape == (4,)


def test_no_module_of_the_package_loads_a_compiled_extension() -> None:
    # The official StyleGAN code builds CUDA plugins on import, its users' first complaint:
    # importing every gan_runner module must not even load torch's extension builder.
    code = (
        "import importlib, pkgutil, sys, gan_runner\n"
        "for m in pkgutil.walk_packages(gan_runner.__path__, 'gan_runner.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(k for k in sys.modules if 'cpp_extension' in k))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
