"""Historical averaging (Salimans et al. 2016, §3.3) as a term of either player."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gan_runner.losses.base import Play, Term


class HistoricalAveraging(Term):
    """λ‖θ − (1/t) Σ_{i<t} θ_i‖² on each chosen player's parameters θ (Salimans et al. 2016,
    §3.3, arXiv:1606.03498), θ_i being its parameters before its i-th optimizer step: the pull
    toward the player's own past that damps the orbits gradient descent traces in a game.

    The paper gives no weight. The running sums (float64, so a long run's sum does not swallow
    the small θ − mean gap) and the count t of each player are term state, saved with the
    checkpoint. Its first step has no history and no term. torchgan averages the same past
    parameters but takes an optimizer step on the penalty alone; here it joins the player's
    step. Not Polyak averaging (an EMA of the weights for evaluation: callbacks.ema).
    """

    def __init__(
        self, weight: float = 1.0, players: Sequence[str] = ("discriminator", "generator")
    ) -> None:
        if weight <= 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        if isinstance(players, str) or not players:
            raise ValueError(f"players must be a non-empty list of players, got {players!r}")
        self.weight, self.players = weight, tuple(players)
        self.sums: dict[str, list[Tensor]] = {}
        self.count: dict[str, int] = {}
        self._before: dict[str, list[Tensor]] = {}  # this step's θ_t, until its after_step

    def check(self, module: Any) -> None:
        for player in self.players:
            if player not in module.players:
                raise ValueError(
                    f"terms.historical_averaging.players names {player}, which is not a player "
                    f"of the game ({', '.join(module.players)}); set players to some of them"
                )

    def discriminator_term(self, play: Play) -> Tensor | None:
        return self._penalty(_player_of(play.module, "discriminator"), play.module)

    def generator_term(self, play: Play) -> Tensor | None:
        return self._penalty(_player_of(play.module, "generator"), play.module)

    def _penalty(self, player: str | None, module: Any) -> Tensor | None:
        if player not in self.players:
            return None
        parameters: list[nn.Parameter] = module.parameters_of(player)
        self._before[player] = [p.detach().clone() for p in parameters]
        t = self.count.get(player, 0)
        if t == 0:
            return None
        sums = self._on_device(player, parameters)
        gap = sum(((p - (s / t).to(p.dtype)).square().sum() for p, s in zip(parameters, sums)))
        return self.weight * gap  # λ Σ_params ‖θ − (1/t) Σ_{i<t} θ_i‖²

    def after_step(self, phase: str, module: Any) -> None:
        player = _player_of(module, phase)
        before = self._before.pop(player, None) if player is not None else None
        if before is None:
            return
        if player not in self.sums:
            self.sums[player] = [b.double() for b in before]
        else:
            for total, value in zip(self._on_device(player, before), before):
                total.add_(value)  # Σ_{i≤t} θ_i
        self.count[player] = self.count.get(player, 0) + 1

    def _on_device(self, player: str, like: Sequence[Tensor]) -> list[Tensor]:
        """The player's sums, moved once to its parameters' device (a resume loads on CPU)."""
        sums = self.sums[player]
        if sums and sums[0].device != like[0].device:
            sums = self.sums[player] = [s.to(like[0].device) for s in sums]
        return sums

    def state_dict(self) -> dict[str, Any]:
        sums = {k: [s.clone() for s in v] for k, v in self.sums.items()}  # not the live ones
        return {"count": dict(self.count), "sums": sums}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = {k: int(v) for k, v in state.get("count", {}).items()}
        self.sums = {k: [torch.as_tensor(s) for s in v] for k, v in state.get("sums", {}).items()}
        self._before = {}


def _player_of(module: Any, phase: str) -> str | None:
    """The player the game's phase `phase` steps."""
    return next((p.player for p in module.game.phases if p.name == phase), None)
