"""InfoGAN (Chen et al. 2016, arXiv:1606.03657): the adversarial game with structured codes in
the generator's latent, which a Q head on the critic learns to read back.

z = [noise | one-hot of each categorical code | continuous codes ~ U(-1, 1)]. The run's z_dim is
the generator's whole input: the noise gets what the codes leave (the paper's MNIST: 74 = 62
noise + 10 + 2). The mutual-information term (terms=[mutual_information]) trains G and Q.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_runner.errors import UserError
from gan_runner.games.adversarial import AdversarialGame
from gan_runner.games.base import prior_latent
from gan_runner.losses.base import Term
from gan_runner.losses.mutual_information import MutualInformation
from gan_runner.objectives import Objective
from gan_runner.regularizers import Regularizer

CODE_TYPES = ("categorical", "continuous")


@dataclass(frozen=True)
class CodeLayout:
    """InfoGAN's structured codes (Chen et al. 2016, §5): K-way categorical codes, one-hot in
    z, then continuous codes drawn from U(-1, 1), whose posterior Q models as a Gaussian."""

    categorical: tuple[int, ...] = ()  # K of each categorical code
    continuous: int = 0  # how many continuous codes

    @classmethod
    def parse(cls, codes: Sequence[Mapping[str, Any]]) -> CodeLayout:
        """From game.codes: a list of {type: categorical|continuous, size: ...}."""
        categorical, continuous = [], 0
        for i, code in enumerate(codes):
            code = dict(code)
            kind, size = code.pop("type", None), code.pop("size", None)
            if kind not in CODE_TYPES:
                raise ValueError(
                    f"game.codes[{i}].type is {kind!r}; use one of {', '.join(CODE_TYPES)}"
                )
            least = 2 if kind == "categorical" else 1
            if code or isinstance(size, bool) or not isinstance(size, int) or size < least:
                raise ValueError(
                    f"game.codes[{i}] is {dict(type=kind, size=size, **code)}; give "
                    f"{{type: {kind}, size: n}} with an integer n >= {least}"
                )
            if kind == "categorical":
                categorical.append(size)
            else:
                continuous += size
        if not codes:
            raise ValueError("game.codes is empty; list at least one {type: ..., size: ...}")
        return cls(tuple(categorical), continuous)

    @property
    def dims(self) -> int:
        """How many entries of z the codes take."""
        return sum(self.categorical) + self.continuous

    @property
    def entropy(self) -> float:
        """H(c) of the categorical codes in nats: the most their MI estimate can reach."""
        return sum(math.log(k) for k in self.categorical)

    def q_size(self, fix_std: bool) -> int:
        """Q's outputs: each categorical code's logits, then the means (and log-stds)."""
        return sum(self.categorical) + self.continuous * (1 if fix_std else 2)

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """(n, dims): the one-hot categorical codes, then the continuous ones."""
        parts = []
        for k in self.categorical:
            index = torch.randint(k, (n,), generator=generator, device=device)
            parts.append(F.one_hot(index, k).float())
        uniform = torch.rand(n, self.continuous, generator=generator, device=device)
        parts.append(uniform * 2 - 1)
        return torch.cat(parts, dim=1)

    def encode(self, categorical: Tensor, continuous: Tensor) -> Tensor:
        """(n, dims) from category indices (n, len(categorical)) and continuous values."""
        parts = [F.one_hot(categorical[:, i], k).float() for i, k in enumerate(self.categorical)]
        return torch.cat([*parts, continuous.float()], dim=1)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """The codes in z's last `dims` entries: category indices and continuous values."""
        codes = z[:, z.shape[1] - self.dims :]
        indices, start = [], 0
        for k in self.categorical:
            indices.append(codes[:, start : start + k].argmax(dim=1))
            start += k
        categorical = torch.stack(indices, 1) if indices else codes.new_zeros(len(z), 0).long()
        return {"categorical": categorical, "continuous": codes[:, start:]}

    def split(self, q: Tensor, fix_std: bool) -> tuple[list[Tensor], Tensor, Tensor | None]:
        """Q's output as (each categorical code's logits, means, log-stds or None)."""
        logits, start = [], 0
        for k in self.categorical:
            logits.append(q[:, start : start + k])
            start += k
        means = q[:, start : start + self.continuous]
        log_std = None if fix_std else q[:, start + self.continuous :]
        return logits, means, log_std


