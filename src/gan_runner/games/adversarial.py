"""The adversarial game: a generator against a critic, under any objective, regularizers and
extra loss terms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gan_runner.augment import critic_outputs, observe_real_scores
from gan_runner.games.base import Game, Phase, Terms
from gan_runner.losses.base import Play, Term
from gan_runner.nets.layers import CriticOutput
from gan_runner.objectives import Objective
from gan_runner.regularizers import PenaltyInputs, Regularizer

# The features of a critic pass whose features nothing reads (one tensor, not one per pass).
NO_FEATURES = torch.empty(0)


class AdversarialGame(Game):
    """The two-player game of Goodfellow et al. 2014, whatever the objective on critic scores.

    The critic's phase sums the objective's discriminator loss, each regularizer's penalty and
    each term's critic-side loss; the generator's phase draws fresh latents and sums the
    generator loss, any generator-side penalty and each term's generator-side loss. Labels
    reach both networks when the run is conditional (`num_classes`).
    """

    phase_names = ("discriminator", "generator")
    observes_real_scores = True

    def __init__(
        self,
        players: Mapping[str, Sequence[str]],
        phases: Sequence[Mapping[str, Any]],
        objective: Objective,
        regularizers: Mapping[str, Regularizer] | None = None,
        terms: Mapping[str, Term] | None = None,
    ) -> None:
        super().__init__(players, phases)
        self.objective = objective
        self.regularizers = dict(regularizers or {})
        self.extra_terms = dict(terms or {})

    @classmethod
    def classic(
        cls,
        objective: Objective,
        regularizers: Mapping[str, Regularizer] | None = None,
        n_critic: int = 1,
    ) -> AdversarialGame:
        """conf/game/adversarial.yaml in code: n_critic critic steps, then a generator step."""
        players = {"discriminator": ["discriminator"], "generator": ["generator"]}
        phases = [
            {"name": "discriminator", "player": "discriminator", "repeats": n_critic},
            {"name": "generator", "player": "generator"},
        ]
        for phase, total in zip(phases, ("d_loss", "g_loss")):
            phase["total_as"] = total
        return cls(players, phases, objective, regularizers)

    def check(self, module: Any) -> None:
        for term in self.extra_terms.values():
            term.check(module)

    def critic(self, module: Any, samples: Tensor, labels: Tensor | None) -> Tensor:
        """The discriminator's scores, with labels only when the run is conditional."""
        return module.discriminator(samples, labels if module.num_classes else None)

    def critic_outputs(self, module: Any, samples: Tensor, labels: Tensor | None) -> CriticOutput:
        """Scores, features and heads in one pass when a term reads more than scores."""
        labels = labels if module.num_classes else None
        if not self.extra_terms:
            scores = module.discriminator(samples, labels)
            return CriticOutput(scores, NO_FEATURES)  # no term reads them: none computed
        return critic_outputs(module.discriminator, samples, labels)  # augmented when aug= is set

    def draw(self, module: Any, n: int) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """(z, labels, structured codes) for one phase; codes are {} but in InfoGAN."""
        z, labels = module.draw_latent(n)
        return z, labels, {}

    def generate(self, module: Any, z: Tensor, labels: Tensor | None) -> Tensor:
        """The generator's samples for a phase (a game may mix styles or grow resolution)."""
        return module.generator(z, labels)

    def terms(self, phase: Phase, batch: dict[str, Tensor], module: Any, gain: int) -> Terms:
        if phase.name == "discriminator":
            terms = self._discriminator_terms(batch, module)
        else:
            terms = self._generator_terms(batch, module)
        if gain != 1:
            terms.losses = {k: None if v is None else gain * v for k, v in terms.losses.items()}
        for name, term in self.extra_terms.items():  # the active terms' own diagnostics
            if terms.losses.get(name) is not None:
                terms.logs.update({f"{phase.name}/{k}": v for k, v in term.logs().items()})
        return terms

    def _discriminator_terms(
        self, batch: dict[str, Tensor], module: Any, penalties: bool = True
    ) -> Terms:
        real, real_labels = batch["samples"], batch.get("labels")
        z, fake_labels, codes = self.draw(module, real.shape[0])
        # No graph through G for the critic's step. no_grad, not only the toggle's frozen
        # weights: torch.compile guards on grad mode, while torch 2.11 reused G's graph traced
        # here (weights frozen) in the generator step, whose loss then had no grad_fn.
        with torch.no_grad():
            fake = self.generate(module, z, fake_labels)

        def critic(samples: Tensor, labels: Tensor | None) -> Tensor:
            return self.critic(module, samples, labels)

        real_out = self.critic_outputs(module, real, real_labels)
        fake_out = self.critic_outputs(module, fake, fake_labels)
        real_scores, fake_scores = real_out.scores.float(), fake_out.scores.float()
        adapted = observe_real_scores(module, real_scores)  # ADA's p, from this step's reals
        losses: dict[str, Tensor | None] = {"adversarial": None}
        logs: dict[str, Tensor] = {}
        if not any(t.replaces_discriminator_objective for t in self.extra_terms.values()):
            losses["adversarial"] = self.objective.discriminator_loss(real_scores, fake_scores)
            logs = {"d_real": real_scores.detach().mean(), "d_fake": fake_scores.detach().mean()}
            logs.update(adapted)
            logs.update(
                self.objective.critic_logs(real_scores, fake_scores, losses["adversarial"])
            )
        if penalties and self.regularizers:
            inputs = PenaltyInputs(
                critic, real, fake, real_labels, fake_labels, module.counters.d_steps, module.noise
            )
            for name, regularizer in self.regularizers.items():
                losses[name] = regularizer.discriminator_penalty(inputs)
        if self.extra_terms:
            play = Play(
                module, real, real_labels, fake, fake_labels, z, fake_out, real_out, codes, batch
            )
            for name, term in self.extra_terms.items():
                losses[name] = term.discriminator_term(play)
        return Terms(losses, logs)

    def _generator_terms(self, batch: dict[str, Tensor], module: Any) -> Terms:
        real, real_labels = batch["samples"], batch.get("labels")
        z, fake_labels, codes = self.draw(module, real.shape[0])
        fake = self.generate(module, z, fake_labels)
        fake_out = self.critic_outputs(module, fake, fake_labels)
        real_out = None
        if getattr(self.objective, "generator_needs_real", False):
            real_out = self.critic_outputs(module, real, real_labels)
        if real_out is None and any(
            t.needs_real_in_generator_phase for t in self.extra_terms.values()
        ):
            with torch.no_grad():  # the critic is frozen here and real data has no path to G
                real_out = self.critic_outputs(module, real, real_labels)
        real_scores = real_out.scores.float() if real_out is not None else None
        losses: dict[str, Tensor | None] = {"adversarial": None}
        if not any(t.replaces_generator_objective for t in self.extra_terms.values()):
            scores = fake_out.scores.float()
            losses["adversarial"] = self.objective.generator_loss(scores, real_scores)
        for name, regularizer in self.regularizers.items():
            losses[name] = regularizer.generator_penalty(module.generator)
        if self.extra_terms:
            play = Play(
                module, real, real_labels, fake, fake_labels, z, fake_out, real_out, codes, batch
            )
            for name, term in self.extra_terms.items():
                losses[name] = term.generator_term(play)
        return Terms(losses)

    def double_backward_networks(self) -> dict[str, str]:
        per_sample = [n for n, r in self.regularizers.items() if r.per_sample_gradient]
        return {"discriminator": f"regularizer={per_sample[0]}"} if per_sample else {}

    def after_step(self, phase: Phase, module: Any) -> None:
        if phase.name == "discriminator":
            for regularizer in self.regularizers.values():
                regularizer.after_discriminator_step(module.discriminator)
        for term in self.extra_terms.values():
            term.after_step(phase.name, module)

    def state_dict(self) -> dict[str, Any]:
        return {name: term.state_dict() for name, term in self.extra_terms.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, term in self.extra_terms.items():
            if name in state:
                term.load_state_dict(state[name])
