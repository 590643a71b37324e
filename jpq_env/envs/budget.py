"""Budgets and their enforcement: none (penalty only), forward wall (AMC), backward lowering (HAQ).

- **Forward wall**: before a decision is applied, it is made just aggressive enough that the budget
  stays reachable if every later layer took its most aggressive allowed action. Every episode then
  ends within budget, and the applied (not the proposed) decision is what the agent is told.
- **Backward lowering**: after the episode, bits are lowered one level at a time from the last layer
  backwards (then activation bits, then more pruning) until the budget holds.
- **None**: nothing is changed; the reward design's penalty terms carry the budget.

The enforcement works on a ``DecisionSpace`` (``jpq_env.envs.decisions``) and its decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from jpq_env import validation as check
from jpq_env.core.costs import CostReport
from jpq_env.envs.decisions import DecisionSpace, LayerDecision

__all__ = ["ENFORCEMENT", "Budget", "lower_backwards", "wall_channels", "wall_layer"]

ENFORCEMENT = ("none", "wall", "lowering")
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Budget:
    """Targets as fractions of FP32: ``bops`` and/or ``size`` (None = unconstrained).

    Raises:
        ValueError: If a target is not a number in (0, 1] or no target is given.
    """

    bops: float | None = None
    size: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("BOPs", self.bops), ("size", self.size)):
            check.number(
                f"the {name} budget",
                value,
                low=0.0,
                high=1.0,
                low_open=True,
                optional=True,
                allowed="a fraction of FP32 in (0, 1] or None",
            )

    @property
    def targets(self) -> dict[str, float]:
        """The constrained costs and their target fractions."""
        out = {}
        if self.bops is not None:
            out["bops"] = float(self.bops)
        if self.size is not None:
            out["size"] = float(self.size)
        return out

    def met(self, cost: CostReport) -> bool:
        """True if ``cost`` is within every target."""
        return self.within(cost.bops_ratio, cost.size_ratio)

    def within(self, bops_ratio: float, size_ratio: float) -> bool:
        """True if costs given as fractions of FP32 are within every target."""
        return (self.bops is None or bops_ratio <= self.bops + _TOLERANCE) and (
            self.size is None or size_ratio <= self.size + _TOLERANCE
        )


def wall_layer(
    space: DecisionSpace,
    budget: Budget,
    decisions: list[LayerDecision | None],
    layer: int,
    n_pruned: int,
    act: int,
) -> tuple[int, int]:
    """Forward wall for a layer decision: prune more (then lower activation bits) if needed.

    The layer's kept kernels are assumed at the lowest width while checking, since the
    channel decision that follows can still lower them.

    Returns:
        The applied ``(n_pruned, act_bits)``.
    """

    def fits(n: int, a: int) -> bool:
        k = space.graph.layers[layer].out_channels
        trial = list(decisions)
        trial[layer] = space.decision(layer, n, np.full(k - n, space.bits[0]), a)
        return space.fits(budget, trial)

    if fits(n_pruned, act):
        return n_pruned, space.act_for(layer, act)
    top = space.max_pruned(layer)
    acts = [a for a in space.act_bits if a <= act][::-1] or [space.act_bits[0]]
    for a in acts:
        if not fits(top, a):
            continue
        lo, hi = n_pruned, top  # smallest n in [lo, hi] that fits (cost falls as n grows)
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid, a):
                hi = mid
            else:
                lo = mid + 1
        return lo, space.act_for(layer, a)
    return top, space.act_for(layer, space.act_bits[0])


@cache
def _chunks(n: int, chunks: int) -> tuple[np.ndarray, ...]:
    """Positions ``0..n-1`` in ``chunks`` near-equal consecutive parts (empty ones dropped)."""
    parts = tuple(p for p in np.array_split(np.arange(n), chunks) if p.size)
    for p in parts:
        p.flags.writeable = False
    return parts


def wall_channels(
    space: DecisionSpace,
    budget: Budget,
    decisions: list[LayerDecision | None],
    layer: int,
    proposed: LayerDecision,
    chunks: int = 8,
) -> LayerDecision:
    """Forward wall for a channel decision: lower the least important kernels' widths first.

    Kernels are lowered one width level at a time, in up to ``chunks`` importance chunks from
    the least important, until the budget stays reachable.
    """
    kept = proposed.ranked_bits[: len(proposed.ranked_bits) - proposed.n_pruned]
    start = np.searchsorted(space.bits, kept)
    parts = _chunks(len(kept), min(chunks, len(kept)))
    choices = np.asarray(space.bits)

    @cache  # the same objects again for the same steps: their costs are cached
    def lowered(steps: int) -> LayerDecision:
        """The decision after ``steps`` single-level lowerings, least important part first.

        Each lowering takes the least important part with a level above 0 down one level, so
        a part reaches 0 after as many steps as its highest level, then the next part goes.
        """
        levels = start.copy()
        for part in reversed(parts):
            if steps <= 0:
                break
            top = int(levels[part].max())
            levels[part] = np.maximum(levels[part] - min(steps, top), 0)
            steps -= top
        return space.decision(layer, proposed.n_pruned, choices[levels], proposed.act_bits)

    def fits(d: LayerDecision) -> bool:
        trial = list(decisions)
        trial[layer] = d
        return space.fits(budget, trial)

    if fits(proposed):
        return proposed
    # Each lowering step can only lower the cost: binary-search the fewest steps that fit.
    lo, hi = 1, int(sum(start[p].max(initial=0) for p in parts))
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(lowered(mid)):
            hi = mid
        else:
            lo = mid + 1
    return lowered(lo)


def lower_backwards(
    space: DecisionSpace, budget: Budget, decisions: list[LayerDecision]
) -> list[LayerDecision]:
    """Backward lowering (HAQ): lower widths from the last layer until ``budget`` holds.

    Weight widths first (one level per layer per round), then activation widths, then more
    pruning (a tenth of a layer's kernels per round), always from the last layer backwards.
    """
    out: list[LayerDecision | None] = list(decisions)

    def met() -> bool:
        return space.fits(budget, out)

    for step in (_lower_weights, _lower_acts, _prune_more):
        changed = True
        while not met() and changed:
            changed = False
            for layer in reversed(range(len(out))):
                new = step(space, layer, out[layer])  # type: ignore[arg-type]
                if new is not None:
                    out[layer] = new
                    changed = True
                    if met():
                        break
    return out  # type: ignore[return-value]


def _lower_weights(space: DecisionSpace, layer: int, d: LayerDecision) -> LayerDecision | None:
    if layer in space.pinned_bits:
        return None
    kept = d.ranked_bits[: len(d.ranked_bits) - d.n_pruned]
    levels = np.searchsorted(space.bits, kept)
    if levels.size == 0 or levels.max() == 0:
        return None
    lowered = np.asarray(space.bits)[np.maximum(levels - 1, 0)]
    return space.decision(layer, d.n_pruned, lowered, d.act_bits)


def _lower_acts(space: DecisionSpace, layer: int, d: LayerDecision) -> LayerDecision | None:
    lower = [a for a in space.act_bits if a < d.act_bits]
    if not lower or layer in space.fixed_act:
        return None
    kept = d.ranked_bits[: len(d.ranked_bits) - d.n_pruned]
    return space.decision(layer, d.n_pruned, kept, lower[-1])


def _prune_more(space: DecisionSpace, layer: int, d: LayerDecision) -> LayerDecision | None:
    top = space.max_pruned(layer)
    if d.n_pruned >= top:
        return None
    k = space.graph.layers[layer].out_channels
    n = min(top, d.n_pruned + max(1, k // 10))
    return space.decision(layer, n, d.ranked_bits[: k - n], d.act_bits)
