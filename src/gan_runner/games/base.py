"""Players, phases and games: the shape every GAN family's training step is made of.

A player is one optimizer over named networks; players partition the trainable parameters. A
phase is one optimizer step of one player from the sum of named loss terms, with its own
cadence (`repeats`: n_critic; `every`: lazy, terms weighted by the interval). A game says what
each phase's terms are. stylegan2-ada's phase loop (Karras et al. 2020), lifted from two
hard-wired players to any number and from a fixed phase order to the config's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gan_runner.errors import UserError


@dataclass(frozen=True)
class CriticSchedule:
    """How many batches a phase steps on per cycle (n_critic), with an optional early boost.

    `boost_*` reproduces Arjovsky et al. 2017's schedule: `boost_n_critic` critic steps for the
    first `boost_first_g_steps` cycles and at every `boost_every_g_steps`-th one.
    """

    n_critic: int = 1
    boost_n_critic: int = 0
    boost_first_g_steps: int = 0
    boost_every_g_steps: int = 0

    def __post_init__(self) -> None:
        if self.n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {self.n_critic}")

    def critic_steps(self, g_steps: int) -> int:
        boosted = g_steps < self.boost_first_g_steps or (
            self.boost_every_g_steps > 0 and g_steps % self.boost_every_g_steps == 0
        )
        return self.boost_n_critic if self.boost_n_critic and boosted else self.n_critic


@dataclass(frozen=True)
class Phase:
    """One optimizer step of one player from the sum of a game's named terms.

    A cycle lasts as many batches as its most repeated phase; a phase with `repeats` r steps on
    the cycle's last r batches (the critic's n_critic steps, then the generator's one). `every`
    k runs it on every k-th batch it is due and weights its terms by k (lazy regularization).
    """

    name: str
    player: str
    repeats: int = 1
    every: int = 1
    boost: Mapping[str, int] | None = None  # {n_critic, first_g_steps, every_g_steps}
    total_as: str | None = None  # also logged as train/<total_as> (train/d_loss, train/g_loss)
    schedule: CriticSchedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"phase {self.name}: every must be >= 1, got {self.every}")
        boost = dict(self.boost or {})
        schedule = CriticSchedule(
            self.repeats,
            boost.get("n_critic", 0),
            boost.get("first_g_steps", 0),
            boost.get("every_g_steps", 0),
        )
        object.__setattr__(self, "schedule", schedule)


def prior_latent(
    module: Any,
    n: int,
    generator: torch.Generator | None,
    truncation: float | None = None,
    dim: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """n codes of `dim` (default z_dim) from the module's p(z), truncated by ψ when given, and,
    when conditional, uniform labels (in that order)."""
    dim = module.z_dim if dim is None else dim
    if truncation is None:
        z = module.latent.sample(n, dim, generator)
    else:
        z = module.latent.truncated(n, dim, truncation, generator)
    if not module.num_classes:
        return z, None
    labels = torch.randint(module.num_classes, (n,), generator=generator, device=z.device)
    return z, labels


@dataclass
class Terms:
    """A phase's named losses (None: inactive this step) and diagnostics to log beside them."""

    losses: dict[str, Tensor | None]
    logs: dict[str, Tensor] = field(default_factory=dict)


