"""The README's pictures of the inverting and translating families, from trained runs.

    python scripts/zoo_pictures.py <run folder> <kind> <out.png> [n]

kind: `translate` (rows: source a, G(a), then F(G(a)) for CycleGAN or the true b for pix2pix,
on the data set's test split) or `reconstruct` (rows: held-out x, G(E(x))). Columns are images;
tiles are upscaled 4x (nearest) so 8-16 px digits read on a web page.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gan_runner.callbacks.samples import to_uint8_grid
from gan_runner.checkpoints import rebuild
from gan_runner.data.module import to_model_range
from gan_runner.metrics.encoder import encode
from gan_runner.plots import save_png
from gan_runner.sample_inverse import apply, held_out_images, test_domain

UPSCALE = 4


def rows_of(run: Path, kind: str, n: int) -> list[torch.Tensor]:
    module, _ = rebuild(run / "checkpoints" / "last.ckpt")
    cfg = OmegaConf.create({"n": n, "batch_size": 256, "data": {}, "trusted_targets": []})
    if kind == "reconstruct":
        x = to_model_range(held_out_images(module, cfg)).float()
        return [x, module.sample(encode(module.encoder, x, 256)).cpu()]
    real, truth = test_domain(module, cfg, "a")
    a = to_model_range(real).float()
    translated = apply(module.sampling_generator, a, 256)
    back = getattr(module, "generator_ba", None)
    last = apply(back, translated, 256) if back is not None else to_model_range(truth).float()
    return [a, translated, last]


def main() -> None:
    run, kind, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 12
    rows = [
        r.repeat_interleave(UPSCALE, -1).repeat_interleave(UPSCALE, -2)
        for r in rows_of(run, kind, n)
    ]
    save_png(to_uint8_grid(torch.cat(rows), nrow=n), out)
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
