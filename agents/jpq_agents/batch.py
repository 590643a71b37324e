"""Playing many episodes of a search at once, their evaluations in one batch.

Agents that know several episodes' actions before seeing any of their accuracies (random search,
one round of greedy's probes) hand them to ``play_many``. With an evaluator that has a batch
method (``accuracy_many``, e.g. ``jpq_env.proxy.ray.RayEvaluator``), it:

1. plays each episode on the bare environment up to its evaluation and captures the policy (the
   environment's decisions, budget enforcement included; nothing is evaluated or recorded);
2. submits each captured policy at once (``iter_accuracy``; or all together, ``accuracy_many``),
   evaluated in parallel on the evaluator's workers;
3. plays the episodes again through the search's recorder, the evaluator answering from the
   batch as its results arrive, so each is counted, logged and rewarded exactly as a sequential
   episode would be.

Episodes beyond the search's remaining budget are not played, and episodes a resumed run already
logged are answered from the log, not evaluated again: the evaluation counter stays exact. Any
other evaluator gets the sequential path, unchanged.

Agents whose actions depend on what the environment answers (the two-level controller reads each
step's observation) play their episodes themselves in ``capturing(search)``: a tape over the bare
environment on which every episode ends at its evaluation, unevaluated, and which keeps each
episode's actions and policy; ``play_many(search, tape.episodes, policies=tape.policies)`` then
evaluates them in one batch without capturing them again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from jpq_env.core.policy import Policy
from jpq_env.envs import JPQEnv
from jpq_env.errors import ArgumentError
from jpq_env.proxy.evaluator import Evaluator, WrappedEvaluator

from .play import LayerChoice, channel_action, layer_action
from .search import Search

__all__ = ["Tape", "capturing", "choice_actions", "parallelism", "play_many"]


def choice_actions(base: JPQEnv, choices: Sequence[LayerChoice]) -> list[np.ndarray]:
    """The native actions ``jpq_agents.play.play`` sends for ``choices``: two per layer."""
    actions = []
    for layer, c in enumerate(choices):
        actions += [
            layer_action(base, layer, c.n_pruned, c.act_level),
            channel_action(base, c.levels),
        ]
    return actions


def parallelism(search: Search) -> int:
    """How many evaluations the search's evaluator runs at once (its ``workers``)."""
    return max(1, int(search.evaluator.workers))


class _Captured(Exception):
    def __init__(self, policy: Policy) -> None:
        super().__init__("policy captured")
        self.policy = policy


class _Capture(Evaluator):
    """Stops an episode at its evaluation and hands over the policy."""

    @property
    def fp32_accuracy(self) -> float:
        raise RuntimeError("not evaluated while capturing")

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        raise _Captured(policy)


class _Answers(WrappedEvaluator):
    """Answers the captured policies, in order, from the batch's accuracies as they arrive."""

    def __init__(self, inner: Evaluator, policies: list[Policy], values: Iterator[float]) -> None:
        super().__init__(inner)
        self.policies = iter(policies)
        self.values = values

    @property
    def scorer(self) -> Evaluator:
        """The evaluator beneath, for a score outside the batch (a resumed best checked again)."""
        return self.inner

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        if policy != next(self.policies):
            raise RuntimeError("an episode replayed a different policy than the one captured")
        return next(self.values)


class Tape(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """The bare environment in capture mode: each episode ends at its evaluation, unevaluated.

    Agents play on it as on any environment; the step that would evaluate returns instead with
    ``terminated=True``, reward 0, an observation of zeros and ``info={"captured": True}`` (not a
    real outcome: nothing was evaluated, nothing recorded). ``episodes`` holds every captured
    episode's actions, ``policies`` its policy, in order, ready for ``play_many``.
    """

    def __init__(self, env: JPQEnv) -> None:
        super().__init__(env)
        self.base = env
        self.episodes: list[list[np.ndarray]] = []
        self.policies: list[Policy] = []
        self._actions: list[np.ndarray] = []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode (its actions are taped from here)."""
        self._actions = []
        return self.env.reset(seed=seed, options=options)

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step; at the evaluation, keep the episode and end it without evaluating."""
        self._actions.append(np.array(action, copy=True))
        try:
            return self.env.step(action)
        except _Captured as captured:
            self.episodes.append(self._actions)
            self.policies.append(captured.policy)
            self._actions = []
            zeros = np.zeros(self.base.observation_size, dtype=np.float32)
            return zeros, 0.0, True, False, {"captured": True}


@contextmanager
def capturing(search: Search) -> Iterator[Tape]:
    """A ``Tape`` over the search's bare environment, its evaluator restored afterwards."""
    base = search.base
    outer = base.evaluator
    base.evaluator = _Capture()
    try:
        yield Tape(base)
    finally:
        base.evaluator = outer


def _capture(
    search: Search, episodes: Sequence[Sequence[np.ndarray]], seed: int | None, out: list[Policy]
) -> Iterator[Policy]:
    """Play each episode on the bare environment up to its evaluation; yield its policy.

    One by one (each also appended to ``out``), so an evaluator can start on the first policies
    while the rest are played.
    """
    with capturing(search) as tape:
        for actions in episodes:
            tape.reset(seed=seed)
            for action in actions:
                if tape.step(action)[2]:
                    break
            if len(tape.policies) <= len(out):
                raise ArgumentError("an episode's actions ended before the episode did")
            out.append(tape.policies[-1])
            yield tape.policies[-1]


def play_many(
    search: Search,
    episodes: Sequence[Sequence[np.ndarray]],
    seed: int | None = None,
    policies: Sequence[Policy] | None = None,
) -> list[dict[str, Any]]:
    """Play episodes (native action sequences) through the search; their final ``info`` dicts.

    Each episode starts with ``reset(seed=seed)``. Episodes beyond the remaining budget are
    dropped, so the result may be shorter than ``episodes``. ``policies``: the episodes' policies
    when the caller captured them already (``capturing``), so they are not played twice.
    """
    if policies is not None and len(policies) != len(episodes):
        raise ArgumentError(f"{len(policies)} policies given for {len(episodes)} episodes")
    episodes = list(episodes)[: max(search.settings.episodes - search.count, 0)]
    evaluator = search.evaluator
    if evaluator.workers > 1 and len(episodes) > 1:
        logged = min(search.replay_left, len(episodes))  # answered from the log, not captured
        fresh: list[Policy] = []
        if policies is None:
            todo: Iterator[Policy] | list[Policy] = _capture(search, episodes[logged:], seed, fresh)
        else:
            fresh = todo = list(policies[logged : len(episodes)])
        values = evaluator.iter_accuracy(todo)  # a pool submits as the capture goes
        search.evaluator = _Answers(evaluator, fresh, values)
    try:
        infos = []
        for actions in episodes:
            search.env.reset(seed=seed)
            info: dict[str, Any] = {}
            for action in actions:
                _, _, terminated, _, info = search.env.step(action)
                if terminated:
                    break
            infos.append(info)
        return infos
    finally:
        search.evaluator = evaluator