class Game:
    """A GAN family's training step: its players, its phases and what each phase computes.

    Subclasses name their phases in `phase_names` and implement `terms`; the module sums the
    active terms of each phase into one optimizer step of its player and never asks which.
    """

    phase_names: tuple[str, ...] = ()
    # Image-to-image games: the data's domain count they need (train.py refuses a mismatch),
    # whether they need aligned (a, b) pairs, and whether the generator maps images, not z.
    domains: int = 1
    needs_pairs: bool = False
    translates: bool = False
    # The critics that judge images, which aug= augments (DiffAugment); () refuses aug, naming
    # what the game's critic reads instead.
    augmented_critics: tuple[str, ...] = ("discriminator",)
    critic_input: str = "images"
    # Whether the discriminator scores samples x, so the 1D plot can draw it over x.
    critic_reads_samples: bool = True
    # Whether the critic's phase shows its real-image scores to an adaptive augmentation
    # (aug=ada adjusts p from them); games whose scores are not logits of "real" refuse it.
    observes_real_scores: bool = False
    # Whether a phase may run on slices of its batch (accumulate=k): not when one rollout of
    # the whole batch is shared by the phases.
    accumulates: bool = True

    def __init__(self, players: Mapping[str, Sequence[str]], phases: Sequence[Mapping[str, Any]]):
        self.players = {name: tuple(networks) for name, networks in players.items()}
        self.phases = tuple(Phase(**dict(phase)) for phase in phases)
        if not self.phases:
            raise ValueError("a game needs at least one phase")
        for phase in self.phases:
            if phase.player not in self.players:
                raise ValueError(
                    f"phase {phase.name} steps player {phase.player}, which is not one of the "
                    f"game's players ({', '.join(self.players)})"
                )
            if self.phase_names and phase.name not in self.phase_names:
                raise ValueError(
                    f"{type(self).__name__} has no phase {phase.name}; its phases are "
                    f"{', '.join(self.phase_names)}"
                )
        names = [phase.name for phase in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")

    def draw_latent(
        self,
        module: Any,
        n: int,
        generator: torch.Generator | None,
        truncation: float | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """n latent codes from the run's prior (truncated by ψ when given), with uniform class
        labels when conditional.

        A game whose generator reads structured codes (InfoGAN) writes them into z here, so
        sample grids and evaluations draw what training draws."""
        return prior_latent(module, n, generator, truncation)

    def traversal_latents(
        self,
        module: Any,
        noise: torch.Generator,
        steps: int,
        sweep: int,
        span: tuple[float, float],
    ) -> tuple[Tensor, Tensor | None]:
        """A grid of latents sweeping the game's structured codes (gan-sample mode=traversal)."""
        raise UserError(
            "mode=traversal sweeps the codes of a game that writes them into z; this checkpoint's "
            f"game ({type(self).__name__}) has none: train with game=infogan, or use mode=grid"
        )

    def sample_views(self, module: Any, samples: Tensor) -> dict[str, Tensor]:
        """Extra (3, H, W) uint8 images this game draws from the sample grid's samples (EBGAN:
        reconstructions and energies); SampleGrid saves each as g<steps>_<name>.png."""
        return {}

    def check(self, module: Any) -> None:
        """Refuse, before training, networks this game cannot play with (a missing head)."""

    def rollout(self, batch: dict[str, Tensor], module: Any) -> None:
        """Work shared by this batch's phases (latents, codes, fakes); none by default."""

    def terms(self, phase: Phase, batch: dict[str, Tensor], module: Any, gain: int) -> Terms:
        """The named loss terms of `phase` on this batch; `gain` weights lazy terms."""
        raise NotImplementedError

    def after_step(self, phase: Phase, module: Any) -> None:
        """A constraint applied after `phase`'s optimizer step (weight clipping)."""

    def lazy_intervals(self) -> dict[str, int]:
        """{player: k} for players with a lazy phase every k batches that has terms to run:
        their optimizers get stylegan2-ada's lr and β adjustment. A phase with no term this run
        (a zero weight) adjusts nothing, unlike the reference's cfg=cifar (research §0.6)."""
        intervals: dict[str, int] = {}
        for phase in self.phases:
            if phase.every > 1 and self.phase_has_terms(phase):
                intervals[phase.player] = max(intervals.get(phase.player, 1), phase.every)
        return intervals

    def phase_has_terms(self, phase: Phase) -> bool:
        """Whether `phase` has any term configured this run (False: it never steps)."""
        return True

    def double_backward_networks(self) -> dict[str, str]:
        """{network: which term} for networks a term differentiates twice (input gradients)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Training state that lives outside the networks (an image pool, pl_mean)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def player_parameters(
    root: nn.Module, players: Mapping[str, Sequence[str]], networks: Sequence[str]
) -> dict[str, list[nn.Parameter]]:
    """Each player's parameters, in its networks' order: a player names networks or dotted
    submodules (`discriminator.heads`), and the most specific name claims a parameter, so a
    head can train with another player than its trunk. Refuses anything but a partition."""
    claims: dict[int, tuple[int, str, str]] = {}  # id -> (depth, player, path)
    for player, paths in players.items():
        for path in paths:
            if path.split(".")[0] not in networks:
                raise ValueError(
                    f"player {player} names {path}, but the architecture builds no such "
                    f"network (it builds {', '.join(networks)}); use an arch that builds "
                    f"{path} (a recipe's own: drop the arch override) or add arch.{path}"
                )
            try:
                module = root.get_submodule(path)
            except AttributeError:
                raise ValueError(f"player {player} names {path}, which does not exist") from None
            depth = path.count(".")
            for parameter in module.parameters():
                held = claims.get(id(parameter))
                if held is not None and held[0] == depth and held[1] != player:
                    raise ValueError(
                        f"{path} is claimed by players {held[1]} and {player}; each trainable "
                        "parameter must have exactly one player"
                    )
                if held is None or held[0] < depth:
                    claims[id(parameter)] = (depth, player, path)
    for name in networks:
        for parameter in root.get_submodule(name).parameters():
            if id(parameter) not in claims:
                raise ValueError(
                    f"network {name} has parameters no player trains; add it to a player in "
                    "game.players"
                )
    owned: dict[str, list[nn.Parameter]] = {player: [] for player in players}
    for player, paths in players.items():
        seen: set[int] = set()
        for path in paths:
            for parameter in root.get_submodule(path).parameters():
                if claims[id(parameter)][1] == player and id(parameter) not in seen:
                    seen.add(id(parameter))
                    owned[player].append(parameter)
    return owned
