"""DiffAugment (Zhao et al. 2020) against hand-made images and replayed draws, its hook on the
critic, and data.fraction's limited-data subset (count, class balance, seeding, null = as before).
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import CONF
from gan_runner.augment import (
    DiffAugment,
    attach_augmentation,
    brightness,
    contrast,
    critic_outputs,
    cutout,
    saturation,
    translation,
)
from gan_runner.data.batches import IndexedTensors, ShuffledBatches
from gan_runner.data.digits import Digits, DigitsUnpaired
from gan_runner.data.module import GANDataModule, TensorData, fraction_indices
from gan_runner.errors import UserError
from gan_runner.metrics.fidelity import reference_data
from gan_runner.nets.dcgan import DCGANDiscriminator

DIGITS = 1797


def positions(n: int, side: int, channels: int = 1) -> torch.Tensor:
    """(n, C, side, side) images whose every pixel value is unique and nonzero."""
    count = n * channels * side * side
    return torch.arange(1, count + 1, dtype=torch.float64).view(n, channels, side, side)


# ----------------------------------------------------------------------------- the policies
@pytest.mark.parametrize(("side", "ratio", "reach"), [(8, 0.125, 1), (8, 0.25, 2), (4, 0.5, 2)])
def test_translation_is_a_zero_filled_shift_by_the_drawn_amount(side, ratio, reach) -> None:
    x = positions(64, side)
    torch.manual_seed(3)
    out = translation(x, ratio)
    torch.manual_seed(3)  # the reference's draws, in its order: rows, then columns
    dy = torch.randint(-reach, reach + 1, size=[64, 1, 1])
    dx = torch.randint(-reach, reach + 1, size=[64, 1, 1])
    assert set(dy.flatten().tolist()) == set(range(-reach, reach + 1))  # every shift occurs
    expected = torch.zeros_like(x)
    for n in range(64):
        for i in range(side):
            for j in range(side):
                si, sj = i + int(dy[n]), j + int(dx[n])
                if 0 <= si < side and 0 <= sj < side:
                    expected[n, 0, i, j] = x[n, 0, si, sj]
    assert torch.equal(out, expected)


@pytest.mark.parametrize(("side", "size"), [(8, 4), (5, 3), (4, 2)])
def test_cutout_zeroes_a_square_of_half_the_side_at_the_drawn_centre(side, size) -> None:
    x = positions(200, side)
    torch.manual_seed(5)
    out = cutout(x, 0.5)
    torch.manual_seed(5)  # centres in [0, side] for an even square, [0, side - 1] for an odd one
    top = side + 1 - size % 2
    cy, cx = (torch.randint(0, top, size=[200, 1, 1]).flatten() for _ in range(2))
    assert int(cy.max()) == top - 1 and int(cy.min()) == 0
    for n in range(200):
        rows = {r for r in range(cy[n] - size // 2, cy[n] - size // 2 + size) if 0 <= r < side}
        cols = {c for c in range(cx[n] - size // 2, cx[n] - size // 2 + size) if 0 <= c < side}
        zeroed = torch.zeros(side, side, dtype=torch.bool)
        zeroed[torch.tensor(sorted(rows)).view(-1, 1), torch.tensor(sorted(cols))] = True
        assert torch.equal(out[n, 0] == 0, zeroed)
        assert torch.equal(out[n, 0][~zeroed], x[n, 0][~zeroed])
    # A square wholly inside the image has exactly size² zeros.
    fits = [bool(size // 2 <= c <= side - size + size // 2) for c in (*cy, *cx)]
    inside = [n for n in range(200) if fits[n] and fits[200 + n]]
    assert inside and all(int((out[n] == 0).sum()) == size * size for n in inside)


def test_brightness_adds_one_uniform_draw_in_plus_minus_half_per_sample() -> None:
    x = positions(2000, 4, 3) / 100
    torch.manual_seed(0)
    shift = (brightness(x) - x).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-12)  # one per sample
    torch.manual_seed(0)
    assert torch.allclose(shift[:, 0], torch.rand(2000, dtype=x.dtype) - 0.5, atol=1e-12)
    assert -0.5 <= shift.min() < -0.45 and 0.45 < shift.max() <= 0.5


def test_saturation_scales_each_pixels_colour_spread_by_a_draw_in_0_2() -> None:
    x = torch.randn(2000, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    out = saturation(x)
    mean = x.mean(1, keepdim=True)
    assert torch.allclose(out.mean(1, keepdim=True), mean, atol=1e-12)  # the grey level stays
    scale = ((out - mean) / (x - mean)).flatten(1)
    torch.manual_seed(0)
    assert torch.allclose(scale, (torch.rand(2000, 1, dtype=x.dtype) * 2).expand_as(scale))
    assert scale.min() < 0.05 and scale.max() > 1.95
    gray = x[:, :1]
    assert torch.equal(saturation(gray), gray)  # one channel: no colour to scale


def test_contrast_scales_the_spread_about_the_image_mean_by_a_draw_in_half_to_1_5() -> None:
    x = torch.randn(2000, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    out = contrast(x)
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    assert torch.allclose(out.mean(dim=[1, 2, 3]), mean.flatten(), atol=1e-12)
    scale = ((out - mean) / (x - mean)).flatten(1)
    torch.manual_seed(0)
    assert torch.allclose(scale, (torch.rand(2000, 1, dtype=x.dtype) + 0.5).expand_as(scale))
    assert scale.min() < 0.55 and scale.max() > 1.45


def test_the_color_policy_is_brightness_then_saturation_then_contrast() -> None:
    x = torch.rand(16, 3, 8, 8)
    torch.manual_seed(9)
    by_hand = contrast(saturation(brightness(x)))
    torch.manual_seed(9)
    assert torch.equal(DiffAugment(["color"])(x), by_hand)


class TinyCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout"])
def test_every_policy_passes_the_critics_gradient_to_the_generator(policy: str) -> None:
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(8, 3 * 8 * 8), nn.Tanh(), nn.Unflatten(1, (3, 8, 8)))
    critic = attach_augmentation(TinyCritic(), DiffAugment([policy]))
    critic(generator(torch.randn(4, 8))).mean().backward()
    gradient = generator[0].weight.grad
    assert gradient is not None and gradient.abs().sum() > 0


def test_eval_mode_is_the_identity_and_draws_nothing() -> None:
    x = torch.rand(8, 3, 8, 8)
    augment = DiffAugment().eval()
    state = torch.get_rng_state()
    assert augment(x) is x
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(augment.train()(x), x)


def test_real_and_fake_batches_get_the_same_transform_for_the_same_draws() -> None:
    # Translation and cutout are linear in the images: one transform T for one RNG state gives
    # T(real) + T(fake) = T(real + fake), whichever batch it is applied to.
    real, fake = torch.rand(16, 3, 8, 8), -torch.rand(16, 3, 8, 8)
    augment = DiffAugment(["translation", "cutout"])
    outputs = []
    for batch in (real, fake, real + fake):
        torch.manual_seed(11)
        outputs.append(augment(batch))
    assert torch.allclose(outputs[0] + outputs[1], outputs[2], atol=1e-6)
    torch.manual_seed(12)
    assert not torch.allclose(augment(real + fake), outputs[2])


def test_the_hook_and_critic_outputs_judge_the_same_augmented_images() -> None:
    torch.manual_seed(0)
    critic = DCGANDiscriminator([1, 16, 16], base_width=8, norm="none")
    keys = set(critic.state_dict())
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    attach_augmentation(critic, DiffAugment())
    assert set(critic.state_dict()) == keys  # checkpoints keep their keys
    torch.manual_seed(4)
    by_hand = critic.outputs(DiffAugment()(x)).scores
    torch.manual_seed(4)
    through_hook = critic(x)
    torch.manual_seed(4)
    through_helper = critic_outputs(critic, x, None).scores
    assert torch.equal(through_hook, by_hand) and torch.equal(through_helper, by_hand)
    assert not torch.allclose(by_hand, critic.outputs(x).scores)
    critic.eval()
    assert torch.equal(critic(x), critic.outputs(x).scores)


def test_refusals_are_one_line() -> None:
    known = r"blur; the known policies are color, translation, cutout"
    with pytest.raises(ValueError, match=known):
        DiffAugment(["color", "blur"])
    with pytest.raises(ValueError, match=r"not image data; use aug=none") as error:
        DiffAugment()(torch.randn(64, 2))
    assert "\n" not in str(error.value)
    assert DiffAugment("color,cutout").policy == ("color", "cutout")
    with pytest.raises(ValueError, match="bare Sequential"):
        attach_augmentation(nn.Sequential(nn.Identity()), DiffAugment())


def test_the_aug_options_compose() -> None:
    assert "_target_" not in (OmegaConf.load(CONF / "aug" / "none.yaml") or {})
    diffaug = OmegaConf.load(CONF / "aug" / "diffaug.yaml")
    built = DiffAugment(**{k: v for k, v in diffaug.items() if k != "_target_"})
    assert built.policy == ("color", "translation", "cutout")
    assert (built.translation_ratio, built.cutout_ratio) == (0.125, 0.5)


# ----------------------------------------------------------------------------- data.fraction
@pytest.fixture(scope="module")
def digits() -> TensorData:
    return Digits().load()


def digits_module(fraction: float | None, seed: int = 0, **kwargs) -> GANDataModule:
    module = GANDataModule(Digits(), 32, [1, 8, 8], 10, fraction=fraction, seed=seed, **kwargs)
    module.setup()
    return module


def test_fraction_keeps_a_class_balanced_seeded_tenth(digits: TensorData) -> None:
    kept = fraction_indices(digits.labels, DIGITS, 0.1, seed=0)
    assert len(kept) == 180 and len(set(kept.tolist())) == 180  # round(179.7), no repeats
    share = torch.bincount(digits.labels[kept], minlength=10).double()
    full = torch.bincount(digits.labels).double() * 0.1
    assert ((share - full).abs() < 1).all()  # each class: floor or ceil of its tenth
    assert torch.equal(kept, fraction_indices(digits.labels, DIGITS, 0.1, seed=0))
    assert not torch.equal(kept, fraction_indices(digits.labels, DIGITS, 0.1, seed=1))
    assert len(fraction_indices(None, DIGITS, 0.1, seed=0)) == 180


def test_the_module_trains_on_the_fraction_and_scores_against_every_image() -> None:
    module = digits_module(0.1)
    kept = fraction_indices(module.data.labels, DIGITS, 0.1, seed=0)
    assert torch.equal(module.train_data.samples, module.data.samples[kept])
    assert module.steps_per_epoch() == 180 // 32
    served = torch.cat([batch["samples"] for batch in module.train_dataloader()])
    assert len(served) == 5 * 32
    pool = {bytes(image.numpy()) for image in module.train_data.samples}
    assert all(bytes(image.numpy()) in pool for image in served)
    assert len(reference_data(module, "train")) == DIGITS  # the metrics' reference: all of it


def test_null_fraction_serves_exactly_the_batches_it_served_before() -> None:
    module = digits_module(None, seed=3)
    assert module.train_data is module.data
    before = ShuffledBatches(DIGITS, 32, 3, 0, 1)  # what train_dataloader built before fraction
    old = [IndexedTensors(module.data)[indices]["samples"] for indices in before]
    new = [batch["samples"] for batch in module.train_dataloader()]
    assert len(old) == len(new) and all(torch.equal(a, b) for a, b in zip(old, new))


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, True])
def test_a_fraction_outside_0_1_is_refused(bad) -> None:
    with pytest.raises(ValueError, match=rf"data.fraction={bad} is outside \(0, 1\]"):
        GANDataModule(Digits(), 32, [1, 8, 8], fraction=bad)


def test_a_fraction_of_two_domains_or_too_few_images_is_refused() -> None:
    two = GANDataModule(DigitsUnpaired(), 32, [1, 8, 8], domains=2, fraction=0.5)
    with pytest.raises(UserError, match="holds two image domains; set data.fraction=null"):
        two.setup()
    with pytest.raises(UserError, match="keeps 18 of 1797 images, fewer than data.batch_size"):
        digits_module(0.01)
    with pytest.raises(UserError, match="does not combine with data.labeled_per_class=3"):
        digits_module(0.5, labeled_per_class=3)


class LabelledFiles(torch.utils.data.Dataset):
    """A stand-in for ImageFiles: a Dataset read per item, with a `labels` list."""

    labels = [0] * 60 + [1] * 30 + [2] * 10

    def load(self, resolution: int | None = None) -> LabelledFiles:
        return self

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, object]:
        return {"samples": torch.zeros(1, 8, 8, dtype=torch.uint8), "labels": self.labels[index]}


def test_a_fraction_of_a_file_set_is_a_class_balanced_subset() -> None:
    module = GANDataModule(LabelledFiles(), 4, [1, 8, 8], 3, fraction=0.5)
    module.setup()
    kept = [LabelledFiles.labels[i] for i in module.train_data.indices]
    assert [kept.count(k) for k in range(3)] == [30, 15, 5]
    assert module.steps_per_epoch() == 50 // 4 and len(module.data) == 100


def test_every_one_domain_image_set_has_a_null_fraction() -> None:
    for path in sorted((CONF / "data").glob("*.yaml")):
        node = OmegaConf.load(path)
        one_domain_images = len(node.get("shape", [])) == 3 and "domains" not in node
        assert ("fraction" in node) == one_domain_images, path.name
        if one_domain_images:
            assert node.fraction is None, path.name
