"""BigGAN's networks (Brock et al. 2019): hierarchical z, shared embedding, cBN, projection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from conftest import compose_config
from gan_runner.nets.attention import SelfAttention
from gan_runner.nets.biggan import BigGANDiscriminator, BigGANGenerator
from gan_runner.nets.biggan_blocks import GeneratorBlock, LinearConditionalBatchNorm2d

CLASSES, SHARED = 10, 16


def generator(resolution: int = 32, z_dim: int = 20, **kwargs) -> BigGANGenerator:
    torch.manual_seed(0)
    kwargs = {"width": 8, "num_classes": CLASSES, "shared_dim": SHARED, **kwargs}
    return BigGANGenerator(z_dim, [3, resolution, resolution], **kwargs)


def critic(resolution: int = 32, **kwargs) -> BigGANDiscriminator:
    torch.manual_seed(0)
    return BigGANDiscriminator([3, resolution, resolution], **{"width": 8, **kwargs})


def inputs(batch: int = 6, z_dim: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    drawn = torch.Generator().manual_seed(1)
    return torch.randn(batch, z_dim, generator=drawn), torch.arange(batch) % CLASSES


def recorded(network: nn.Module, modules: list[nn.Module], *args) -> list[torch.Tensor]:
    """The outputs of `modules` during one forward pass of `network`."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in modules]
    with torch.no_grad():
        network(*args)
    for hook in hooks:
        hook.remove()
    return seen


def norms(network: nn.Module) -> list[LinearConditionalBatchNorm2d]:
    return [m for m in network.modules() if isinstance(m, LinearConditionalBatchNorm2d)]


def test_hierarchical_z_feeds_one_chunk_per_slot() -> None:
    net = generator(z_dim=22)  # 32x32: 3 up-blocks, 4 slots of 22 // 4 = 5 (2 ignored)
    assert (net.chunk, net.z_used, net.linear.in_features) == (5, 20, 5)
    assert len(norms(net)) == 6
    for norm in norms(net):
        assert norm.gain.in_features == norm.bias.in_features == SHARED + 5
    flat = generator(z_dim=22, hierarchical=False)
    assert flat.linear.in_features == 22
    assert {n.gain.in_features for n in norms(flat)} == {SHARED}
    z, y = inputs(z_dim=22)
    tail = z.clone()
    tail[:, 20:] += 1.0  # BigGAN-PyTorch rounds z_dim down: the remainder is never read
    before, after = recorded(net, [net.output], z, y), recorded(net, [net.output], tail, y)
    assert torch.equal(before[0], after[0])


def test_replacing_a_chunk_changes_only_what_follows_its_block() -> None:
    net = generator(z_dim=20)  # chunks of 5: chunk 0 -> linear, chunk i -> blocks[i - 1]
    stages = [net.linear, *net.blocks, net.output]
    z, y = inputs()
    base = recorded(net, stages, z, y)
    for chunk in range(4):
        moved = z.clone()
        moved[:, 5 * chunk : 5 * chunk + 5] = torch.randn(6, 5)
        after = recorded(net, stages, moved, y)
        first = chunk  # index in `stages` of the first module that reads the chunk
        for index, (old, new) in enumerate(zip(base, after)):
            if index < first:
                assert torch.equal(old, new), (chunk, index)
            else:
                assert (old - new).abs().max() > 1e-4, (chunk, index)


def test_conditional_norm_with_zero_weights_is_plain_batch_norm() -> None:
    torch.manual_seed(0)
    norm = LinearConditionalBatchNorm2d(7, 4)
    x = 3 * torch.randn(5, 4, 6, 6) + 1
    plain = F.batch_norm(x, None, None, training=True, eps=1e-5)
    c = torch.randn(5, 7)
    gain, bias = 1 + c @ norm.gain.weight.T, c @ norm.bias.weight.T
    manual = plain * gain[:, :, None, None] + bias[:, :, None, None]
    assert torch.allclose(norm(x, c), manual, atol=1e-5)
    nn.init.zeros_(norm.gain.weight)
    nn.init.zeros_(norm.bias.weight)
    for scale in (1.0, -50.0):
        assert torch.allclose(norm(x, scale * c), plain, atol=1e-6)


