"""Progressive growing (Karras, Aila, Laine & Lehtinen 2018, arXiv:1710.10196) as a game.

The stage (resolution) and fade-in α are a pure function of the images the run has seen, so a
resume lands mid-fade exactly; reals are box-filtered to the stage and faded like G's output; the
optimizers' moments reset whenever a fade starts or ends (the reference's reset_opt_for_new_lod).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from gan_runner.games.adversarial import AdversarialGame
from gan_runner.games.base import Phase, Terms
from gan_runner.nets.progressive import ProgressiveSchedule, fade_reals
from gan_runner.objectives import Objective
from gan_runner.regularizers import Regularizer

GROWN_NETWORKS = ("generator", "generator_ema", "discriminator")


class ProgressiveGame(AdversarialGame):
    """The adversarial game on networks that grow from `initial_resolution` to the data's."""

    def __init__(
        self,
        players: Mapping[str, Sequence[str]],
        phases: Sequence[Mapping[str, Any]],
        objective: Objective,
        final_resolution: int | None,
        regularizers: Mapping[str, Regularizer] | None = None,
        terms: Mapping[str, Any] | None = None,
        initial_resolution: int = 4,
        stable_kimg: float = 600.0,
        fade_kimg: float = 600.0,
    ) -> None:
        super().__init__(players, phases, objective, regularizers, terms)
        if final_resolution is None:
            raise ValueError(
                "game=progressive grows images, so it needs image data (data.shape [C, H, W]); "
                "use data=digits or another image data set"
            )
        self.schedule = ProgressiveSchedule(
            final_resolution, initial_resolution, stable_kimg, fade_kimg
        )
        self.stage = self.schedule.at(0)

    def check(self, module: Any) -> None:
        super().check(module)
        for name in ("generator", "discriminator"):
            if not hasattr(getattr(module, name), "set_stage"):
                raise ValueError(
                    f"game=progressive grows its networks, but the {name} "
                    f"({type(getattr(module, name)).__name__}) cannot grow; use arch=progressive"
                )

    def rollout(self, batch: dict[str, Tensor], module: Any) -> None:
        seen = module.counters.images_seen
        stage = self.stage = self.schedule.at(seen)
        for name in GROWN_NETWORKS:
            network = getattr(module, name, None)
            if network is not None:
                network.set_stage(stage.resolution, stage.alpha)
        # The previous batch's count, from this one's size: a pure function, so a resume
        # decides exactly as the straight run did.
        before = seen - next(iter(batch.values())).shape[0] * module.trainer.world_size
        if seen > 0 and self.schedule.optimizer_resets(max(before, 0), seen):
            for optimizer in module._optimizers_by_player.values():
                getattr(optimizer, "optimizer", optimizer).state.clear()

    def terms(self, phase: Phase, batch: dict[str, Tensor], module: Any, gain: int) -> Terms:
        samples = fade_reals(batch["samples"], self.stage.resolution, self.stage.alpha)
        return super().terms(phase, {**batch, "samples": samples}, module, gain)
