"""Model-based learning: episodes imagined on a surrogate of the proxy.

A real evaluation runs the compressed network on held-out data, and a search can afford only a
few hundred. The surrogate (``jpq_agents.surrogate``), built on the environment's sensitivity
table and refitted to every complete real evaluation so far, predicts the proxy's score and its
spread without running the network. So the controllers learn mostly from imagined episodes, in
rounds: the unwrapped environment is played outside the search with its evaluator swapped for
one that answers with the surrogate's optimistic score (mean plus ``optimism`` deviations), and
only the imagined episodes with the best upper confidence bound that were not evaluated yet are
spent on the real proxy. Refinement uses the same imagined scores to screen its neighbours.

Imagined episodes count in the normalisation of returns but never enter the elite buffer, and
nothing played here is recorded by the search or counted against its budget. The environment's
evaluator and reward design are restored afterwards (the design from a copy taken before: a
stateful design would otherwise learn from imagined outcomes).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from jpq_env.envs import JPQEnv
from jpq_env.proxy.sensitivity import SensitivityTable, measure_sensitivity

from ..play import LayerChoice
from ..search import Search
from ..surrogate import Surrogate, SurrogateEvaluator
from .config import TwoLevelConfig
from .episodes import Episode, EpisodePlayer
from .evaluations import Evaluations, PolicyKey
from .learner import Learner

__all__ = ["Imagination", "fitted_records"]


def fitted_records(records: Sequence[dict[str, Any]], window: int) -> list[dict[str, Any]]:
    """The complete records a surrogate fit uses: all of them, or ``window`` of them.

    Past ``window``: the ``window // 2`` best by accuracy (the earlier of equal scores first),
    then the most recent others until ``window``, in the order they were recorded. The best
    anchor the model where the search looks; the recent ones are the neighbourhood it is in.
    """
    complete = [r for r in records if r.get("proxy_complete", True)]
    if len(complete) <= window:
        return complete
    order = sorted(range(len(complete)), key=lambda i: (-float(complete[i]["accuracy"]), i))
    keep = set(order[: window // 2])
    for i in range(len(complete) - 1, -1, -1):
        if len(keep) == window:
            break
        keep.add(i)
    return [complete[i] for i in sorted(keep)]


class Imagination:
    """The surrogate of the proxy, and episodes played and scored by it.

    Args:
        search: The search (its records fit the surrogate; its evaluator gives the FP32 score).
        base: The JPQ environment (unwrapped), played outside the search.
        config: ``optimism`` and ``batch_episodes``.
        seed: Seed of the surrogate.
        player: Plays the episodes.
        learner: Learns from the imagined episodes.
        evaluations: The real evaluations (which policies need no imagining).
    """

    def __init__(
        self,
        search: Search,
        base: JPQEnv,
        config: TwoLevelConfig,
        seed: int,
        player: EpisodePlayer,
        learner: Learner,
        evaluations: Evaluations,
    ) -> None:
        self.search = search
        self.base = base
        self.config = config
        self.player = player
        self.learner = learner
        self.evaluations = evaluations
        self.surrogate = Surrogate(
            self._table(),
            float(search.evaluator.fp32_accuracy),
            floor=1.0 / max(base.task.num_classes, 1),
            seed=seed,
        )

    def _table(self) -> SensitivityTable:
        """The environment's sensitivity table (measured here if the env was built without)."""
        if self.base.sensitivity is not None:
            return self.base.sensitivity
        base = self.base
        space = base.space
        return measure_sensitivity(
            base.task,
            base.graph,
            base.bits,
            space.act_bits if base.decides_act else (),
            fixed_act=space.fixed_act,
            unprunable=[i for i in range(base.num_layers) if space.max_pruned(i) == 0],
            device=self.search.evaluator.device,
        )

    def fit(self) -> None:
        """Refit the surrogate to the complete real evaluations so far (``fitted_records``)."""
        records = fitted_records(self.search.records, self.config.fit_window)
        if records:
            self.surrogate.fit(
                [self.evaluations.policy_of(r) for r in records], [r["accuracy"] for r in records]
            )

    def refit(self) -> None:
        """Refit the surrogate if it was fitted before or there is anything to fit it to."""
        if self.surrogate.fitted or self.search.records:
            self.fit()

    @contextmanager
    def _scored(self) -> Iterator[SurrogateEvaluator]:
        """The environment, outside the search, scored by the surrogate (nothing is counted)."""
        base = self.base
        evaluator, design = base.evaluator, copy.deepcopy(base.reward_design)
        imagined = SurrogateEvaluator(
            self.surrogate, float(self.search.evaluator.fp32_accuracy), self.config.optimism
        )
        base.evaluator = imagined
        try:
            yield imagined
        finally:
            base.evaluator, base.reward_design = evaluator, design

    def imagine(self, n: int) -> list[Episode]:
        """``n`` episodes sampled from the controllers, scored by the surrogate, learned from."""
        out: list[Episode] = []
        batch: list[Episode] = []
        with self._scored() as imagined:
            for _ in range(n):
                ep = self.player.episode(self.base)
                ep.mean, ep.std = imagined.last_mean, imagined.last_std
                out.append(ep)
                batch.append(ep)
                self.learner.returns.append(ep.reward)
                if len(batch) == self.config.batch_episodes:
                    self.learner.update(batch)
                    batch = []
        return out

    def screened(self, plans: list[list[LayerChoice]], k: int) -> list[list[LayerChoice]]:
        """The ``k`` plans not evaluated yet with the best optimistic predicted reward."""
        scored: list[tuple[float, list[LayerChoice], PolicyKey]] = []
        with self._scored():
            for plan in plans:
                ep = self.player.episode(self.base, fixed=plan)
                assert ep.policy is not None
                scored.append((ep.reward, ep.choices, self.evaluations.key(ep.policy)))
        return self.evaluations.top(scored, k)
