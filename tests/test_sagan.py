"""SAGAN (Zhang et al. 2019): the released self-attention block, its placement, spectral norm in
both players, TTUR, and a brief conditional run on digits that learns."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from gan_runner.errors import UserError
from gan_runner.nets.attention import SelfAttention
from gan_runner.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from gan_runner.nets.resnet import ResNetDiscriminator, ResNetGenerator
from gan_runner.train import build_module, train
from helpers_quality import pixel_frechet, prepare, trace_of_covariance

# The recipe at 8 px and width 16: attention where 8-px players have maps (G 8x8, D 4x4).
SAGAN_8PX = [
    "model=sagan",
    "data=digits",
    "data.resolution=8",
    "data.batch_size=64",
    "arch.generator.width=16",
    "arch.discriminator.width=16",
    "arch.generator.attention_resolutions=[8]",
    "arch.discriminator.attention_resolutions=[4]",
]


def test_block_starts_as_identity_and_only_gamma_learns_at_first() -> None:
    torch.manual_seed(0)
    block = SelfAttention(32)
    x = torch.randn(2, 32, 8, 8)
    y = block(x)
    assert torch.equal(y, x)
    y.square().sum().backward()
    assert block.gamma.grad is not None and block.gamma.grad.abs() > 0
    for conv in (block.theta, block.phi, block.g, block.out):  # γ = 0 blocks their gradient
        assert torch.count_nonzero(conv.weight.grad) == 0
    with torch.no_grad():
        block.gamma -= 0.01 * block.gamma.grad  # one SGD step on γ alone
    block.zero_grad()
    block(x).square().sum().backward()
    assert block.theta.weight.grad.abs().max() > 0 and block.out.weight.grad.abs().max() > 0


def test_attention_rows_sum_to_one_over_pooled_keys() -> None:
    torch.manual_seed(0)
    block = SelfAttention(16)
    beta = block.attention(torch.randn(3, 16, 8, 8))
    assert beta.shape == (3, 64, 16)  # N queries attend to N/4 max-pooled keys
    assert torch.allclose(beta.sum(dim=-1), torch.ones(3, 64), atol=1e-6)
    with pytest.raises(ValueError, match="does not divide"):
        block.attention(torch.randn(1, 16, 7, 7))


def test_block_is_the_released_one_in_size_and_gamma_is_a_scalar() -> None:
    block = SelfAttention(256)
    # θ, φ: C -> C/8; g: C -> C/2; out: C/2 -> C; no biases; one scalar γ.
    assert sum(p.numel() for p in block.parameters()) == 2 * 256 * 32 + 2 * 256 * 128 + 1
    assert block.gamma.dim() == 0
    assert all(conv.bias is None for conv in (block.theta, block.phi, block.g, block.out))


@pytest.mark.parametrize(
    ("generator", "discriminator"),
    [
        (ResNetGenerator(8, [1, 16, 16], width=16, attention_resolutions=[8]), None),
        (DCGANGenerator(8, [1, 16, 16], base_width=16, attention_resolutions=[8]), None),
        (None, ResNetDiscriminator([1, 16, 16], width=16, attention_resolutions=[4])),
        (None, DCGANDiscriminator([1, 16, 16], base_width=16, attention_resolutions=[4])),
    ],
    ids=["resnet-G", "dcgan-G", "resnet-D", "dcgan-D"],
)
def test_attention_sits_at_the_configured_resolution(generator, discriminator) -> None:
    seen: list[tuple[int, ...]] = []
    net = generator or discriminator
    blocks = [m for m in net.modules() if isinstance(m, SelfAttention)]
    assert len(blocks) == 1
    blocks[0].register_forward_hook(lambda _m, inputs, _o: seen.append(tuple(inputs[0].shape)))
    out = generator(torch.randn(2, 8)) if generator else discriminator(torch.randn(2, 1, 16, 16))
    expected = 8 if generator else 4
    assert seen and seen[0][-2:] == (expected, expected) and len(seen) == 1
    assert out.shape[0] == 2


def test_attention_at_a_missing_resolution_is_one_line(make_cfg) -> None:
    cfg = make_cfg(*SAGAN_8PX, "arch.generator.attention_resolutions=[32]")
    with pytest.raises(UserError, match=r"attention_resolutions has 32.*they output 8") as error:
        build_module(cfg)
    assert "\n" not in str(error.value)


def test_recipe_normalizes_both_players_and_runs_ttur(make_cfg) -> None:
    module = build_module(make_cfg(*SAGAN_8PX))
    layers = (nn.Linear, nn.Conv2d)
    for name in ("generator", "discriminator"):
        net = getattr(module, name)
        for layer in (m for m in net.modules() if isinstance(m, layers)):
            assert parametrize.is_parametrized(layer, "weight"), (name, layer)
    # G's class-conditional BatchNorm gains are plain embeddings, as in SAGAN's code.
    embeddings = [m for m in module.generator.modules() if isinstance(m, nn.Embedding)]
    assert embeddings and not any(parametrize.is_parametrized(m, "weight") for m in embeddings)
    assert all(
        parametrize.is_parametrized(m, "weight")
        for m in module.discriminator.modules()
        if isinstance(m, nn.Embedding)
    )
    # A few power iterations bring every normalized G weight's largest singular value to 1.
    module.generator.train()
    with torch.no_grad():
        for _ in range(20):
            module.generator(torch.randn(4, module.z_dim), torch.arange(4))
    for layer in (m for m in module.generator.modules() if isinstance(m, layers)):
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert abs(float(sigma) - 1) < 0.05, layer
    optimizers = {p: f(module.parameters_of(p)) for p, f in module.optimizer_factories.items()}
    g, d = optimizers["generator"].defaults, optimizers["discriminator"].defaults
    assert (g["lr"], d["lr"]) == (1e-4, 4e-4) and g["betas"] == d["betas"] == (0.0, 0.9)


def test_spectral_norm_on_a_network_the_arch_lacks_is_one_line(make_cfg) -> None:
    cfg = make_cfg(*SAGAN_8PX, "regularizer.spectral_norm.networks=[discriminator,encoder]")
    with pytest.raises(UserError, match="networks names encoder"):
        build_module(cfg)


def test_sagan_learns_conditional_digits(make_cfg) -> None:
    cfg = make_cfg(*SAGAN_8PX, "train.g_steps=500", "callbacks=none")
    run = prepare(cfg)
    before = pixel_frechet(run.module, run.datamodule.data)
    gamma_before = [
        float(m.gamma.detach()) for m in run.module.generator.modules() if hasattr(m, "gamma")
    ]
    run.fit()
    after = pixel_frechet(run.module, run.datamodule.data)
    gamma = [
        float(m.gamma.detach()) for m in run.module.generator.modules() if hasattr(m, "gamma")
    ]
    summary = f"sagan 8px, 500 steps: pixel FD {before:.2f} -> {after:.2f}, G gamma {gamma}"
    print(summary)
    assert gamma_before == [0.0] and gamma[0] != 0.0, summary  # attention was used
    assert after <= 0.5 * before and after < trace_of_covariance(run.datamodule.data), summary


def test_refused_recipe_leaves_nothing_trained(make_cfg) -> None:
    # SAGAN is class-conditional as the paper: unlabelled data is refused before training.
    cfg = make_cfg(*SAGAN_8PX, "data.num_classes=0")
    with pytest.raises(UserError, match="class-conditional"):
        train(cfg)
