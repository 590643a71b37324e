"""Baselines any learned search must beat at the same budget (METHOD.md section 7).

All of them play their policies through the same environment as the learned agents, so they are
counted, logged and enforced the same way:

- ``random``: uniformly random actions, as many episodes as the agent gets (the control no paper
  reports);
- ``uniform``: every kernel at one width, no pruning: each width whose uniform policy fits the
  budget (few evaluations; at tight budgets only the smallest width);
- ``two-stage``: prune-then-quantize: for each width, the smallest uniform magnitude pruning that
  brings the uniformly quantized network within budget;
- ``greedy``: sensitivity-driven width allocation: start with every layer at the smallest width
  and, round after round, give one more width level to the layer where it helps accuracy most
  (the least sensitive layers stay low: the dual of "lower the least sensitive layer first"),
  uniform magnitude pruning paying for every raise; each probe is an evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

from agents.play import fits, jpq, least_uniform_pruning, play, uniform_choices
from agents.search import Search

__all__ = ["BASELINES", "greedy", "random_search", "two_stage", "uniform"]


def random_search(search: Search, seed: int) -> None:
    """Uniformly random actions until the evaluation budget is spent."""
    env = search.env
    env.action_space.seed(seed)
    env.reset(seed=seed)
    while not search.done:
        env.reset()
        terminated = False
        while not terminated:
            terminated = env.step(env.action_space.sample())[2]


def uniform(search: Search, seed: int) -> None:
    """Each uniform width without pruning that fits the budget (else the smallest one)."""
    base = jpq(search.env)
    n = base.num_layers
    widths = [lv for lv in range(len(base.bits)) if fits(base, [0] * n, [lv] * n)[0]] or [0]
    for lv in sorted(widths, reverse=True):
        if search.done:
            return
        play(search.env, uniform_choices(base, [0] * n, [lv] * n), seed=seed)


def two_stage(search: Search, seed: int) -> None:
    """Prune-then-quantize: per width, the least uniform magnitude pruning that fits."""
    base = jpq(search.env)
    n = base.num_layers
    for lv in reversed(range(len(base.bits))):
        if search.done:
            return
        pruned = least_uniform_pruning(base, [lv] * n)
        if pruned is not None:
            play(search.env, uniform_choices(base, pruned, [lv] * n), seed=seed)


def greedy(search: Search, seed: int) -> None:
    """Greedy width allocation with magnitude pruning paying for it.

    Starts from the smallest widths with the least uniform pruning that fits; each round tries
    one more width level for every layer (the shared pruning rising as needed to stay within
    budget) and keeps the most accurate trial, until no trial improves on the current policy.
    """
    base = jpq(search.env)
    n = base.num_layers
    levels = [0] * n
    pruned = least_uniform_pruning(base, levels)
    if pruned is None:
        return
    accuracy = play(search.env, uniform_choices(base, pruned, levels), seed=seed)["accuracy"]
    while not search.done:
        best: tuple[float, list[int], list[int]] | None = None
        for layer in range(n):
            if levels[layer] + 1 >= len(base.bits) or search.done:
                continue
            trial = list(levels)
            trial[layer] += 1
            trial_pruned = least_uniform_pruning(base, trial)
            if trial_pruned is None:
                continue
            info = play(search.env, uniform_choices(base, trial_pruned, trial), seed=seed)
            if best is None or info["accuracy"] > best[0]:
                best = (info["accuracy"], trial, trial_pruned)
        if best is None or best[0] <= accuracy:
            return
        accuracy, levels, pruned = best


BASELINES: dict[str, Callable[[Search, int], None]] = {
    "random": random_search,
    "uniform": uniform,
    "two-stage": two_stage,
    "greedy": greedy,
}