class InfoGANGame(AdversarialGame):
    """InfoGAN's game (Chen et al. 2016): min over G and Q, max over D of V(D, G) - λ L_I(G, Q),
    the adversarial game with codes written into z for the mutual_information term to recover.

    Who trains Q is game.players: with the critic's player (openai/InfoGAN: the critic's step's
    MI loss trains Q and the shared trunk) or `generator: [generator, discriminator.heads.codes]`
    (StudioGAN: only the generator's step trains Q, and never the trunk).
    """

    def __init__(
        self,
        players: Mapping[str, Sequence[str]],
        phases: Sequence[Mapping[str, Any]],
        objective: Objective,
        regularizers: Mapping[str, Regularizer] | None = None,
        terms: Mapping[str, Term] | None = None,
        codes: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(players, phases, objective, regularizers, terms)
        self.layout = CodeLayout.parse(codes)

    def noise_dim(self, z_dim: int) -> int:
        """The noise entries of z: what the codes leave of the generator's input."""
        noise = z_dim - self.layout.dims
        if noise < 1:
            raise ValueError(
                f"z_dim={z_dim} leaves no noise beside the codes' {self.layout.dims} entries; "
                f"set z_dim above {self.layout.dims} (the generator's whole input: the paper's "
                "MNIST has 62 noise + 10 + 2 = 74)"
            )
        return noise

    def draw_latent(
        self,
        module: Any,
        n: int,
        generator: torch.Generator | None,
        truncation: float | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """[noise | codes], the noise truncated by ψ when given (gan-sample): codes never are."""
        dim = self.noise_dim(module.z_dim)
        noise, labels = prior_latent(module, n, generator, truncation, dim)
        return torch.cat([noise, self.layout.sample(n, generator, noise.device)], dim=1), labels

    def draw(self, module: Any, n: int) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        z, labels = module.draw_latent(n)
        return z, labels, self.layout.decode(z)

    def traversal_latents(
        self,
        module: Any,
        noise: torch.Generator,
        steps: int,
        sweep: int,
        span: tuple[float, float],
    ) -> tuple[Tensor, Tensor | None]:
        return traversal_latents(module, noise, steps, sweep, span)

    def check(self, module: Any) -> None:
        self.noise_dim(module.z_dim)
        if not any(isinstance(t, MutualInformation) for t in self.extra_terms.values()):
            raise ValueError(
                "game=infogan learns its codes only through the mutual-information term; add "
                "terms=[mutual_information] (its lambdas at 0 give the paper's λ=0 control)"
            )
        super().check(module)


def traversal_latents(
    module: Any,
    noise: torch.Generator,
    steps: int = 10,
    sweep: int = 0,
    span: tuple[float, float] = (-2.0, 2.0),
) -> tuple[Tensor, Tensor | None]:
    """A (rows x steps) grid of latents, row-major: row r sets the first categorical code to r
    (one row without one); column j sweeps continuous code `sweep` across `span` (the paper's
    Fig. 2 goes past the prior's [-1, 1] to [-2, 2]), the others held at 0, one noise draw for
    the whole grid. Without continuous codes the columns are `steps` noise draws instead."""
    layout = getattr(module.game, "layout", None)
    if layout is None:
        raise UserError("mode=traversal needs an InfoGAN checkpoint (trained with game=infogan)")
    if steps < 1:
        raise UserError(f"traversal.steps={steps}; set an integer >= 1")
    if layout.continuous and not 0 <= sweep < layout.continuous:
        raise UserError(
            f"traversal.sweep={sweep}, but the model has {layout.continuous} continuous codes; "
            f"set an index from 0 to {layout.continuous - 1}"
        )
    rows = layout.categorical[0] if layout.categorical else 1
    dim = module.game.noise_dim(module.z_dim)
    z_noise = module.latent.sample(1 if layout.continuous else steps, dim, noise)
    z_noise = z_noise.expand(steps, -1) if layout.continuous else z_noise
    other = layout.decode(layout.sample(1, noise, z_noise.device))["categorical"]
    categorical = other.expand(rows * steps, -1).clone()
    if layout.categorical:
        categorical[:, 0] = torch.arange(rows, device=z_noise.device).repeat_interleave(steps)
    continuous = z_noise.new_zeros(rows * steps, layout.continuous)
    if layout.continuous:
        values = torch.linspace(span[0], span[1], steps, device=z_noise.device)
        continuous[:, sweep] = values.repeat(rows)
    codes = layout.encode(categorical, continuous)
    z = torch.cat([z_noise.repeat(rows, 1), codes], dim=1)
    if not module.num_classes:
        return z, None
    label = torch.randint(module.num_classes, (1,), generator=noise, device=z.device)
    return z, label.expand(len(z)).clone()
