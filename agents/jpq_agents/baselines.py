"""Baselines any learned search must beat at the same budget of evaluations.

All of them play their policies through the same environment as the learned agents, so they are
counted, logged and enforced the same way:

- ``random``: uniformly random actions, as many episodes as the agent gets (the control no paper
  reports);
- ``uniform``: every kernel at one width, no pruning: each width (with activations each WxAy pair of
  weight and activation widths) whose uniform policy fits the budget (few evaluations; at tight
  budgets only the smallest);
- ``two-stage``: prune-then-quantize: for each width (WxAy pair with activations), the smallest
  uniform magnitude pruning that brings the uniformly quantized network within budget;
- ``greedy``: sensitivity-driven width allocation: start with every layer at the smallest widths
  and, round after round, give one more level to the layer's weights or (if decided) activations
  where it helps accuracy most (the least sensitive layers stay low: the dual of "lower the least
  sensitive layer first"), uniform magnitude pruning paying for every raise; each probe is an
  evaluation.

With an evaluator pool (``jpq search --ray/--workers``), random search and each round of greedy's
probes are evaluated in batches (``jpq_agents.batch``): the same episodes, the same records.

``uniform``, ``two-stage`` and ``greedy`` can run out of policies to try before the evaluation
budget is spent; they then return why (a ``Stop``), and the run's summary says so
(``"stopped_early"``). A baseline stopped by the budget returns None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .batch import choice_actions, parallelism, play_many
from .play import (
    LayerChoice,
    fits,
    jpq,
    least_uniform_pruning,
    level_pairs,
    play,
    uniform_choices,
)
from .search import Search

if TYPE_CHECKING:
    from jpq_env.envs import JPQEnv

__all__ = [
    "BASELINES",
    "Stop",
    "greedy",
    "greedy_descent",
    "random_search",
    "two_stage",
    "uniform",
]

Stop = str | None
"""Why a baseline stopped before the evaluation budget was spent (None: the budget stopped it)."""


def _early(search: Search, reason: str) -> Stop:
    """``reason``, unless the evaluation budget is spent all the same (the budget stopped it)."""
    return None if search.done else reason


def random_search(search: Search, seed: int) -> Stop:
    """Uniformly random actions until the evaluation budget is spent."""
    env = search.env
    env.action_space.seed(seed)
    env.reset(seed=seed)
    batch = 4 * parallelism(search)
    if batch > 4:  # an evaluator pool (--ray): the same episodes, drawn and evaluated in batches
        steps = 2 * jpq(env).num_layers
        while not search.done:
            episodes = [[env.action_space.sample() for _ in range(steps)] for _ in range(batch)]
            play_many(search, episodes)
        return None
    while not search.done:
        env.reset()
        terminated = False
        while not terminated:
            terminated = env.step(env.action_space.sample())[2]
    return None


def uniform(search: Search, seed: int) -> Stop:
    """Each uniform width (or WxAy pair) without pruning that fits (else the smallest one)."""
    base = jpq(search.env)
    n = base.num_layers
    pairs = [p for p in level_pairs(base) if fits(base, [0] * n, [p[0]] * n, [p[1]] * n)[0]]
    for w, a in pairs or level_pairs(base)[-1:]:
        if search.done:
            return None
        play(search.env, uniform_choices(base, [0] * n, [w] * n, [a] * n), seed=seed)
    fitting = f"the {len(pairs)} that fit the budget" if pairs else "none fits: the smallest one"
    return _early(
        search, f"nothing left to try: it played each uniform width without pruning ({fitting})"
    )


def two_stage(search: Search, seed: int) -> Stop:
    """Prune-then-quantize: per width (or WxAy pair), the least uniform pruning that fits."""
    base = jpq(search.env)
    n = base.num_layers
    played = 0
    for w, a in level_pairs(base):
        if search.done:
            return None
        pruned = least_uniform_pruning(base, [w] * n, [a] * n)
        if pruned is not None:
            play(search.env, uniform_choices(base, pruned, [w] * n, [a] * n), seed=seed)
            played += 1
    return _early(
        search,
        f"nothing left to try: it played the least uniform pruning that fits the budget for each "
        f"of the {played} uniform widths that one fits",
    )


def greedy(search: Search, seed: int) -> Stop:
    """Greedy width allocation with magnitude pruning paying for it.

    Starts from the most accurate of the prune-then-quantize policies (every uniform width, WxAy
    pair with activations, with the least uniform pruning that fits: the ``two-stage`` baseline's
    episodes) and of the smallest widths with the least pruning that fits. Each round then tries one
    more level for every layer's weights and every layer's activations (the shared pruning rising as
    needed to stay within budget) and keeps the most accurate trial, until no trial improves on the
    current policy (``greedy_descent``).

    Cost in evaluations for ``L`` layers and ``P`` width pairs (``P`` = 6 for weights, 36 with
    activations, of six widths): ``P + 1`` to start, then at most ``L`` (or ``2 L`` with
    activations) per round. Starting from the two-stage policy rather than from the smallest widths
    is what makes 300 evaluations enough on 20 layers (ResNet-20: from the smallest widths, 7 rounds
    of 40 probes ended far below the budget, at 1/197 of FP32 BOPs and 16% test accuracy). When the
    evaluation budget ends a round early, ``search.stop_reason`` says so.
    """
    base = jpq(search.env)

    def evaluate(plans: list[list[LayerChoice]]) -> list[float]:
        probes = [choice_actions(base, plan) for plan in plans]
        return [info["accuracy"] for info in play_many(search, probes, seed=seed)]

    reason, cut = greedy_descent(base, evaluate, lambda: search.done)
    if cut:
        search.stop_reason = cut
    return reason


def greedy_descent(
    base: JPQEnv,
    evaluate: Callable[[list[list[LayerChoice]]], list[float]],
    done: Callable[[], bool],
) -> tuple[Stop, str | None]:
    """Greedy's rounds (``greedy``), scoring each round's probes with ``evaluate``.

    The two-level controller's greedy warm start runs the same rounds through its own episodes.

    Args:
        base: The environment.
        evaluate: Scores of a round's plans (one ``LayerChoice`` per layer each); shorter than
            the plans when the evaluation budget ends.
        done: True once the evaluation budget is spent.

    Returns:
        Why greedy stopped (None: the budget stopped it) and, if the budget cut a round short,
        a message saying so.
    """
    n = base.num_layers
    # One row per kind of width: weights, then activations (if decided); levels[kind][layer].
    tops = [len(base.bits)] + ([len(base.space.act_bits)] if base.decides_act else [])

    def acts(lv: list[list[int]]) -> list[int | None]:
        return list(lv[1]) if base.decides_act else [None] * n

    starts: list[tuple[list[list[int]], list[int]]] = []
    uniform_levels = [(w, a) for w, a in level_pairs(base)] + [(0, 0 if base.decides_act else None)]
    for w, a in dict.fromkeys(uniform_levels):  # the two-stage policies, then the smallest widths
        levels = [[w] * n] + ([[a if a is not None else 0] * n] if base.decides_act else [])
        pruned = least_uniform_pruning(base, levels[0], acts(levels))
        if pruned is not None:
            starts.append((levels, pruned))
    if not starts:
        return "nothing to try: no uniform pruning brings any uniform width within budget", None
    scores = evaluate([uniform_choices(base, p, lv[0], acts(lv)) for lv, p in starts])
    scored = list(zip(starts, scores, strict=False))
    if not scored:
        return None, None
    (levels, pruned), accuracy = max(scored, key=lambda x: x[1])  # first of equals
    rounds = 0
    cut: str | None = None
    while True:
        rounds += 1
        best: tuple[float, list[list[int]], list[int]] | None = None
        trials = []
        for kind, top in enumerate(tops):
            for layer in range(n):
                if levels[kind][layer] + 1 >= top or (kind == 1 and layer in base.space.fixed_act):
                    continue  # no higher level, or a width the conventions fix (the same policy)
                trial = [list(row) for row in levels]
                trial[kind][layer] += 1
                trial_pruned = least_uniform_pruning(base, trial[0], acts(trial))
                if trial_pruned is not None:
                    trials.append((trial, trial_pruned))
        if done():
            if trials:
                cut = (
                    f"the evaluation budget ran out while greedy still had {len(trials)} probes "
                    "to try (see greedy's cost in evaluations in jpq_agents.baselines)"
                )
            return None, cut
        if not trials:
            return (
                f"nothing left to try: after {rounds - 1} rounds no layer's width can be raised "
                "a level within budget"
            ), cut
        # One round's probes in one batch (in parallel on an evaluator pool), cut to the budget.
        played = evaluate([uniform_choices(base, p, t[0], acts(t)) for t, p in trials])
        for (trial, trial_pruned), score in zip(trials, played, strict=False):
            if best is None or score > best[0]:
                best = (score, trial, trial_pruned)
        if len(played) < len(trials):
            cut = (
                f"the evaluation budget ran out in a round of greedy, after {len(played)} of its "
                f"{len(trials)} probes (see greedy's cost in evaluations in jpq_agents.baselines)"
            )
        if best is None or best[0] <= accuracy:
            return (
                f"nothing left to try: in round {rounds}, none of the {len(trials)} one-level "
                "raises improved accuracy (greedy converged)"
            ), cut
        accuracy, levels, pruned = best


BASELINES: dict[str, Callable[[Search, int], Stop]] = {
    "random": random_search,
    "uniform": uniform,
    "two-stage": two_stage,
    "greedy": greedy,
}
