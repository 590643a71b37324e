"""The cost model: MACs, BOPs and model size of a policy, per layer and in total.

Definitions (METHOD.md section 2), all per sample:

- **MACs** of a conv: ``C_out * (C_in / groups) * kh * kw * H_out * W_out``; of a linear layer:
  ``in * out``. Pruning removes a layer's output kernels *and* the matching input channels of its
  consumers, so only pairs of a live kernel and a live input channel count (see
  ``LayerGraph.liveness``: residual adds take the union of their producers' live channels).
- **BOPs** of a layer: effective MACs x weight bits x input-activation bits, summed per kernel
  since a layer may mix widths. The FP32 reference is ``MACs x 32 x 32``, so W8A8 is 1/16.
- **Size**: the bits of the kept weights of the compressible layers (biases, BatchNorm parameters
  and per-channel scales are not counted: they are a fixed, small overhead).

Counting conventions (network input at 8 bits, first/last layers pinned) are applied to the
policy first by ``Conventions.apply`` in ``jpq_env.policy``; this module counts a policy literally.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jpq_env.graph import LayerGraph, Liveness
from jpq_env.policy import Policy
from jpq_env.quant import FULL_PRECISION

__all__ = ["CostReport", "LayerCost", "measure"]

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
        layers: Per-layer costs, in execution order.
        macs: Total effective MACs.
        bops: Total BOPs.
        size_bits: Total bits of kept weights.
        macs_fp32: MACs of the dense network.
        bops_fp32: BOPs of the dense FP32 network (MACs x 32 x 32).
        size_bits_fp32: Weights of the dense network at 32 bits.
    """

    layers: tuple[LayerCost, ...]
    macs: int
    bops: int
    size_bits: int
    macs_fp32: int
    bops_fp32: int
    size_bits_fp32: int

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
            raise ValueError(f"unknown size unit '{unit}': use 'MB' or 'MiB'")
        return self.size_bits / 8 / (1e6 if unit == "MB" else 2**20)


def measure(graph: LayerGraph, policy: Policy, liveness: Liveness | None = None) -> CostReport:
    """Count MACs, BOPs and size of ``policy`` on ``graph``.

    Args:
        graph: The model's layer graph.
        policy: A policy made for this graph (validated by the caller or here).
        liveness: The policy's propagated liveness, if the caller already computed it.

    Returns:
        Per-layer and total costs with the FP32 references.
    """
    policy.validate(graph)
    live = liveness if liveness is not None else graph.liveness(policy.kept())
    layers = []
    for info, lp in zip(graph.layers, policy.layers, strict=True):
        alive = live.alive_out[info.index]
        inputs = live.inputs_per_kernel(info)
        conn = np.where(alive, inputs, 0)  # live (kernel, input channel) pairs per kernel
        macs = int(conn.sum()) * info.macs_per_connection
        bit_conn = int((conn * lp.bits).sum())
        layers.append(
            LayerCost(
                name=info.name,
                macs=macs,
                bops=bit_conn * info.macs_per_connection * int(lp.act_bits),
                size_bits=bit_conn * info.kernel[0] * info.kernel[1],
                kept_out=int(alive.sum()),
                kept_in=int(live.alive_in[info.index].sum()),
                act_bits=int(lp.act_bits),
                mean_w_bits=float(lp.bits[alive].mean()) if alive.any() else 0.0,
            )
        )
    macs_fp32 = graph.total_macs
    return CostReport(
        layers=tuple(layers),
        macs=sum(c.macs for c in layers),
        bops=sum(c.bops for c in layers),
        size_bits=sum(c.size_bits for c in layers),
        macs_fp32=macs_fp32,
        bops_fp32=macs_fp32 * _FP32_PAIR,
        size_bits_fp32=sum(x.weight_params for x in graph.layers) * FULL_PRECISION,
    )
