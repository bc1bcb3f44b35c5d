"""aug=diffaug in a run: which critics it reaches, what it refuses, and an exact resume.

The augmentation itself (each policy against the reference code): tests/test_augment.py.
"""

from __future__ import annotations

import pytest
import torch

from conftest import QUICK, TINY_DIGITS
from gan_runner.errors import UserError
from gan_runner.train import build_module, train
from test_resume import _assert_same_state, straight_and_resumed

AUGMENTED_DIGITS = [*TINY_DIGITS, "aug=diffaug", "callbacks=none", "data.batch_size=16"]


def test_every_image_the_critic_judges_is_augmented_in_both_phases(make_cfg) -> None:
    module = build_module(make_cfg(*AUGMENTED_DIGITS))
    seen: list[torch.Tensor] = []
    first = module.discriminator.features[0]
    first.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    real = torch.rand(16, 1, 8, 8) * 2 - 1
    module.discriminator.train()
    torch.manual_seed(0)
    module.discriminator(real)
    assert not torch.equal(seen[-1], real)  # translation and cutout moved pixels
    module.discriminator.eval()  # gan-eval's critic metrics see the images as they are
    module.discriminator(real)
    assert torch.equal(seen[-1], real)
    # The generator's loss reaches G through the augmentation (it is differentiable).
    module.discriminator.train()
    fake = module.generator(torch.randn(16, module.z_dim))
    module.discriminator(fake).sum().backward()
    assert all(p.grad is not None for p in module.generator.parameters())
    assert any(p.grad.abs().sum() > 0 for p in module.generator.parameters())


def test_bigan_augments_the_image_of_each_joint_pair(make_cfg) -> None:
    # T(x, z) = (aug(x), z) acts on real (x, E(x)) and generated (G(z), z) pairs alike.
    cfg = make_cfg("model=bigan", "data=digits", "data.resolution=8", "aug=diffaug")
    module = build_module(cfg)
    seen: list[torch.Tensor] = []
    module.discriminator.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    x, z = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, module.z_dim)
    torch.manual_seed(0)
    augmented = module.discriminator(x, None, z=z)
    torch.manual_seed(0)
    module.discriminator.augment.eval()
    plain = module.discriminator(x, None, z=z)
    assert not torch.equal(augmented, plain) and not torch.equal(seen[0], x)  # x augmented


def test_cyclegan_augments_both_critics(make_cfg) -> None:
    module = build_module(
        make_cfg(
            "model=cyclegan",
            "data=digits_unpaired",
            "aug=diffaug",
            "metrics=[]",
            "data.resolution=8",
            *[f"arch.{n}.width=8" for n in ("generator", "generator_ba")],
            *[f"arch.{n}.n_blocks=1" for n in ("generator", "generator_ba")],
            *[f"arch.{n}.width=8" for n in ("discriminator", "discriminator_a")],
        )
    )
    assert hasattr(module.discriminator, "augment") and hasattr(module.discriminator_a, "augment")
    assert not hasattr(module.generator, "augment")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=aae", "data=digits"], "model=aae's critic reads latent codes, not images"),
        (["data=ring8"], "aug=diffaug augments images, but data=ring8 is not image data"),
        ([*TINY_DIGITS, "aug.policy=[color,rotate]"], "aug.policy names rotate; the known"),
    ],
    ids=["aae", "2d-data", "unknown-policy"],
)
def test_augmentation_where_it_cannot_work_is_one_line(make_cfg, overrides, message) -> None:
    with pytest.raises(UserError) as refused:
        train(make_cfg(*overrides, "aug=diffaug", "train.g_steps=1"))
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_resume_with_augmentation_is_bit_exact(tmp_path) -> None:
    # DiffAugment draws from torch's global stream, which every checkpoint saves.
    common = [
        *QUICK,
        *AUGMENTED_DIGITS,
        "callbacks=default",
        "callbacks.metrics=null",
        "callbacks.samples=null",
        "callbacks.checkpoint.every=6",
        "train.g_steps=12",
    ]
    a, b = straight_and_resumed(tmp_path, common, at=6)
    assert a["gan_runner"]["counters"]["g_steps"] == 12
    _assert_same_state(a, b)
