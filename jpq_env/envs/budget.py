"""Budgets and their enforcement: none (penalty only), forward wall (AMC), backward lowering (HAQ).

Decisions are kept per layer in *importance order* (``LayerDecision.ranked_bits[i]`` is the width of
the i-th most important kernel; the pruned ones are the last ``n_pruned``). ``DecisionSpace`` knows
what each layer may take (bit choices, the largest sparsity, layers that cannot be pruned or are
pinned by a convention) and turns decisions into a ``Policy`` for the cost model.

- **Forward wall**: before a decision is applied, it is made just aggressive enough that the budget
  stays reachable if every later layer took its most aggressive allowed action. Every episode then
  ends within budget, and the applied (not the proposed) decision is what the agent is told.
- **Backward lowering**: after the episode, bits are lowered one level at a time from the last layer
  backwards (then activation bits, then more pruning) until the budget holds.
- **None**: nothing is changed; the reward design's penalty terms carry the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np

from jpq_env import validation as check
from jpq_env.core.costs import CostReport, bit_connections, measure
from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import Conventions, LayerPolicy, Policy

__all__ = ["ENFORCEMENT", "Budget", "DecisionSpace", "LayerDecision"]

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


@dataclass(frozen=True)
class LayerDecision:
    """The applied decision for one layer.

    Attributes:
        n_pruned: Kernels given 0 bits (the least important ones).
        ranked_bits: Width of every kernel in importance order (0 for the pruned tail).
        act_bits: Width of the layer's input activations.
        bits: The same widths in the layer's channel order.
    """

    n_pruned: int
    ranked_bits: np.ndarray
    act_bits: int
    bits: np.ndarray

    @cached_property
    def kept_mean_bits(self) -> float:
        """Mean weight width of the kept kernels, in bits (computed once)."""
        return float(self.ranked_bits[: len(self.ranked_bits) - self.n_pruned].mean())


class DecisionSpace:
    """What each layer of a graph may take, and the policy a set of decisions makes.

    Args:
        graph: The layer graph.
        orders: Per layer, kernel indices most important first.
        bits: Allowed weight widths of kept kernels, ascending.
        act_bits: Allowed activation widths, ascending (one value: fixed).
        max_sparsity: Largest share of a layer's kernels that may be pruned, in [0, 1).
        conventions: Counting conventions (network input bits, pinned first/last layers).
    """

    def __init__(
        self,
        graph: LayerGraph,
        orders: Sequence[np.ndarray],
        bits: Sequence[int],
        act_bits: Sequence[int],
        max_sparsity: float,
        conventions: Conventions,
    ) -> None:
        self.graph = graph
        self.orders = list(orders)
        self.bits = tuple(sorted(bits))
        self.act_bits = tuple(sorted(act_bits))
        self.max_sparsity = max_sparsity
        self.conventions = conventions
        pinned = graph.input_layers | graph.output_layers
        first_last, input_bits = conventions.first_last_bits, conventions.input_bits
        self.pinned_bits: dict[int, int] = (
            {i: first_last for i in pinned} if first_last is not None else {}
        )
        self.fixed_act: dict[int, int] = (
            {i: input_bits for i in graph.input_layers} if input_bits is not None else {}
        )
        fp32 = measure(graph, Policy.uniform(graph))
        self.fp32_bops, self.fp32_size = fp32.bops_fp32, fp32.size_bits_fp32
        # Layers the graph does not compress cost the same in every policy (at FP32).
        self.fixed_bops, self.fixed_size = fp32.uncompressed_bops, fp32.uncompressed_size_bits
        self._aggressive: dict[int, LayerDecision] = {}
        # The last few decisions' weighted connections: an episode asks for the same ones several
        # times (the wall's checks, then the observation's budget features). Matched by
        # identity; the entries hold their decisions, so that no id is reused while cached.
        self._recent_weighted: list[tuple[tuple[LayerDecision, ...], np.ndarray]] = []

    def max_pruned(self, layer: int) -> int:
        """Most kernels layer ``layer`` may prune (0 for output and pinned layers)."""
        if layer in self.graph.output_layers or layer in self.pinned_bits:
            return 0
        k = self.graph.layers[layer].out_channels
        return min(int(np.floor(self.max_sparsity * k + 1e-9)), k - 1)

    def n_pruned(self, layer: int, sparsity: float) -> int:
        """Kernels pruned for a proposed sparsity, within what the layer allows."""
        k = self.graph.layers[layer].out_channels
        return min(round(sparsity * k), self.max_pruned(layer))

    def act_for(self, layer: int, proposed: int) -> int:
        """The activation width a layer actually gets (the network input may be fixed)."""
        return self.fixed_act.get(layer, proposed)

    def decision(self, layer: int, n_pruned: int, kept_bits: np.ndarray, act: int) -> LayerDecision:
        """A decision from kept kernels' widths (importance order), with conventions imposed."""
        k = self.graph.layers[layer].out_channels
        ranked = np.zeros(k, dtype=np.int64)
        width = self.pinned_bits.get(layer)
        ranked[: k - n_pruned] = kept_bits if width is None else width
        bits = np.empty_like(ranked)
        bits[self.orders[layer]] = ranked
        return LayerDecision(n_pruned, ranked, self.act_for(layer, act), bits)

    def most_aggressive(self, layer: int) -> LayerDecision:
        """The cheapest decision a layer may take (computed once per layer)."""
        if layer not in self._aggressive:
            n = self.max_pruned(layer)
            k = self.graph.layers[layer].out_channels
            self._aggressive[layer] = self.decision(
                layer, n, np.full(k - n, self.bits[0]), self.act_bits[0]
            )
        return self._aggressive[layer]

    def policy(
        self,
        decisions: Sequence[LayerDecision | None],
        fill: Callable[[int], LayerDecision] | None = None,
    ) -> Policy:
        """The policy of ``decisions``; undecided layers (None) take ``fill(layer)``.

        ``fill`` defaults to the most aggressive decision.
        """
        full = self._complete(decisions, fill)
        layers = (
            LayerPolicy(x.name, d.bits, d.act_bits)
            for x, d in zip(self.graph.layers, full, strict=True)
        )
        return Policy(tuple(layers), self.graph.fingerprint)

    def _complete(
        self,
        decisions: Sequence[LayerDecision | None],
        fill: Callable[[int], LayerDecision] | None = None,
    ) -> list[LayerDecision]:
        fill = fill or self.most_aggressive
        return [d if d is not None else fill(i) for i, d in enumerate(decisions)]

    def _weighted(self, full: list[LayerDecision]) -> np.ndarray:
        """Per layer, live (kernel, input) pairs weighted by weight bits (``bit_connections``)."""
        for decisions, weighted in self._recent_weighted:
            if len(decisions) == len(full) and all(
                a is b for a, b in zip(decisions, full, strict=True)
            ):
                return weighted
        bits = [d.bits for d in full]
        live = self.graph.liveness([b > 0 for b in bits], batchnorms=False)
        _, weighted = bit_connections(self.graph, bits, live)
        self._recent_weighted = [(tuple(full), weighted), *self._recent_weighted[:3]]
        return weighted

    def ratios(self, decisions: Sequence[LayerDecision | None]) -> tuple[float, float]:
        """BOPs and size as fractions of FP32, undecided layers at their most aggressive.

        The fixed cost of the uncompressed layers is included.
        """
        bops, size = self.layer_costs(decisions)
        return (
            (int(bops.sum()) + self.fixed_bops) / self.fp32_bops,
            (int(size.sum()) + self.fixed_size) / self.fp32_size,
        )

    def layer_costs(
        self, decisions: Sequence[LayerDecision | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer BOPs and size in bits, undecided layers at their most aggressive.

        Compressible layers only: ``fixed_bops`` and ``fixed_size`` hold the uncompressed ones.
        """
        full = self._complete(decisions)
        weighted = self._weighted(full)
        acts = np.array([d.act_bits for d in full], dtype=np.int64)
        return weighted * self.graph.connection_macs * acts, weighted * self.graph.kernel_areas

    def fits(self, budget: Budget, decisions: Sequence[LayerDecision | None]) -> bool:
        """True if ``decisions`` (undecided layers at their most aggressive) meet ``budget``."""
        return budget.within(*self.ratios(decisions))

    # ---- enforcement -------------------------------------------------------------------------

    def feasible(self, budget: Budget) -> bool:
        """True if the most aggressive decisions everywhere meet ``budget``."""
        return self.fits(budget, [None] * len(self.graph))

    def wall_layer(
        self,
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
            k = self.graph.layers[layer].out_channels
            trial = list(decisions)
            trial[layer] = self.decision(layer, n, np.full(k - n, self.bits[0]), a)
            return self.fits(budget, trial)

        if fits(n_pruned, act):
            return n_pruned, self.act_for(layer, act)
        top = self.max_pruned(layer)
        acts = [a for a in self.act_bits if a <= act][::-1] or [self.act_bits[0]]
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
            return lo, self.act_for(layer, a)
        return top, self.act_for(layer, self.act_bits[0])

    def wall_channels(
        self,
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
        start = np.searchsorted(self.bits, kept)
        parts = [p for p in np.array_split(np.arange(len(kept)), min(chunks, len(kept))) if p.size]
        choices = np.asarray(self.bits)

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
            return self.decision(layer, proposed.n_pruned, choices[levels], proposed.act_bits)

        def fits(d: LayerDecision) -> bool:
            trial = list(decisions)
            trial[layer] = d
            return self.fits(budget, trial)

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
        self, budget: Budget, decisions: list[LayerDecision]
    ) -> list[LayerDecision]:
        """Backward lowering (HAQ): lower widths from the last layer until ``budget`` holds.

        Weight widths first (one level per layer per round), then activation widths, then more
        pruning (a tenth of a layer's kernels per round), always from the last layer backwards.
        """
        out: list[LayerDecision | None] = list(decisions)

        def met() -> bool:
            return self.fits(budget, out)

        for step in (self._lower_weights, self._lower_acts, self._prune_more):
            changed = True
            while not met() and changed:
                changed = False
                for layer in reversed(range(len(out))):
                    new = step(layer, out[layer])  # type: ignore[arg-type]
                    if new is not None:
                        out[layer] = new
                        changed = True
                        if met():
                            break
        return out  # type: ignore[return-value]

    def _lower_weights(self, layer: int, d: LayerDecision) -> LayerDecision | None:
        if layer in self.pinned_bits:
            return None
        kept = d.ranked_bits[: len(d.ranked_bits) - d.n_pruned]
        levels = np.searchsorted(self.bits, kept)
        if levels.size == 0 or levels.max() == 0:
            return None
        lowered = np.asarray(self.bits)[np.maximum(levels - 1, 0)]
        return self.decision(layer, d.n_pruned, lowered, d.act_bits)

    def _lower_acts(self, layer: int, d: LayerDecision) -> LayerDecision | None:
        lower = [a for a in self.act_bits if a < d.act_bits]
        if not lower or layer in self.fixed_act:
            return None
        kept = d.ranked_bits[: len(d.ranked_bits) - d.n_pruned]
        return self.decision(layer, d.n_pruned, kept, lower[-1])

    def _prune_more(self, layer: int, d: LayerDecision) -> LayerDecision | None:
        top = self.max_pruned(layer)
        if d.n_pruned >= top:
            return None
        k = self.graph.layers[layer].out_channels
        n = min(top, d.n_pruned + max(1, k // 10))
        return self.decision(layer, n, d.ranked_bits[: k - n], d.act_bits)
