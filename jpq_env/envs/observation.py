"""The environment's observation: a fixed-length float32 vector, every entry in [0, 1].

Static layer features are the AMC/HAQ kind, normalised over the network once; dynamic entries say
where the episode stands (phase, decisions so far, budget used and what is left).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jpq_env.core.graph import LayerGraph
from jpq_env.envs.budget import Budget
from jpq_env.envs.decisions import DecisionSpace, LayerDecision

__all__ = ["FEATURES", "N_STATIC", "DecisionFeatures", "squash", "static_features"]

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


class DecisionFeatures:
    """The dynamic features that change only with the decisions (entries ``prev_sparsity`` on).

    Both phases of a layer see the same decisions, so the channel phase reuses the layer phase's
    features: the last result is kept with the decisions it was computed for (matched by
    identity; the entry holds them, so no id is reused while cached).

    Args:
        space: The episode's decision space (costs of decisions).
        budget: The budget the ``*_used`` and ``*_left`` entries are fractions of.
    """

    def __init__(self, space: DecisionSpace, budget: Budget) -> None:
        self.space = space
        self.budget = budget
        self._cached: tuple[int, list[LayerDecision | None], np.ndarray] | None = None

    def __call__(self, decisions: Sequence[LayerDecision | None], layer: int) -> np.ndarray:
        """The features for ``layer`` given the decisions so far (None: undecided)."""
        cached = self._cached
        if (
            cached is not None
            and cached[0] == layer
            and len(cached[1]) == len(decisions)
            and all(a is b for a, b in zip(cached[1], decisions, strict=True))
        ):
            return cached[2]
        dyn = np.zeros(len(FEATURES) - N_STATIC - 4)
        widest = self.space.bits[-1]
        prev = decisions[layer - 1] if decisions and layer > 0 else None
        if prev is not None:
            dyn[0] = prev.n_pruned / len(prev.ranked_bits)
            dyn[1] = prev.kept_mean_bits / widest
        decided_so_far = [d for d in decisions if d is not None]
        if decided_so_far:  # decisions so far: mean sparsity and mean kept width
            dyn[2] = float(np.mean([d.n_pruned / len(d.ranked_bits) for d in decided_so_far]))
            dyn[3] = float(np.mean([d.kept_mean_bits for d in decided_so_far])) / widest
        if decisions:
            dyn[4:] = self._budget_features(decisions)
        self._cached = (layer, list(decisions), dyn)
        return dyn

    def _budget_features(self, decisions: Sequence[LayerDecision | None]) -> np.ndarray:
        """BOPs and size used by the decided layers and left after the cheapest rest, squashed."""
        out = np.zeros(4)
        space = self.space
        per_layer = space.layer_costs(decisions)
        decided = np.array([d is not None for d in decisions])
        fixed = (space.fixed_bops, space.fixed_size)  # uncompressed layers: spent
        for j, (key, fp32) in enumerate((("bops", space.fp32_bops), ("size", space.fp32_size))):
            target = self.budget.targets.get(key)
            if target is None:
                continue
            budget_abs = target * fp32
            used = per_layer[j][decided].sum() + fixed[j]
            rest = per_layer[j][~decided].sum()
            out[2 * j] = squash(used / budget_abs)
            out[1 + 2 * j] = squash(max(budget_abs - used - rest, 0.0) / budget_abs)
        return out
