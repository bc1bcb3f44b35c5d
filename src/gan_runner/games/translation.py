"""What image-to-image games share (CycleGAN, pix2pix): two domains, a generator fed images
rather than latents, and sample grids that translate the first batch's A images."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gan_runner.games.base import Game


class TranslationGame(Game):
    """A game whose generator maps domain A images to domain B (Isola et al. 2017; Zhu et al.
    2017). Subclasses set `input_shape` (A's image shape), `regularizers` and `extra_terms`."""

    domains = 2
    translates = True
    accumulates = False  # one rollout of the whole batch feeds both phases
    name = ""  # the game option, named in refusals
    input_shape: tuple[int, ...] = ()
    captured = False  # whether the module's fixed_latent holds real A images yet

    def draw_latent(
        self,
        module: Any,
        n: int,
        generator: torch.Generator | None,
        truncation: float | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Zeros in the shape of an A image: the sample grid's inputs until the first batch's
        A images replace them (`capture_inputs`); a translation has no prior to draw from."""
        return torch.zeros((n, *self.input_shape)), None

    def capture_inputs(self, module: Any, a: Tensor) -> Tensor:
        """The first batch's A images, cycled to the grid's size, become the fixed inputs;
        returns the batch rows taken."""
        fixed = module.fixed_latent
        rows = torch.arange(fixed.shape[0], device=a.device) % a.shape[0]
        fixed.copy_(a.detach()[rows].to(fixed.device, fixed.dtype))
        self.captured = True
        return rows

    def refuse_labels_and_extras(self, module: Any) -> None:
        """Translation games take no class labels, regularizers or extra terms."""
        if module.num_classes:
            raise ValueError(
                f"game={self.name} translates images without labels, got num_classes="
                f"{module.num_classes}; set num_classes=0"
            )
        extras = [*self.regularizers, *self.extra_terms]
        if extras:
            raise ValueError(
                f"game={self.name} takes no regularizers or terms (got {', '.join(extras)}); "
                "set regularizer=[] terms=[]"
            )
