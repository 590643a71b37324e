"""The cost model: MACs, BOPs and model size of a policy, per layer and in total.

Definitions, all per sample (the tests check each against an independent count):

- **MACs** of a conv: ``C_out * (C_in / groups) * kh * kw * H_out * W_out``; of a linear layer:
  ``in * out``. Pruning removes a layer's output kernels *and* the matching input channels of its
  consumers, so only pairs of a live kernel and a live input channel count (see
  ``LayerGraph.liveness``: a residual add takes the union of its operands' live channels, so a
  channel after an add is removed only where every operand removes it). **A kernel whose live
  inputs are all pruned is removed too** and counts nothing, whatever its layer: a depthwise
  kernel whose input channel is removed, a grouped conv's kernel whose group lost every input,
  every kernel after a fully pruned layer. Its constant output (the bias, through BatchNorm and
  the activation) is dropped, not folded into its consumers' biases: the compressed view zeroes
  it (``jpq_env.core.compress``), so counting and simulation agree with the kernel removed.
- **BOPs** of a layer: effective MACs x weight bits x input-activation bits, summed per kernel
  since a layer may mix widths. The FP32 reference is ``MACs x 32 x 32``, so W8A8 is 1/16.
- **Size**: the bits of the kept weights of the compressible layers (biases, BatchNorm parameters
  and per-channel scales are not counted: they are a fixed, small overhead).
- **Layers the graph does not compress** (``LayerGraph.uncompressed``: a ``ConvTranspose2d``, a
  ``Conv1d``, a module's functional ``F.conv2d``, a ``LayerNorm`` ...) are counted as the
  compressed model runs them, at full precision: MACs x 32-bit weights x 32-bit inputs in BOPs
  (whatever feeds them: the compressed view fake-quantizes only the inputs of compressible layers,
  so an uncompressed layer computes in FP32 even on the network input), their weights (biases
  excluded) at 32 bits in the size. That fixed cost is in every policy's totals and in the FP32
  references, so a budget is a fraction of the *whole* network: a model whose uncompressed layers
  hold 60% of the MACs cannot reach 1/64 of FP32 BOPs, and the environment says so. (Papers that
  count unsearched layers at 8 bits also run them at 8 bits; here they run in FP32, so they are
  counted in FP32: counting and simulation never disagree.) Per-layer reports list the
  compressible layers; ``CostReport.uncompressed_*`` hold the fixed part.

Counting conventions (network input at 8 bits, first/last layers pinned) are applied to the
policy first by ``Conventions.apply`` in ``jpq_env.core.policy``; this module counts a policy
literally.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from jpq_env.core.graph import LayerGraph, LayerInfo, Liveness
from jpq_env.core.policy import Policy
from jpq_env.core.quant import FULL_PRECISION
from jpq_env.errors import ArgumentError

__all__ = [
    "CostReport",
    "LayerCost",
    "LayerCounts",
    "bit_connections",
    "cost_report",
    "layer_counts",
    "measure",
    "recount",
    "totals",
    "uncompressed_costs",
]

_FP32_PAIR = FULL_PRECISION * FULL_PRECISION


@dataclass(frozen=True)
class LayerCost:
    """Costs of one layer under a policy.

    Attributes:
        name: Module name.
        macs: Effective MACs after pruning (per sample).
        bops: Bit operations (per sample).
        size_bits: Bits of the kept weights.
        kept_out: Output kernels that survive.
        kept_in: Input channels (or features) that survive.
        act_bits: Input activation bits.
        mean_w_bits: Mean weight bits over the kept kernels (0 if none survive).
    """

    name: str
    macs: int
    bops: int
    size_bits: int
    kept_out: int
    kept_in: int
    act_bits: int
    mean_w_bits: float


@dataclass(frozen=True)
class CostReport:
    """Costs of a whole network under a policy, with the FP32 references.

    Attributes:
        layers: Per-layer costs of the compressible layers, in execution order.
        macs: Total effective MACs (uncompressed layers included).
        bops: Total BOPs (uncompressed layers included).
        size_bits: Total bits of kept weights (uncompressed layers included).
        macs_fp32: MACs of the dense network.
        bops_fp32: BOPs of the dense FP32 network (MACs x 32 x 32).
        size_bits_fp32: Weights of the dense network at 32 bits.
        uncompressed_macs: MACs of the layers the graph does not compress (fixed).
        uncompressed_bops: Their BOPs at 32-bit weights and inputs (fixed).
        uncompressed_size_bits: Their weights at 32 bits (fixed).
    """

    layers: tuple[LayerCost, ...]
    macs: int
    bops: int
    size_bits: int
    macs_fp32: int
    bops_fp32: int
    size_bits_fp32: int
    uncompressed_macs: int = 0
    uncompressed_bops: int = 0
    uncompressed_size_bits: int = 0

    @property
    def bops_ratio(self) -> float:
        """BOPs as a fraction of FP32 BOPs."""
        return self.bops / self.bops_fp32

    @property
    def size_ratio(self) -> float:
        """Size as a fraction of the FP32 size."""
        return self.size_bits / self.size_bits_fp32

    def size_bytes(self, unit: str = "MB") -> float:
        """Size in megabytes: ``"MB"`` is 10**6 bytes, ``"MiB"`` is 2**20 bytes."""
        if unit not in ("MB", "MiB"):
            raise ArgumentError(f"unknown size unit '{unit}': use 'MB' or 'MiB'")
        return self.size_bits / 8 / (1e6 if unit == "MB" else 2**20)


def _connections(info: LayerInfo, bits: np.ndarray, live: Liveness) -> tuple[int, int]:
    """One layer's live (kernel, input channel) pairs, and the same pairs weighted by bits."""
    alive, inputs = live.alive_out[info.index], live.inputs_per_kernel(info)
    if isinstance(inputs, int):  # ungrouped: every kernel reads the same live inputs
        return int(np.count_nonzero(alive)) * inputs, int(bits[alive].sum()) * inputs
    conn = np.where(alive, inputs, 0)
    return int(conn.sum()), int((conn * bits).sum())


