"""The history of generated images CycleGAN's critics train on (Shrivastava et al. 2017's
buffer, as Zhu et al. 2017 use it: junyanz/pytorch-CycleGAN-and-pix2pix util/image_pool.py)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class ImagePool:
    """A buffer of up to `size` past fakes (Shrivastava et al. 2017; CycleGAN's pool of 50).

    Per image: while fewer than `size` are stored, store it and return it; then with
    probability 1/2 return a random stored image and store the new one in its slot, else return
    the new one. Its randomness is its own seeded generator, saved with the images, so a resumed
    run draws what the straight one would. size 0 returns every batch unchanged.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size, self.seed = size, seed
        self.count = 0
        self.images: Tensor | None = None  # (size, C, H, W), allocated on the first query
        self.noise = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def query(self, images: Tensor) -> Tensor:
        """The batch the critic sees in place of `images` (detached)."""
        images = images.detach()
        if self.size == 0:
            return images
        if self.images is None:
            self.images = images.new_empty((self.size, *images.shape[1:]))
        self.images = self.images.to(device=images.device, dtype=images.dtype)
        out = images.clone()
        for i in range(images.shape[0]):
            if self.count < self.size:
                self.images[self.count] = images[i]
                self.count += 1
            elif float(torch.rand((), generator=self.noise)) < 0.5:
                slot = int(torch.randint(self.size, (), generator=self.noise))
                out[i] = self.images[slot]
                self.images[slot] = images[i]
        return out

    def state_dict(self) -> dict[str, Any]:
        # Plain tensors and ints, so the checkpoint loads with torch.load(weights_only=True).
        stored = None if self.images is None else self.images[: self.count].cpu().clone()
        return {"images": stored, "count": self.count, "noise": self.noise.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.noise.set_state(state["noise"])
        stored = state["images"]
        if stored is None:
            self.images = None
            return
        self.images = stored.new_empty((self.size, *stored.shape[1:]))
        self.images[: self.count] = stored
