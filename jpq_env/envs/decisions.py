"""What each layer may take, and the policy a set of per-layer decisions makes.

``DecisionSpace`` is the agents' view of the problem: the environment builds one per task
(``JPQEnv.space``), and every agent (the two-level controller, the baselines, a third-party
algorithm) asks it what a layer may take (``max_pruned``, ``bits``, ``act_bits``, pinned and
fixed layers), how a channel decision's importance groups cover a layer's kernels
(``group_sizes``, ``kernel_levels``), what a set of decisions costs (``ratios``,
``layer_costs``, ``fits``) and which ``Policy`` it makes (``policy``). It holds no state of an
episode; the environment does.

Decisions are kept per layer in *importance order* (``LayerDecision.ranked_bits[i]`` is the width
of the i-th most important kernel; the pruned ones are the last ``n_pruned``), the ranking of
``jpq_env.core.importance`` shared by both levels of the decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from jpq_env.core.costs import (
    CostReport,
    LayerCounts,
    cost_report,
    layer_counts,
    measure,
    recount,
)
from jpq_env.core.graph import LayerGraph
from jpq_env.core.importance import group_sizes
from jpq_env.core.policy import Conventions, LayerPolicy, Policy, bits_from_ranking

if TYPE_CHECKING:
    from jpq_env.envs.budget import Budget

__all__ = ["DecisionSpace", "LayerDecision"]


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

    @cached_property
    def kept(self) -> bytes:
        """Which kernels (channel order) have more than 0 bits, as bytes (compared often)."""
        return (self.bits > 0).tobytes()


class DecisionSpace:
    """What each layer of a graph may take, and the policy a set of decisions makes.

    Args:
        graph: The layer graph.
        orders: Per layer, kernel indices most important first (``jpq_env.core.importance``).
        bits: Allowed weight widths of kept kernels, ascending.
        act_bits: Allowed activation widths, ascending (one value: fixed).
        max_sparsity: Largest share of a layer's kernels that may be pruned, in [0, 1).
        conventions: Counting conventions (network input bits, pinned first/last layers).
        channel_groups: Importance groups of a channel decision (0: one width per kernel).

    Attributes:
        per_kernel: True if a channel decision gives each kernel its own width.
        channel_slots: Entries of a channel decision: ``channel_groups``, or the widest layer's
            kernels when ``per_kernel``.
        pinned_bits: Layers whose weight width a convention fixes, by layer index.
        fixed_act: Layers whose input width a convention fixes (the network input).
        fp32_bops, fp32_size: The FP32 references (BOPs, size in bits).
        fixed_bops, fixed_size: What the layers jpq-env does not compress cost in every policy.
    """

    def __init__(
        self,
        graph: LayerGraph,
        orders: Sequence[np.ndarray],
        bits: Sequence[int],
        act_bits: Sequence[int],
        max_sparsity: float,
        conventions: Conventions,
        channel_groups: int = 4,
    ) -> None:
        self.graph = graph
        self.orders = list(orders)
        self.bits = tuple(sorted(bits))
        self.act_bits = tuple(sorted(act_bits))
        self.max_sparsity = max_sparsity
        self.conventions = conventions
        self.per_kernel = channel_groups == 0
        widest = max(x.out_channels for x in graph.layers)
        self.channel_slots = widest if self.per_kernel else channel_groups
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
        self._sizes: dict[int, np.ndarray] = {}
        # The last few decisions' counts: an episode asks for the same ones several times (the
        # wall's checks, the observation's budget features, the final cost). Matched by
        # identity (tuples of ids); the entries hold their decisions, so that no id is reused
        # while cached.
        self._recent: list[tuple[tuple[LayerDecision, ...], tuple[int, ...], LayerCounts]] = []

    # ---- what a layer may take -----------------------------------------------------------------

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
        bits = bits_from_ranking(self.orders[layer], ranked)
        return LayerDecision(n_pruned, ranked, self.act_for(layer, act), bits)

    def group_sizes(self, kept: int) -> np.ndarray:
        """Kernels in each importance group of a channel decision over ``kept`` kernels.

        Near-equal chunks of the kept kernels in importance order, larger first (one kernel per
        slot, the rest empty, when ``per_kernel``); see ``jpq_env.core.importance.group_sizes``.
        """
        if kept not in self._sizes:
            self._sizes[kept] = group_sizes(kept, self.channel_slots)
        return self._sizes[kept]

    def groups(self, kept: int) -> list[np.ndarray]:
        """Positions (importance order) of the kept kernels in each importance group.

        One group per kernel when ``per_kernel``; else ``channel_slots`` groups of
        ``group_sizes(kept)`` kernels, the most important first (some may be empty).
        """
        if self.per_kernel:
            return [np.array([i]) for i in range(kept)]
        return np.split(np.arange(kept), np.cumsum(self.group_sizes(kept))[:-1])

    def kernel_levels(self, levels: np.ndarray, kept: int) -> np.ndarray:
        """Per kept kernel (importance order), the width level its group's entry gives it."""
        levels = np.asarray(levels, dtype=np.int64)
        if self.per_kernel:
            return levels[:kept]
        return np.repeat(levels, self.group_sizes(kept))

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

    def counts(self, decisions: Sequence[LayerDecision | None]) -> LayerCounts:
        """Per-layer MACs, BOPs and size, undecided layers at their most aggressive."""
        full = self._complete(decisions)
        ids = tuple(map(id, full))
        for _, cached_ids, counts in self._recent:
            if cached_ids == ids:  # the same decision objects: the same counts
                return counts
        fresh = self._recount(full, ids)
        if fresh is None:
            fresh = layer_counts(self.graph, [d.bits for d in full], [d.act_bits for d in full])
        self._recent = [(tuple(full), ids, fresh), *self._recent[:3]]
        return fresh

    def _recount(self, full: list[LayerDecision], ids: tuple[int, ...]) -> LayerCounts | None:
        """Counts from a recent set that differs in widths only (same kernels kept), or None."""
        for cached, cached_ids, counts in self._recent:
            if len(cached) != len(full):
                continue
            diff = [i for i, (a, b) in enumerate(zip(cached_ids, ids, strict=True)) if a != b]
            if all(cached[i].kept == full[i].kept for i in diff):
                return recount(
                    self.graph, counts, {i: (full[i].bits, full[i].act_bits) for i in diff}
                )
        return None

    def cost(self, decisions: Sequence[LayerDecision | None]) -> tuple[Policy, CostReport]:
        """The policy of ``decisions`` (undecided layers at their most aggressive) and its costs.

        From the cached counts, without validating again what the decisions built.
        """
        policy = self.policy(decisions)
        return policy, cost_report(self.graph, policy, self.counts(decisions))

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
        counts = self.counts(decisions)
        return counts.bops, counts.size_bits

    def fits(self, budget: Budget, decisions: Sequence[LayerDecision | None]) -> bool:
        """True if ``decisions`` (undecided layers at their most aggressive) meet ``budget``."""
        return budget.within(*self.ratios(decisions))

    def feasible(self, budget: Budget) -> bool:
        """True if the most aggressive decisions everywhere meet ``budget``."""
        return self.fits(budget, [None] * len(self.graph))
