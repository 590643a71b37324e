"""Baselines any learned search must beat at the same budget of evaluations.

All of them play their policies through the same environment as the learned agents, so they are
counted, logged and enforced the same way:

- ``random``: uniformly random actions, as many episodes as the agent gets (the control no paper
  reports);
- ``uniform``: every kernel at one width, no pruning: each width (on v1 each WxAy pair of weight
  and activation widths) whose uniform policy fits the budget (few evaluations; at tight budgets
  only the smallest);
- ``two-stage``: prune-then-quantize: for each width (WxAy pair on v1), the smallest uniform
  magnitude pruning that brings the uniformly quantized network within budget;
- ``greedy``: sensitivity-driven width allocation: start with every layer at the smallest widths
  and, round after round, give one more level to the layer's weights or (v1) activations where it
  helps accuracy most (the least sensitive layers stay low: the dual of "lower the least sensitive
  layer first"), uniform magnitude pruning paying for every raise; each probe is an evaluation.

With an evaluator pool (``jpq search --ray/--workers``), random search and each round of greedy's
probes are evaluated in batches (``jpq_agents.batch``): the same episodes, the same records.

``uniform``, ``two-stage`` and ``greedy`` can run out of policies to try before the evaluation
budget is spent; they then return why (a ``Stop``), and the run's summary says so
(``"stopped_early"``). A baseline stopped by the budget returns None.
"""

from __future__ import annotations

from collections.abc import Callable

from .batch import choice_actions, parallelism, play_many
from .play import fits, jpq, least_uniform_pruning, level_pairs, play, uniform_choices
from .search import Search

__all__ = ["BASELINES", "Stop", "greedy", "random_search", "two_stage", "uniform"]

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
    """Each uniform width (WxAy pair on v1) without pruning that fits (else the smallest one)."""
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
    """Prune-then-quantize: per width (WxAy pair on v1), the least uniform pruning that fits."""
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

    Starts from the smallest widths (weights and, on v1, activations) with the least uniform
    pruning that fits; each round tries one more level for every layer's weights and every
    layer's activations (the shared pruning rising as needed to stay within budget) and keeps the
    most accurate trial, until no trial improves on the current policy.
    """
    base = jpq(search.env)
    n = base.num_layers
    # One row per kind of width: weights, then activations (v1 only); levels[kind][layer].
    tops = [len(base.bits)] + ([len(base.space.act_bits)] if base.decides_act else [])
    levels = [[0] * n for _ in tops]

    def acts(lv: list[list[int]]) -> list[int | None]:
        return list(lv[1]) if base.decides_act else [None] * n

    pruned = least_uniform_pruning(base, levels[0], acts(levels))
    if pruned is None:
        return "nothing to try: no uniform pruning brings the smallest widths within budget"
    info = play(search.env, uniform_choices(base, pruned, levels[0], acts(levels)), seed=seed)
    accuracy = info["accuracy"]
    rounds = 0
    while not search.done:
        rounds += 1
        best: tuple[float, list[list[int]], list[int]] | None = None
        trials = []
        for kind, top in enumerate(tops):
            for layer in range(n):
                if levels[kind][layer] + 1 >= top:
                    continue
                trial = [list(row) for row in levels]
                trial[kind][layer] += 1
                trial_pruned = least_uniform_pruning(base, trial[0], acts(trial))
                if trial_pruned is not None:
                    trials.append((trial, trial_pruned))
        # One round's probes in one batch (in parallel on an evaluator pool), cut to the budget.
        probes = [choice_actions(base, uniform_choices(base, p, t[0], acts(t))) for t, p in trials]
        for (trial, trial_pruned), info in zip(
            trials, play_many(search, probes, seed=seed), strict=False
        ):
            if best is None or info["accuracy"] > best[0]:
                best = (info["accuracy"], trial, trial_pruned)
        if search.done:
            return None  # the budget is spent (perhaps cutting this round short)
        if not trials:
            return (
                f"nothing left to try: after {rounds - 1} rounds no layer's width can be raised "
                "a level within budget"
            )
        if best is None or best[0] <= accuracy:
            return (
                f"nothing left to try: in round {rounds}, none of the {len(trials)} one-level "
                "raises improved accuracy (greedy converged)"
            )
        accuracy, levels, pruned = best
    return None


BASELINES: dict[str, Callable[[Search, int], Stop]] = {
    "random": random_search,
    "uniform": uniform,
    "two-stage": two_stage,
    "greedy": greedy,
}
