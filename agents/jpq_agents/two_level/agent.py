"""The two-level controller's search: warm start, learning, then refinement.

``run_two_level`` spends a search's evaluation budget in three phases (``Search.phase`` labels
each record with the one that produced it):

1. **Warm start** (``greedy_start``): greedy's rounds (``jpq_agents.baselines.greedy_descent``):
   the prune-then-quantize policies, then one-level raises of the layer most worth it, each
   probe an episode the controllers learn from; learning and refinement continue from greedy's
   best with the evaluations it left. Or (``warm_start``): the prune-then-quantize policies, one
   per weight width (or, where the environment decides activation widths, per pair of weight and
   activation widths), each with the least uniform pruning that fits the budget by the cost
   model. That is the two-stage baseline, cheap to find without an evaluation; the elite buffer
   then imitates its best, so learning starts where prune-then-quantize ends. It is played whole
   even when refinement would take every evaluation: refinement needs a policy to start from.
2. **Learning**: with a surrogate (``surrogate``), model-based rounds (``imagined.py``): imagine
   and learn, then evaluate the most promising imagined episodes and learn from those too;
   without one, model-free batches of episodes sampled from the controllers.
3. **Refinement** (``refine.py``): the last ``refine_fraction`` of the evaluations (none when the
   budget is under 20), local search around the best decisions found.

The parts (``EpisodePlayer``, ``Learner``, ``Evaluations``, ``Imagination``, ``Refinement``) share
the controllers and the environment; the agent wires them together and keeps the best episode.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from jpq_env.envs import JPQEnv

from ..baselines import greedy_descent
from ..play import LayerChoice, jpq, least_uniform_pruning, level_pairs, uniform_choices
from ..search import Search
from .config import TwoLevelConfig
from .controller import TwoLevelController
from .episodes import Episode, EpisodePlayer
from .evaluations import Evaluations, PolicyKey
from .imagined import Imagination
from .learner import Learner
from .refine import Neighbours, Refinement

__all__ = ["run_two_level"]


class _Agent:
    """The two-level controller searching on one ``Search``.

    Args:
        search: The search: its environment, evaluation budget and log.
        seed: Seeds the controllers' initial weights and sampling (torch's global generator),
            the refinement's moves, the surrogate and every episode's reset.
        config: The hyperparameters.
    """

    def __init__(self, search: Search, seed: int, config: TwoLevelConfig) -> None:
        self.search = search
        self.base: JPQEnv = jpq(search.env)
        self.config = config
        self.seed = seed
        torch.manual_seed(seed)
        acts = self.base.space.act_bits if self.base.decides_act else ()
        self.net = TwoLevelController(
            self.base.observation_size, len(self.base.bits), config.hidden, len(acts)
        )
        self.learner = Learner(self.net, config, search.scalar)
        self.player = EpisodePlayer(self.base, self.net, acts, seed)
        self.evaluations = Evaluations(search, self.base, seed)
        self.best: Episode | None = None
        self.imagination = (
            Imagination(
                search, self.base, config, seed, self.player, self.learner, self.evaluations
            )
            if config.surrogate
            else None
        )
        neighbours = Neighbours(self.base, len(acts), np.random.default_rng(seed))
        self.refinement = Refinement(
            search, self.base, config, neighbours, self.player, self.evaluations, self.imagination
        )

    @property
    def elite(self) -> list[Episode]:
        """The elite buffer: the best real episodes so far, best first."""
        return self.learner.elite

    def _update(self, batch: list[Episode]) -> None:
        """One learning update on ``batch`` (``Learner.update``)."""
        self.learner.update(batch)

    def run(self) -> None:
        """Play warm start, learning and refinement until the evaluation budget is spent."""
        cfg = self.config
        total = self.search.settings.episodes
        refine_from = total - int(cfg.refine_fraction * total) if total >= 20 else total
        if cfg.greedy_start:
            refine_from = self._greedy_start(refine_from)
        elif cfg.warm_start:
            refine_from = self._warm_start(refine_from, total)
        self.search.phase = "learning"
        if self.imagination is not None:
            self._model_based(self.imagination, refine_from)
        self._model_free(refine_from)
        self.best = self.refinement.run(self.best, total)

    def _warm_start(self, refine_from: int, total: int) -> int:
        """Play the two-stage baseline's policies; return where learning ends (after them)."""
        self.search.phase = "warm-start"
        n = self.base.num_layers
        plans: list[list[LayerChoice] | None] = []
        for w, act in level_pairs(self.base):
            pruned = least_uniform_pruning(self.base, [w] * n, [act] * n)
            if pruned is not None:
                plans.append(uniform_choices(self.base, pruned, [w] * n, [act] * n))
        refine_from = max(refine_from, min(len(plans), total))
        self._learned(plans[: max(refine_from - self.search.count, 0)], "warm-start")
        return refine_from

    def _greedy_start(self, refine_from: int) -> int:
        """Greedy's rounds as the warm start (``greedy_descent``); where learning ends.

        Every probe is an episode the controllers learn from; learning ends at ``refine_from``,
        or after greedy's last probe if that is later.
        """
        self.search.phase = "greedy"

        def evaluate(plans: list[list[LayerChoice]]) -> list[float]:
            left = self.search.settings.episodes - self.search.count
            played = self._played(list(plans[:left]), "greedy")
            return [float(record["accuracy"]) for _, record in played]

        greedy_descent(self.base, evaluate, lambda: self.search.done)
        return max(refine_from, self.search.count)

    def _model_based(self, imagination: Imagination, until: int) -> None:
        """Rounds of: fit the surrogate, learn on imagined episodes, evaluate the best of them."""
        cfg = self.config
        while self.search.count < until:
            imagination.fit()
            imagined = imagination.imagine(cfg.imagined)
            wanted = min(cfg.real_per_round, until - self.search.count)
            scored: list[tuple[float, list[LayerChoice] | None, PolicyKey]] = [
                (ep.reward, ep.choices, Evaluations.key(ep.policy))
                for ep in imagined
                if ep.policy is not None
            ]
            plans = self.evaluations.top(scored, wanted)
            if not plans:  # every imagined episode was evaluated already: explore
                plans = [None] * wanted
            real = self._learned(plans)
            self.learner.update(real)

    def _model_free(self, until: int) -> None:
        """Batches of episodes sampled from the controllers, each learned from once complete."""
        cfg = self.config
        batch: list[Episode] = []
        while self.search.count < until:
            wanted = min(cfg.batch_episodes - len(batch), until - self.search.count)
            batch += self._learned([None] * wanted)
            if len(batch) == cfg.batch_episodes:
                self.learner.update(batch)
                batch = []

    def _learned(
        self, plans: list[list[LayerChoice] | None], origin: str = "learning"
    ) -> list[Episode]:
        """Play and evaluate episodes (None: sampled from the controllers) and remember them."""
        return [ep for ep, _ in self._played(plans, origin)]

    def _played(
        self, plans: Sequence[list[LayerChoice] | None], origin: str
    ) -> list[tuple[Episode, dict[str, Any]]]:
        """``_learned``'s episodes with their search records."""
        played = self.evaluations.evaluate(
            [functools.partial(self.player.episode, fixed=plan) for plan in plans]
        )
        for ep, record in played:
            ep.reward = float(record["reward"])
            ep.policy = self.evaluations.policy_of(record)
            ep.origin = origin
            self.evaluations.mark(ep.policy)
            self.learner.remember(ep)
            if self.best is None or ep.reward > self.best.reward:
                self.best = ep
        return played


def run_two_level(search: Search, seed: int, config: TwoLevelConfig | None = None) -> None:
    """Run the two-level controller until the search's evaluation budget is spent."""
    _Agent(search, seed, config or TwoLevelConfig()).run()
