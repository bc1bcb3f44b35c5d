"""Every option of every config group composes and, on embedded data, trains a few steps.

Options are found by globbing conf/<group>/*.yaml, so a new option is tested without editing
this file. Combinations of objective × regularizer each take a training step (compare_gan style).
"""

from __future__ import annotations

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from conftest import options
from gan_runner.errors import UserError
from gan_runner.train import train

GROUPS = [
    "data", "model", "arch", "objective", "regularizer", "optimizer", "schedule", "latent",
    "callbacks", "logger", "trainer", "experiment", "debug", "metrics", "aug",
]  # fmt: skip
MULTI_SELECT = ("regularizer", "metrics")
# Keeps every run to seconds: 2 generator steps on small players.
# WGAN's 100-step critic boost is covered by tests/test_module.py; here it would dominate.
SHORT = ["train.g_steps=2", "train.log_every=1", "n_critic_boost.n_critic=0"]
IMAGE_DATA = ["data=digits", "data.resolution=8", "data.batch_size=16"]


# Architectures whose extra networks only a game of their own plays (BiGAN's encoder and joint
# critic): trained with it, and without the 2D recipe's penalty, which that game refuses.
# The translation recipes at 8 px with narrow players and no metrics (their judges train for
# seconds; tests/test_cyclegan.py and test_pix2pix.py score them).
CYCLEGAN = [
    "model=cyclegan",
    "metrics=[]",
    *[f"arch.{net}.width=8" for net in ("generator", "generator_ba")],
    *[f"arch.{net}.width=8" for net in ("discriminator", "discriminator_a")],
    *[f"arch.{net}.n_blocks=1" for net in ("generator", "generator_ba")],
]
PIX2PIX = ["model=pix2pix", "metrics=[]", "arch.generator.base_width=8"]
# Self-attention where 8-px players have maps: after G's 8x8 block and D's 4x4 one.
ATTENTION_AT_8PX = [
    "arch.generator.attention_resolutions=[8]",
    "arch.discriminator.attention_resolutions=[4]",
]
GAME_OF_ARCH = {
    "bigan_mlp": ["game=bigan", "regularizer=[]"],
    "biggan": ["model=biggan"],  # class-conditional players: the recipe brings the labels
    "aae_mlp": ["model=aae"],
    "cyclegan_resnet": CYCLEGAN,
    "pix2pix_unet": PIX2PIX,
}
# Two image domains, small: where a translation game or a translation data set is tested.
PAIRED_DATA = ["data=digits_paired", "data.resolution=8", "data.batch_size=4"]
TRANSLATION_BY_DATA = {"digits_unpaired": CYCLEGAN, "digits_paired": PIX2PIX}
TRANSLATORS = {"cyclegan": CYCLEGAN, "pix2pix": PIX2PIX}


def narrow_channels(cfg: DictConfig) -> list[str]:
    """16 channels and a 16-d W for the Karras et al. players (PGGAN, StyleGAN): their papers'
    512 take 20-30 s a test."""
    overrides = []
    for side, node in cfg.arch.items():
        if isinstance(node, DictConfig) and "channel_max" in node:
            overrides.append(f"arch.{side}.channel_max=16")
        if isinstance(node, DictConfig) and "w_dim" in node:
            overrides.append(f"arch.{side}.w_dim=16")
    return overrides


def selection(group: str, option: str) -> str:
    return f"{group}=[{option}]" if group in MULTI_SELECT else f"{group}={option}"


def trainable_here(cfg: DictConfig) -> str | None:
    """Why this composed config cannot train on this machine, or None when it can."""
    if "root" in cfg.data.get("source", {}):
        return "needs a data set on disk (tests/test_data_vision.py trains it on tiny files)"
    if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        return "needs a CUDA device"
    return None


def train_briefly(make_cfg, *overrides: str) -> dict[str, float]:
    """Train on 2D data, or on digits when the architecture needs images or the recipe labels."""
    try:
        return train(make_cfg(*overrides, *SHORT))
    except UserError as error:
        refusals = (
            "needs image data",
            "is class-conditional",
            "needs labelled data",
            "augments images",
        )
        if "translates between two image domains" in str(error):
            return train(make_cfg(*overrides, *PAIRED_DATA, *SHORT))
        if not any(why in str(error) for why in refusals):
            raise
    return train(make_cfg(*overrides, *IMAGE_DATA, *SHORT))


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS for o in options(g)], ids=lambda v: str(v)
)
def test_every_option_composes_and_trains(make_cfg, group: str, option: str) -> None:
    overrides = [selection(group, option)]
    if group == "arch":
        overrides += GAME_OF_ARCH.get(option, [])
    if group == "data" and option in TRANSLATION_BY_DATA:  # only a translation game plays them
        overrides += [*TRANSLATION_BY_DATA[option], "data.resolution=8", "data.batch_size=4"]
    if group == "model" and option in TRANSLATORS:
        overrides += TRANSLATORS[option][1:]
    if group in ("experiment", "metrics"):  # paper-scale schedules and sample counts: keep
        overrides += ["callbacks=none"]  # only the training (tests/test_metrics_*.py run them)
    cfg = make_cfg(*overrides)
    if cfg.arch.generator.get("attention_resolutions"):
        overrides += ATTENTION_AT_8PX
    overrides += narrow_channels(cfg)
    choices = HydraConfig.get().runtime.choices
    # A multi-select group (regularizer, metrics) has no single choice: its options are keys.
    assert choices.get(group) == option or option in cfg.get(group, {})
    reason = trainable_here(cfg)
    if reason:
        pytest.skip(f"{group}={option} composes; training it {reason}")
    metrics = train_briefly(make_cfg, *overrides)
    assert metrics["train/g_steps"] == 2
    assert torch.isfinite(torch.tensor([metrics["train/d_loss"], metrics["train/g_loss"]])).all()


# f-GAN's bound estimates D_f only without a Wasserstein critic's Lipschitz constraint: gan-run
# refuses these pairs in one line (tests/test_f_divergence.py).
REFUSED_PAIRS = {("f_divergence", "weight_clip"), ("f_divergence", "gradient_penalty")}


@pytest.mark.parametrize("objective", options("objective"))
@pytest.mark.parametrize("regularizer", options("regularizer"))
def test_every_objective_with_every_regularizer_takes_a_step(make_cfg, objective, regularizer):
    cfg = make_cfg(
        f"objective={objective}",
        f"regularizer=[{regularizer}]",
        "arch.generator.hidden=[16]",
        "arch.discriminator.hidden=[16]",
        "data.source.n_samples=512",
        "data.batch_size=64",
        "callbacks=none",
        "n_critic=2",
        "train.g_steps=1",
        "train.log_every=1",
    )
    if (objective, regularizer) in REFUSED_PAIRS:
        with pytest.raises(UserError, match="Lipschitz-bounded Wasserstein critic"):
            train(cfg)
        return
    metrics = train(cfg)
    assert metrics["train/d_steps"] == 2 and metrics["train/g_steps"] == 1
    if f"train/discriminator/{regularizer}" in metrics:  # penalties log their term
        assert metrics[f"train/discriminator/{regularizer}"] >= 0
