"""Progressive growing (Karras et al. 2018): the schedule's table by hand, bitwise fade-in of G,
D and the reals at both ends of a fade, pixel norm, and PGG's parameter counts at 32×32.

Tiny players (16 channels at every resolution, 16×16, batch 8) as zoo-archs.md §4.4.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gan_runner.nets.equalized import pixel_norm
from gan_runner.nets.progressive import (
    ProgressiveDiscriminator,
    ProgressiveGenerator,
    ProgressiveSchedule,
    Stage,
    fade_reals,
)

TINY = {"channel_base": 128, "channel_max": 16}  # nf(res) = min(256 / res, 16) = 16 up to 16×16


def players(num_classes: int = 0) -> tuple[ProgressiveGenerator, ProgressiveDiscriminator]:
    torch.manual_seed(0)
    generator = ProgressiveGenerator(8, [3, 16, 16], num_classes, **TINY)
    discriminator = ProgressiveDiscriminator([3, 16, 16], num_classes, **TINY)
    return generator, discriminator


def upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def test_generator_fade_ends_are_the_old_net_upsampled_and_the_new_branch() -> None:
    generator, _ = players()
    z = torch.randn(8, 8)
    with torch.no_grad():
        generator.set_stage(8, 1.0)
        at_8 = generator(z)
        generator.set_stage(16, 0.0)
        faded_out = generator(z)
        generator.set_stage(16, 1.0)
        new_only = generator(z)
        generator.set_stage(16, 0.25)
        quarter = generator(z)
        x_16 = generator.blocks["16"](generator.blocks["8"](generator.first(z)))
    assert at_8.shape == (8, 3, 8, 8) and faded_out.shape == (8, 3, 16, 16)
    assert torch.equal(faded_out, upsample(at_8))  # alpha 0: bitwise the 8×8 net, upsampled
    assert torch.equal(new_only, generator.to_rgb["16"](x_16))  # alpha 1: the new branch alone
    assert not torch.allclose(new_only, faded_out, atol=1e-3)  # the two branches differ
    torch.testing.assert_close(quarter, 0.75 * faded_out + 0.25 * new_only)


def test_discriminator_at_alpha_0_is_the_old_net_on_pooled_images() -> None:
    _, discriminator = players()
    x = torch.randn(8, 3, 16, 16)
    pooled = F.avg_pool2d(x, 2)
    with torch.no_grad():
        discriminator.set_stage(8, 1.0)
        at_8 = discriminator(pooled)
        discriminator.set_stage(16, 0.0)
        faded_out = discriminator(x)
        discriminator.set_stage(16, 1.0)
        new_only = discriminator(x)
    assert faded_out.shape == (8,)
    assert torch.equal(faded_out, at_8)
    assert not torch.allclose(new_only, at_8, atol=1e-4)  # alpha 1 reads the 16×16 branch
    with pytest.raises(ValueError, match=r"runs at 16×16, got images of \(8, 8\)"):
        discriminator(pooled)


def test_fresh_players_are_the_full_resolution_networks_and_carry_their_stage() -> None:
    generator, discriminator = players()
    assert (int(generator.resolution), float(generator.alpha)) == (16, 1.0)
    assert generator(torch.randn(8, 8)).shape == (8, 3, 16, 16)
    discriminator.set_stage(8, 0.5)
    state = discriminator.state_dict()  # persistent buffers: a checkpoint resumes the stage
    assert int(state["resolution"]) == 8 and float(state["alpha"]) == 0.5
    _, fresh = players()
    fresh.load_state_dict(state)
    assert fresh.stage() == (8, 0.5)
    with pytest.raises(ValueError, match="resolution 32 is not a power of two from 4 to 16"):
        generator.set_stage(32, 1.0)
    with pytest.raises(ValueError, match="alpha 0.5 must be in"):
        generator.set_stage(4, 0.5)  # nothing below the first stage to fade from


def test_conditional_players_use_the_labels() -> None:
    generator, discriminator = players(num_classes=10)
    z, x = torch.randn(8, 8), torch.randn(8, 3, 16, 16)
    a, b = torch.zeros(8, dtype=torch.long), torch.full((8,), 3)
    with torch.no_grad():
        assert not torch.allclose(generator(z, a), generator(z, b), atol=1e-4)
        out_a, out_b = discriminator.outputs(x, a), discriminator.outputs(x, b)
        embed = discriminator.projection.embedding.weight
        projection_gap = (out_a.features * (embed[0] - embed[3])).sum(dim=1)
    torch.testing.assert_close(out_a.scores - out_b.scores, projection_gap)


def test_fade_reals_matches_the_box_filter_and_both_fade_ends() -> None:
    x = torch.randn(8, 3, 32, 32)
    four_tap = 0.25 * (x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2])
    four_tap = four_tap + 0.25 * x[..., 1::2, 1::2]
    box = F.avg_pool2d(x, 2)
    torch.testing.assert_close(box, four_tap, rtol=0, atol=1e-6)  # dataset_tool.py's 2×2 box
    x_16 = fade_reals(x, 16, 1.0)
    assert torch.equal(x_16, box)  # alpha 1: the box-filtered level itself
    assert torch.equal(fade_reals(x, 16, 0.0), upsample(F.avg_pool2d(box, 2)))
    torch.testing.assert_close(
        fade_reals(x, 16, 0.5), 0.5 * (x_16 + upsample(F.avg_pool2d(box, 2)))
    )
    assert torch.equal(fade_reals(x, 32, 1.0), x)


def test_reals_and_generated_images_fade_alike() -> None:
    # An image G makes at 8×8, upsampled, is what fade_reals makes of it at 16, alpha 0.
    generator, _ = players()
    with torch.no_grad():
        generator.set_stage(8, 1.0)
        at_8 = generator(torch.randn(8, 8))
    assert torch.equal(fade_reals(upsample(at_8), 16, 0.0), upsample(at_8))


# kimg -> (resolution, alpha, lod) at 32×32 with 600/600 (zoo-archs.md §4.1), by hand.
TABLE = {
    0: (4, 1.0, 3.0),
    599: (4, 1.0, 3.0),
    600: (4, 1.0, 3.0),  # the fade to 8 starts here: 4×4 still alone
    900: (8, 0.5, 2.5),  # halfway to 8: the NEW resolution, the new block weighted 0.5
    1200: (8, 1.0, 2.0),
    3300: (32, 0.5, 0.5),
    3600: (32, 1.0, 0.0),
    9000: (32, 1.0, 0.0),
}


@pytest.mark.parametrize("kimg", TABLE)
def test_schedule_table_at_32(kimg: int) -> None:
    assert ProgressiveSchedule(32).at(kimg * 1000) == Stage(*TABLE[kimg])


def test_schedule_is_continuous_into_a_fade() -> None:
    schedule = ProgressiveSchedule(32)
    just_in = schedule.at(600_001)
    assert just_in.resolution == 8 and 0.0 < just_in.alpha < 1e-5
    just_out = schedule.at(1_199_999)
    assert just_out.resolution == 8 and 1.0 - 1e-5 < just_out.alpha < 1.0


def test_optimizer_resets_fire_at_every_fade_start_and_end_only() -> None:
    schedule, step = ProgressiveSchedule(32), 1000
    grid = range(0, 5_000_000, step)
    fired = [(a, a + step) for a in grid if schedule.optimizer_resets(a, a + step)]
    starts = [(k * 1000, k * 1000 + step) for k in (600, 1800, 3000)]
    ends = [(k * 1000 - step, k * 1000) for k in (1200, 2400, 3600)]
    assert fired == sorted(starts + ends)
    assert schedule.optimizer_resets(0, 5_000_000)
    assert not schedule.optimizer_resets(1_300_000, 1_700_000)  # within the 8×8 stable phase


def test_schedule_refuses_bad_settings_in_one_line() -> None:
    with pytest.raises(ValueError, match="data.resolution 48 is not a power of two"):
        ProgressiveSchedule(48)
    with pytest.raises(ValueError, match="initial_resolution 64 exceeds data.resolution 32"):
        ProgressiveSchedule(32, 64)
    with pytest.raises(ValueError, match="initial_resolution 2 must be a power of two >= 4"):
        ProgressiveSchedule(32, 2)
    with pytest.raises(ValueError, match="fade_kimg must be >= 0, got -1"):
        ProgressiveSchedule(32, fade_kimg=-1)
    # initial 8 starts stable at 8×8; fade_kimg 0 switches levels at once.
    assert ProgressiveSchedule(32, 8).at(0) == Stage(8, 1.0, 2.0)
    assert ProgressiveSchedule(32, fade_kimg=0).at(600_000) == Stage(8, 1.0, 2.0)


def test_pixel_norm_gives_unit_mean_square_over_channels() -> None:
    generator, _ = players()
    z = torch.randn(8, 8) * 7.0
    assert torch.allclose(pixel_norm(z).norm(dim=1), torch.full((8,), 8**0.5), atol=1e-5)
    with torch.no_grad():
        x = generator.first(z)
        features = [x, generator.blocks["8"](x)]
    for h in features:  # every block of G ends in a pixel norm
        torch.testing.assert_close(
            h.square().mean(dim=1), torch.ones_like(h[:, 0]), rtol=0, atol=1e-5
        )


def test_parameter_counts_match_pggan_at_32() -> None:
    # PGG's G_paper / D_paper at 32×32: fmap_base 8192, fmap_max 512, latent 512 (§4.3).
    with torch.device("meta"):
        generator = ProgressiveGenerator(512, [3, 32, 32])
        discriminator = ProgressiveDiscriminator([3, 32, 32])
    assert sum(p.numel() for p in generator.parameters()) == 20_719_628
    assert sum(p.numel() for p in discriminator.parameters()) == 20_726_785
