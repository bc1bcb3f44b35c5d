"""The autoencoder critic of EBGAN (Zhao, Mathieu, LeCun 2017, arXiv:1609.03126): its output is
an energy, the reconstruction error of the input, low on data and high elsewhere."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from gan_runner.nets.layers import CriticOutput

# What a sample's energy is, from its reconstruction error r = Dec(Enc(x)) - x (flattened). The
# margin of the energy game is in these units: the paper's D is the norm, its m = 10 goes with
# 784 MNIST pixels, and a squared or averaged error needs a margin of another size.
ENERGIES = ("sum_squares", "norm", "mean_squares", "rms")


def reconstruction_energy(x: Tensor, reconstruction: Tensor, kind: str) -> Tensor:
    """Per-sample energy (N,) of a reconstruction, of the kind named in ENERGIES."""
    squares = (reconstruction - x).flatten(1).pow(2)
    if kind == "sum_squares":
        return squares.sum(1)  # ||Dec(Enc(x)) - x||^2
    if kind == "mean_squares":
        return squares.mean(1)  # ||Dec(Enc(x)) - x||^2 / dim
    if kind == "rms":
        return squares.mean(1).clamp_min(1e-12).sqrt()  # ||Dec(Enc(x)) - x|| / sqrt(dim)
    if kind == "norm":
        # ||Dec(Enc(x)) - x||, the paper's D; the small floor keeps the gradient of the square
        # root finite at a perfect reconstruction.
        return squares.sum(1).clamp_min(1e-12).sqrt()
    raise ValueError(f"energy must be one of {', '.join(ENERGIES)}, got '{kind}'")


CODE_ACTIVATIONS = ("relu", "none")


def _stack(widths: Sequence[int], activate_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if activate_last or i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class AutoencoderCritic(nn.Module):
    """EBGAN's discriminator (Zhao et al. 2017): a fully connected autoencoder whose score is the
    energy of its reconstruction error, over flattened inputs (2D points or images).

    Encoder: input -> `hidden` -> `code`, ReLU after every hidden layer and after the code
    unless `code_activation: none`. Decoder: `code` -> `decoder_hidden` (None: `hidden`
    mirrored) -> input, linear at the end. The paper's MNIST grid counts nLayerD = encoder +
    decoder layers with a one-layer decoder, e.g. nLayerD 2 and sizeD 1024: hidden [], code
    1024, decoder_hidden [] (a ReLU code, or the whole autoencoder would be linear).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden: Sequence[int] = (),
        code: int = 256,
        decoder_hidden: Sequence[int] | None = None,
        energy: str = "norm",
        code_activation: str = "relu",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if num_classes:
            raise ValueError(
                f"the autoencoder critic (EBGAN) is unconditional, got num_classes={num_classes}; "
                "set num_classes=0"
            )
        if energy not in ENERGIES:
            raise ValueError(
                f"energy must be one of {', '.join(ENERGIES)}, got '{energy}'; set "
                "arch.discriminator.energy"
            )
        if code_activation not in CODE_ACTIVATIONS:
            raise ValueError(
                f"code_activation must be one of {', '.join(CODE_ACTIVATIONS)}, got "
                f"'{code_activation}'; set arch.discriminator.code_activation"
            )
        if code < 1:
            raise ValueError(f"code must be >= 1, got {code}")
        self.data_shape = tuple(int(size) for size in data_shape)
        self.energy = energy
        dim = math.prod(self.data_shape)
        decoder_hidden = list(reversed(hidden)) if decoder_hidden is None else decoder_hidden
        self.encoder = _stack([dim, *hidden, code], activate_last=code_activation == "relu")
        self.decoder = _stack([code, *decoder_hidden, dim], activate_last=False)

    def encode(self, x: Tensor) -> Tensor:
        """The codes (N, code) of a batch, what EBGAN's pulling-away term compares."""
        return self.encoder(x.flatten(1))

    def reconstruct(self, x: Tensor) -> Tensor:
        """Dec(Enc(x)) in x's shape."""
        return self.decoder(self.encode(x)).view_as(x)

    def outputs(self, x: Tensor, labels: Tensor | None = None) -> CriticOutput:
        codes = self.encode(x)
        reconstruction = self.decoder(codes).view_as(x)
        energies = reconstruction_energy(x, reconstruction, self.energy)
        return CriticOutput(energies, codes)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Per-sample energies (N,)."""
        return self.outputs(x, labels).scores
