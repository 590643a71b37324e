"""Refinement: local search around the best decisions found, in rounds of neighbours.

With a budget of a few hundred evaluations the controllers' main job is to find good regions;
local search is what makes the most of one (at such budgets it beats plain RL in the
architecture-search literature: NAS-Bench-101 at 150 evaluations ranks local search, then
regularized evolution, then random search, then REINFORCE). So the last ``refine_fraction`` of
the evaluations goes to it.

- **A neighbour** changes one decision of one layer: its sparsity by 5% of its kernels, its
  activation width or one group's weight width by one level. If the cost model then puts it over
  budget, further steps towards fewer bits in *other* layers follow until it fits, so that the
  environment's forward budget wall does not cut the last layers instead.
- **Rounds**: each round tries ``refine_batch`` neighbours of the best and keeps the round's best
  if it beats the incumbent, or ties with it (``accept_ties``: the proxy is coarse and its
  plateaus are wide). A round's neighbours do not depend on each other's scores, so a pool
  evaluates them in parallel and the records do not depend on the pool.
- **Screening**: with the surrogate, ``screen`` neighbours are drawn per neighbour evaluated and
  the ones with the best imagined score are evaluated.
- **Racing**: when the evaluator supports it, each evaluation stops as soon as it cannot beat the
  incumbent (``JPQEnv.race``, paired with the incumbent's per-image results); such incomplete
  records count as tried but never as the new best.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jpq_env.envs import JPQEnv

from ..play import LayerChoice, choices_fit
from ..search import Search
from .config import TwoLevelConfig
from .episodes import Episode, EpisodePlayer
from .evaluations import Evaluations
from .imagined import Imagination

__all__ = ["Neighbours", "Refinement"]


class Neighbours:
    """Draws neighbours of a policy's choices that fit the budget.

    Args:
        base: The JPQ environment (unwrapped): its layers, decision space and cost model.
        act_levels: Number of activation widths the environment decides among (0: none).
        rng: The random generator every move draws from.
    """

    def __init__(self, base: JPQEnv, act_levels: int, rng: np.random.Generator) -> None:
        self.base = base
        self.act_levels = act_levels
        self.rng = rng

    def move(self, choices: list[LayerChoice], direction: int = 0, avoid: int = -1) -> int:
        """Change one decision of a random layer in place; return the layer.

        The change is one step of its sparsity (5% of its kernels), its activation level or one
        group's width level; ``direction`` +1 for more bits, -1 for fewer, 0 either way.
        """
        layer = int(self.rng.integers(self.base.num_layers))
        if layer == avoid:
            layer = (layer + 1) % self.base.num_layers
        c = choices[layer]
        up = direction if direction else int(self.rng.choice([-1, 1]))
        top = self.base.space.max_pruned(layer)
        free_act = c.act_level is not None and layer not in self.base.space.fixed_act
        if free_act and self.rng.random() < 1 / 3:
            assert c.act_level is not None
            act = int(np.clip(c.act_level + up, 0, self.act_levels - 1))
            choices[layer] = LayerChoice(c.n_pruned, c.levels, act)
        elif top > 0 and self.rng.random() < 0.5:
            k = self.base.graph.layers[layer].out_channels
            n = int(np.clip(c.n_pruned - up * max(1, round(0.05 * k)), 0, top))
            choices[layer] = LayerChoice(n, c.levels, c.act_level)
        elif c.levels:
            levels = list(c.levels)
            g = int(self.rng.integers(len(levels)))
            levels[g] = int(np.clip(levels[g] + up, 0, len(self.base.bits) - 1))
            choices[layer] = LayerChoice(c.n_pruned, tuple(levels), c.act_level)
        return layer

    def mutate(self, choices: list[LayerChoice]) -> list[LayerChoice]:
        """A neighbour of ``choices`` within budget.

        One random change, then, if the cost model says it no longer fits, changes towards fewer
        bits in other layers until it does (else the forward wall would cut the last layers).
        """
        out = list(choices)
        changed = self.move(out)
        for _ in range(4 * self.base.num_layers):
            if choices_fit(self.base, out):
                break
            self.move(out, direction=-1, avoid=changed)
        return out


class Refinement:
    """Rounds of neighbours of the best episode until the search's budget is spent.

    Args:
        search: The search (its budget, phase label and evaluator).
        base: The JPQ environment (unwrapped): racing is set on it.
        config: ``refine_batch``, ``screen``, ``race``, ``accept_ties``.
        neighbours: Draws the neighbours.
        player: Plays them.
        evaluations: Evaluates them.
        imagination: Screens them (None: no surrogate, no screening).
    """

    def __init__(
        self,
        search: Search,
        base: JPQEnv,
        config: TwoLevelConfig,
        neighbours: Neighbours,
        player: EpisodePlayer,
        evaluations: Evaluations,
        imagination: Imagination | None,
    ) -> None:
        self.search = search
        self.base = base
        self.config = config
        self.neighbours = neighbours
        self.player = player
        self.evaluations = evaluations
        self.imagination = imagination

    def run(self, best: Episode | None, total: int) -> Episode | None:
        """Refine ``best`` until ``total`` evaluations are recorded; the best found."""
        evaluator = self.search.evaluator
        racing = self.config.race and evaluator.supports_racing
        try:
            while not self.search.done and best is not None:
                best = self._round(best, total, evaluator if racing else None)
        finally:
            if racing:
                evaluator.set_incumbent(None)
        return best

    def _round(self, best: Episode, total: int, racing: Any) -> Episode:
        """Evaluate one round of neighbours of ``best``; the new best (``best`` if none won).

        ``racing`` is the evaluator to race against the incumbent, or None.
        """
        cfg = self.config
        self.search.phase = f"refinement:from-{best.origin.split(':')[-1] or 'learning'}"
        wanted = min(max(cfg.refine_batch, 1), total - self.search.count)
        chosen = self._neighbours(best, wanted)
        if racing is not None:
            racing.set_incumbent(best.policy)
            self.base.race(best.reward)
        try:
            tried = self.evaluations.evaluate([self.player.candidate(c) for c in chosen])
        finally:
            self.base.race(None)
        for _, record in tried:
            self.evaluations.mark(self.evaluations.policy_of(record))
        complete = [(c, r) for c, r in tried if r.get("proxy_complete", True)]
        if not complete:
            return best
        choices, record = max(complete, key=lambda cr: float(cr[1]["reward"]))
        reward = float(record["reward"])
        if reward > best.reward or (cfg.accept_ties and reward == best.reward):
            origin = (
                best.origin if best.origin.startswith("refinement") else f"refinement:{best.origin}"
            )
            return Episode(
                choices=choices,
                reward=reward,
                policy=self.evaluations.policy_of(record),
                origin=origin,
            )
        return best

    def _neighbours(self, best: Episode, wanted: int) -> list[list[LayerChoice]]:
        """``wanted`` neighbours of ``best`` to evaluate (screened by the surrogate if enabled)."""
        mutate = self.neighbours.mutate
        if self.imagination is not None and self.config.screen > 1:
            self.imagination.refit()
            pool = [mutate(best.choices) for _ in range(wanted * self.config.screen)]
            return self.imagination.screened(pool, wanted) or pool[:wanted]
        return [mutate(best.choices) for _ in range(wanted)]