def bit_connections(
    graph: LayerGraph, bits: Sequence[np.ndarray], live: Liveness
) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, live (kernel, input channel) pairs and the same pairs weighted by weight bits.

    The building block of every count: MACs = pairs x kh x kw x H_out x W_out, BOPs = weighted
    pairs x kh x kw x H_out x W_out x activation bits, size = weighted pairs x kh x kw.
    """
    if [len(b) for b in bits] != graph.kernel_counts:
        raise ValueError(
            f"bits has {[len(b) for b in bits]} kernels per layer, the graph {graph.kernel_counts}"
        )
    return _bit_connections(graph, bits, live)


def _bit_connections(
    graph: LayerGraph, bits: Sequence[np.ndarray], live: Liveness
) -> tuple[np.ndarray, np.ndarray]:
    """``bit_connections`` for widths whose per-layer lengths are known to match the graph."""
    kernels, group_starts, per_group = graph.segments
    alive, alive_in = live.flat
    # Live inputs of each group, given to each of its kernels; a dead kernel has no connections.
    inputs = np.repeat(np.add.reduceat(alive_in, group_starts, dtype=np.int64), per_group)
    conn = np.where(alive, inputs, 0)
    weighted = conn * np.concatenate(bits).astype(np.int64, copy=False)
    return np.add.reduceat(conn, kernels), np.add.reduceat(weighted, kernels)


def uncompressed_costs(graph: LayerGraph) -> tuple[int, int, int]:
    """MACs, BOPs and size in bits of the layers the graph does not compress (fixed, FP32).

    Layers whose MACs cannot be counted (``UncompressedLayer.macs`` None) add their weights only.
    """
    macs = graph.uncompressed_macs
    size = sum(x.weight_params for x in graph.uncompressed) * FULL_PRECISION
    return macs, macs * _FP32_PAIR, size


@dataclass(frozen=True)
class LayerCounts:
    """Per-layer counts of the compressible layers (int64 arrays in execution order).

    The one place where MACs, BOPs and size are computed from live connections; ``measure``,
    ``totals`` and the environment's decision space all read them from here.

    Attributes:
        live: The kernels and channels that survive (``LayerGraph.liveness``).
        macs: Effective MACs per layer (per sample).
        bops: MACs x weight bits x input-activation bits, summed per kernel.
        size_bits: Bits of the kept weights.
    """

    live: Liveness
    macs: np.ndarray
    bops: np.ndarray
    size_bits: np.ndarray


def layer_counts(
    graph: LayerGraph,
    bits: Sequence[np.ndarray],
    act_bits: Sequence[int],
    live: Liveness | None = None,
) -> LayerCounts:
    """MACs, BOPs and size of every compressible layer (the formula of the module docstring).

    Args:
        graph: The layer graph.
        bits: Per layer, the weight width of each output kernel (0 = pruned), channel order.
        act_bits: Per layer, the input activation width.
        live: The liveness of ``bits`` if already known (computed from ``bits > 0`` otherwise).
    """
    if live is None:  # the liveness checks the masks' lengths, which are the widths'
        live = graph.liveness([b > 0 for b in bits], batchnorms=False)
        pairs, weighted = _bit_connections(graph, bits, live)
    else:
        pairs, weighted = bit_connections(graph, bits, live)
    acts = np.asarray(act_bits, dtype=np.int64)
    return LayerCounts(
        live,
        pairs * graph.connection_macs,
        weighted * graph.connection_macs * acts,
        weighted * graph.kernel_areas,
    )


def recount(
    graph: LayerGraph, counts: LayerCounts, changed: Mapping[int, tuple[np.ndarray, int]]
) -> LayerCounts:
    """``counts`` after some layers changed widths but kept the same kernels (same liveness).

    Only the changed layers are counted again (the environment's budget checks try one layer's
    widths at a time: a full count per trial was most of a step's time).

    Args:
        graph: The layer graph.
        counts: Counts of the decisions before the change.
        changed: Per changed layer index, its new widths (channel order; the same kernels at 0
            bits as before) and input activation width.
    """
    bops, size = counts.bops.copy(), counts.size_bits.copy()
    for i, (bits, act) in changed.items():
        _, weighted = _connections(graph.layers[i], bits, counts.live)
        bops[i] = weighted * int(graph.connection_macs[i]) * int(act)
        size[i] = weighted * int(graph.kernel_areas[i])
    return LayerCounts(counts.live, counts.macs, bops, size)


def totals(
    graph: LayerGraph, bits: Sequence[np.ndarray], act_bits: Sequence[int]
) -> tuple[int, int]:
    """Total BOPs and size in bits, without validation or a per-layer report (the fast path).

    Uncompressed layers are included at their fixed FP32 cost (``uncompressed_costs``).

    Args:
        graph: The layer graph.
        bits: Per layer, the weight width of each output kernel (0 = pruned), channel order.
        act_bits: Per layer, the input activation width.
    """
    counts = layer_counts(graph, bits, act_bits)
    _, fixed_bops, fixed_size = uncompressed_costs(graph)
    return int(counts.bops.sum()) + fixed_bops, int(counts.size_bits.sum()) + fixed_size


def measure(graph: LayerGraph, policy: Policy) -> CostReport:
    """Count MACs, BOPs and size of ``policy`` on ``graph``.

    Args:
        graph: The model's layer graph.
        policy: A policy made for this graph (validated here).

    Returns:
        Per-layer and total costs with the FP32 references.
    """
    policy.validate(graph)
    counts = layer_counts(
        graph, [lp.bits for lp in policy.layers], [lp.act_bits for lp in policy.layers]
    )
    return cost_report(graph, policy, counts)


def cost_report(graph: LayerGraph, policy: Policy, counts: LayerCounts) -> CostReport:
    """The ``CostReport`` of ``policy`` from its ``layer_counts`` (no validation: ``measure``).

    For callers that built the policy themselves and already hold its counts (the environment's
    decision space), so an episode's costs are computed once.
    """
    live = counts.live
    layers = []
    for info, lp in zip(graph.layers, policy.layers, strict=True):
        i = info.index
        alive = live.alive_out[i]
        layers.append(
            LayerCost(
                name=info.name,
                macs=int(counts.macs[i]),
                bops=int(counts.bops[i]),
                size_bits=int(counts.size_bits[i]),
                kept_out=int(alive.sum()),
                kept_in=int(live.alive_in[i].sum()),
                act_bits=lp.act_bits,
                mean_w_bits=float(lp.bits[alive].mean()) if alive.any() else 0.0,
            )
        )
    macs_fp32 = graph.total_macs
    fixed_macs, fixed_bops, fixed_size = uncompressed_costs(graph)
    return CostReport(
        layers=tuple(layers),
        macs=sum(c.macs for c in layers) + fixed_macs,
        bops=sum(c.bops for c in layers) + fixed_bops,
        size_bits=sum(c.size_bits for c in layers) + fixed_size,
        macs_fp32=macs_fp32,
        bops_fp32=macs_fp32 * _FP32_PAIR,
        size_bits_fp32=graph.weight_params * FULL_PRECISION,
        uncompressed_macs=fixed_macs,
        uncompressed_bops=fixed_bops,
        uncompressed_size_bits=fixed_size,
    )