def test_generator_block_is_biggan_pytorchs_gblock() -> None:
    torch.manual_seed(0)
    block, x, c = GeneratorBlock(4, 6, 5), torch.randn(3, 4, 5, 5), torch.randn(3, 5)

    def up(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    h = block.conv1(up(F.relu(block.norm1(x, c))))  # cBN-ReLU-upsample(nearest)-conv3
    h = block.conv2(F.relu(block.norm2(h, c)))  # cBN-ReLU-conv3
    expected = h + block.shortcut(up(x))  # skip: upsample -> conv1x1
    assert block(x, c).shape == (3, 6, 10, 10)
    assert torch.allclose(block(x, c), expected, atol=1e-6)


def test_one_shared_embedding_conditions_every_norm() -> None:
    net = generator()
    embeddings = [m for m in net.modules() if isinstance(m, nn.Embedding)]
    assert embeddings == [net.shared]
    z, y = inputs()
    seen: list[torch.Tensor] = []
    hooks = [n.register_forward_pre_hook(lambda _, args: seen.append(args[1])) for n in norms(net)]
    with torch.no_grad():
        net(z, y)
        net(z, (y + 1) % CLASSES)
        assert torch.equal(net(z, y), net.synthesize(z, net.shared(y)))
    for hook in hooks:
        hook.remove()
    first, second = seen[:6], seen[6:12]
    for old, new in zip(first, second):
        assert (old[:, :SHARED] - new[:, :SHARED]).abs().min() > 0  # every row's class moved
        assert torch.equal(old[:, SHARED:], new[:, SHARED:])  # its z chunk did not


def test_projection_term_is_the_embedding_difference_on_the_features() -> None:
    net = critic(num_classes=CLASSES).eval()
    x = torch.randn(6, 3, 32, 32)
    y1, y2 = torch.arange(6), (torch.arange(6) + 3) % CLASSES
    with torch.no_grad():
        first, second = net.outputs(x, y1), net.outputs(x, y2)
        embed = net.projection.embedding
        expected = ((embed(y1) - embed(y2)) * first.features).sum(dim=1)
    assert torch.equal(first.features, second.features)
    assert torch.allclose(first.scores - second.scores, expected, atol=1e-4, rtol=1e-5)
    last = recorded(net, [net.blocks[-1]], x, y1)[0]
    assert torch.allclose(first.features, F.relu(last).sum(dim=(2, 3)))  # global sum pooling
    assert first.features.shape == (6, 32)  # width 8 x multiplier 4
    headed = critic(num_classes=CLASSES, heads={"class_logits": CLASSES}).eval()
    with torch.no_grad():
        out = headed.outputs(x, y1)
        logits = headed.heads["class_logits"](out.features)
    assert torch.equal(out.heads["class_logits"], logits) and logits.shape == (6, CLASSES)


@pytest.mark.parametrize(
    ("resolution", "g_at", "d_at", "d_sizes"), [(32, 16, 16, [16, 8, 8, 8]), (16, 8, 4, [8, 4, 4])]
)
def test_attention_and_blocks_sit_at_their_resolutions(resolution, g_at, d_at, d_sizes) -> None:
    net = generator(resolution, attention_resolutions=[g_at])
    sites = [m for m in net.modules() if isinstance(m, SelfAttention)]
    z, y = inputs()
    assert len(sites) == 1 and recorded(net, sites, z, y)[0].shape[-1] == g_at
    assert recorded(net, [net.output], z, y)[0].shape == (6, 3, resolution, resolution)
    net = critic(resolution, num_classes=CLASSES, attention_resolutions=[d_at])
    sites = [m for m in net.modules() if isinstance(m, SelfAttention)]
    x = torch.randn(2, 3, resolution, resolution)
    assert len(sites) == 1 and recorded(net, sites, x, y[:2])[0].shape[-1] == d_at
    assert [out.shape[-1] for out in recorded(net, list(net.blocks), x, y[:2])] == d_sizes


def test_bad_settings_are_refused_in_one_line() -> None:
    cases = [
        (lambda: generator(num_classes=0), "class-conditional.*data=digits.*arch=resnet"),
        (lambda: generator(attention_resolutions=[4]), "generator.attention_resolutions has 4"),
        (lambda: critic(attention_resolutions=[32]), "discriminator.attention_resolutions"),
        (lambda: generator(multipliers=[4, 4]), "arch.generator.multipliers .* must hold 3"),
        (lambda: critic(multipliers=[4, 4, 4]), "arch.discriminator.multipliers .* must hold 4"),
        (lambda: generator(z_dim=3), "z_dim 3 is below the 4 chunks"),
    ]
    for build, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            build()
        assert "\n" not in str(error.value)


def test_explicit_multipliers_set_block_widths() -> None:
    net = generator(multipliers=[2, 1, 3])
    assert [b.conv2.out_channels for b in net.blocks] == [16, 8, 24]
    assert net.linear.out_features == 16 * 4 * 4  # the 4x4 input has the first block's width
    wide = generator(64)  # BigGAN-PyTorch's 64x64 table from 16 x width at 4x4
    assert [b.conv2.out_channels for b in wide.blocks] == [128, 64, 32, 16]
    deep = critic(64)
    assert [b.conv2.out_channels for b in deep.blocks] == [8, 16, 32, 64, 128]


def test_output_is_bounded_by_tanh_only_when_asked() -> None:
    z, y = inputs()
    bounded, free = generator(), generator(bounded=False)
    with torch.no_grad():
        images, raw = bounded(z, y), free(z, y)
    assert images.shape == (6, 3, 32, 32) and images.abs().max() <= 1
    assert torch.allclose(images, torch.tanh(raw), atol=1e-6)  # same weights: same seed
    assert raw.abs().max() > 1


def test_weights_start_orthogonal_and_biases_at_zero() -> None:
    layers = (nn.Conv2d, nn.Linear, nn.Embedding)
    for net in (generator(), critic(num_classes=CLASSES)):
        for module in (m for m in net.modules() if isinstance(m, layers)):
            w = module.weight.flatten(1)
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            assert torch.allclose(gram, torch.eye(len(gram)), atol=1e-5), module
            if getattr(module, "bias", None) is not None:
                assert not module.bias.any()


def test_parameter_counts_match_biggan_pytorch_at_studiogan_cifar_settings() -> None:
    # BigGAN-PyTorch's own Generator(G_ch=96, dim_z=80, resolution=32, G_attn='16',
    # n_classes=10, G_shared=True, shared_dim=128, hier=True) and Discriminator(D_ch=96,
    # D_attn='0') instantiated: 9,416,196 and 9,456,769 parameters.
    g = BigGANGenerator(80, [3, 32, 32], num_classes=10)
    d = BigGANDiscriminator([3, 32, 32], num_classes=10, attention_resolutions=[])
    assert sum(p.numel() for p in g.parameters()) == 9_416_196
    assert sum(p.numel() for p in d.parameters()) == 9_456_769


def test_composed_arch_instantiates(tmp_path) -> None:
    tiny = ["arch=biggan", "data=digits", "num_classes=10", "z_dim=20"]
    tiny += [f"arch.{net}.width=8" for net in ("generator", "discriminator")]
    cfg = compose_config([*tiny, "arch.discriminator.attention_resolutions=[8]"], tmp_path)
    net, judge = instantiate(cfg.arch.generator), instantiate(cfg.arch.discriminator)
    assert (net.chunk, net.shared.embedding_dim, len(net.blocks)) == (6, 128, 2)  # 20 // 3
    z, y = inputs(4)
    images = net(z, y)
    assert images.shape == (4, 1, 16, 16) and images.abs().max() <= 1
    assert judge(images, y).shape == (4,)
    refused = compose_config(tiny, tmp_path)  # attention at 16 is for 32x32 data
    with pytest.raises(Exception, match="discriminator.attention_resolutions has 16"):
        instantiate(refused.arch.discriminator)
