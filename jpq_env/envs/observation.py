"""The environment's observation: a fixed-length float32 vector, every entry in [0, 1].

Static layer features are the AMC/HAQ kind, normalised over the network once; dynamic entries say
where the episode stands (phase, decisions so far, budget used and what is left).
"""

from __future__ import annotations

import numpy as np

from jpq_env.core.graph import LayerGraph

__all__ = ["FEATURES", "squash", "static_features"]

FEATURES = (
    # static, per layer
    "index",
    "is_linear",
    "is_depthwise",
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "feature_map",
    "params",
    "macs",
    "is_output",
    "is_pinned",
    # dynamic
    "phase",
    "chosen_sparsity",
    "chosen_act_bits",
    "progress",
    "prev_sparsity",
    "prev_weight_bits",
    "mean_sparsity",
    "mean_weight_bits",
    "bops_used",
    "bops_left",
    "size_used",
    "size_left",
)
N_STATIC = 12


def _log_share(values: np.ndarray) -> np.ndarray:
    """log(1 + v) / log(1 + max v): spreads counts that span orders of magnitude over [0, 1]."""
    logs = np.log1p(values.astype(np.float64))
    return logs / max(float(logs.max()), 1e-12)


def static_features(graph: LayerGraph, pinned: set[int] | frozenset[int]) -> np.ndarray:
    """The static part of the observation for every layer, shape ``(layers, N_STATIC)``."""
    layers = graph.layers
    n = len(layers)
    col = {
        "index": np.arange(n) / max(n - 1, 1),
        "is_linear": [x.kind == "linear" for x in layers],
        "is_depthwise": [x.depthwise for x in layers],
        "in_channels": _log_share(np.array([x.in_channels for x in layers])),
        "out_channels": _log_share(np.array([x.out_channels for x in layers])),
        "kernel_size": _log_share(np.array([x.kernel[0] * x.kernel[1] for x in layers])),
        "stride": _log_share(np.array([max(x.stride) for x in layers])),
        "feature_map": _log_share(np.array([x.out_hw[0] * x.out_hw[1] for x in layers])),
        "params": _log_share(np.array([x.params for x in layers])),
        "macs": _log_share(np.array([x.macs for x in layers])),
        "is_output": [x.index in graph.output_layers for x in layers],
        "is_pinned": [x.index in pinned for x in layers],
    }
    return np.stack([np.asarray(col[f], dtype=np.float64) for f in FEATURES[:N_STATIC]], axis=1)


def squash(x: float) -> float:
    """Map a non-negative ratio to [0, 1): x / (1 + x) (1 = on budget maps to 0.5)."""
    x = max(x, 0.0)
    return x / (1.0 + x)
