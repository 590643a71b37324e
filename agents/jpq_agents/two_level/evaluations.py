"""The two-level controller's real evaluations: how episodes are spent, in process or on a pool.

The controllers read every step's observation, so the driver always plays the episodes; only
their evaluations can be spread over an evaluator pool (``jpq search --ray/--workers``,
``jpq_agents.batch``). With a pool, a batch of episodes (the warm-start policies, one update's
sampled episodes, one refinement round) is played first on a capturing tape, then evaluated in
one batch and recorded in order. Nothing the agent draws depends on the accuracies within a
batch, so the records are the same as in one process, whatever the number of workers. The cost:
the driver plays each pooled episode twice (to capture it, then to record it), which bounds the
speed-up when evaluations are short.

The policies evaluated so far are remembered by key, so that neither the model-based phase nor
refinement spends an evaluation on a policy the proxy has already scored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np

from jpq_env import Policy
from jpq_env.envs import JPQEnv

from ..batch import capturing, parallelism, play_many
from ..search import Search

__all__ = ["Evaluations", "PolicyKey"]

_T = TypeVar("_T")
PolicyKey = tuple[bytes, ...]


class Evaluations:
    """Spends the search's evaluations on episodes and remembers which policies were scored.

    Args:
        search: The search whose evaluation budget is spent and whose log records them.
        base: The JPQ environment (unwrapped); its layer graph names the policies.
        seed: Seed of every episode's reset.
    """

    def __init__(self, search: Search, base: JPQEnv, seed: int) -> None:
        self.search = search
        self.env = search.env
        self.base = base
        self.seed = seed
        self.parallel = parallelism(search)
        self.seen: set[PolicyKey] = set()

    def evaluate(
        self, plays: list[Callable[[gym.Env[np.ndarray, np.ndarray]], _T]]
    ) -> list[tuple[_T, dict[str, Any]]]:
        """Play each episode (``play(env)`` plays one on ``env``); what it returned, its record.

        With an evaluator pool the episodes are played on a capturing tape first and then
        evaluated in one batch (``jpq_agents.batch``); otherwise one after another through the
        search. The same episodes, records and rewards either way (the environment is
        deterministic and the agent's random draws happen in the same order).
        """
        search = self.search
        if len(plays) > search.settings.episodes - search.count:
            raise RuntimeError("more episodes than the search's remaining evaluations")
        before = search.count
        if self.parallel > 1 and len(plays) > 1:
            with capturing(search) as tape:
                outs = [play_episode(tape) for play_episode in plays]
            play_many(search, tape.episodes, seed=self.seed, policies=tape.policies)
        else:
            outs = [play_episode(self.env) for play_episode in plays]
        if search.count != before + len(plays):
            raise RuntimeError(f"{len(plays)} episodes recorded {search.count - before}")
        recorded = search.records[before:]
        return list(zip(outs, recorded, strict=True))

    def policy_of(self, record: dict[str, Any]) -> Policy:
        """The policy a search record describes."""
        return Policy.from_layers(record["policy"], self.base.graph.fingerprint)

    @staticmethod
    def key(policy: Policy) -> PolicyKey:
        """A hashable key equal for equal policies (every layer's widths and activation width)."""
        return policy.key()

    def mark(self, policy: Policy) -> None:
        """Remember that ``policy`` was evaluated."""
        self.seen.add(self.key(policy))

    def top(self, scored: list[tuple[float, _T, PolicyKey]], k: int) -> list[_T]:
        """The first ``k`` distinct, not yet evaluated items by score (stable among equals)."""
        seen = set(self.seen)
        picks = []
        for _, item, key in sorted(scored, key=lambda t: -t[0]):
            if key in seen:
                continue
            seen.add(key)
            picks.append(item)
            if len(picks) == k:
                break
        return picks
