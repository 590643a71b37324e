"""Playing decisions through the environment's public interface.

Agents that think in decisions (a number of pruned kernels, a width level per importance group)
rather than in raw actions turn them into the native ``Box(-1, 1)`` actions here, so that every
agent, learned or not, is driven through the same environment and counted the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from jpq_env import measure
from jpq_env.envs import JPQEnv

__all__ = [
    "LayerChoice",
    "channel_action",
    "fits",
    "jpq",
    "layer_action",
    "least_uniform_pruning",
    "play",
    "uniform_choices",
]


@dataclass(frozen=True)
class LayerChoice:
    """One layer's decisions: kernels to prune and a width level per importance group."""

    n_pruned: int
    levels: tuple[int, ...]


def jpq(env: gym.Env[Any, Any]) -> JPQEnv:
    """The JPQ environment under any wrappers."""
    base = env.unwrapped
    if not isinstance(base, JPQEnv):
        raise TypeError(f"expected a JPQ environment, got {type(base).__name__}")
    return base


def layer_action(
    base: JPQEnv, layer: int, n_pruned: int, act_level: int | None = None
) -> np.ndarray:
    """The native action whose layer decision prunes exactly ``n_pruned`` kernels.

    With activation decisions (v1), ``act_level`` indexes the activation widths (default: the
    widest).
    """
    a = np.zeros(base.action_size, dtype=np.float32)
    k = base.graph.layers[layer].out_channels
    top = max(base.space.max_sparsity, 1e-12)
    a[0] = np.float32(2.0 * min(n_pruned / k / top, 1.0) - 1.0)
    if base.decides_act:
        choices = len(base.space.act_bits)
        a[1] = base.encode_levels([choices - 1 if act_level is None else act_level], choices)[0]
    return a


def channel_action(base: JPQEnv, levels: Sequence[int]) -> np.ndarray:
    """The native action whose channel decision gives importance group ``g`` level ``levels[g]``."""
    a = np.zeros(base.action_size, dtype=np.float32)
    lv = np.asarray(levels, dtype=np.int64)
    start = base.layer_slots
    a[start : start + len(lv)] = base.encode_levels(lv, len(base.bits))
    return a


def play(
    env: gym.Env[Any, Any], choices: Sequence[LayerChoice], seed: int | None = None
) -> dict[str, Any]:
    """Run one episode of ``choices`` (one per layer) and return the final ``info``."""
    base = jpq(env)
    env.reset(seed=seed)
    info: dict[str, Any] = {}
    for layer, choice in enumerate(choices):
        env.step(layer_action(base, layer, choice.n_pruned))
        _, _, terminated, _, info = env.step(channel_action(base, choice.levels))
        if terminated:
            break
    return info


def uniform_choices(
    base: JPQEnv, pruned: Sequence[int], levels: Sequence[int]
) -> list[LayerChoice]:
    """Choices giving every importance group of layer ``i`` the width level ``levels[i]``."""
    return [
        LayerChoice(int(n), (int(lv),) * base.channel_slots)
        for n, lv in zip(pruned, levels, strict=True)
    ]


def fits(base: JPQEnv, pruned: Sequence[int], levels: Sequence[int]) -> tuple[bool, float]:
    """Whether per-layer pruning and width levels meet the budget, by the cost model alone.

    Returns:
        ``(within budget, BOPs as a fraction of FP32)``; no evaluation is spent.
    """
    decisions = []
    for layer, (n, lv) in enumerate(zip(pruned, levels, strict=True)):
        k = base.graph.layers[layer].out_channels
        act = base.space.act_for(layer, base.space.act_bits[-1])
        decisions.append(base.space.decision(layer, int(n), np.full(k - n, base.bits[lv]), act))
    cost = measure(base.graph, base.space.policy(decisions))
    return base.budget.met(cost), cost.bops_ratio


def _uniform_pruning(base: JPQEnv, sparsity: float) -> list[int]:
    return [base.space.n_pruned(i, sparsity) for i in range(base.num_layers)]


def least_uniform_pruning(base: JPQEnv, levels: Sequence[int]) -> list[int] | None:
    """The least magnitude pruning, one sparsity shared by all layers, that fits with ``levels``.

    Returns:
        Kernels pruned per layer, or None if even the largest sparsity does not fit.
    """
    if not fits(base, _uniform_pruning(base, base.space.max_sparsity), levels)[0]:
        return None
    if fits(base, [0] * base.num_layers, levels)[0]:
        return [0] * base.num_layers
    lo, hi = 0.0, base.space.max_sparsity
    for _ in range(30):  # bisection: the cost falls as the shared sparsity grows
        mid = (lo + hi) / 2
        if fits(base, _uniform_pruning(base, mid), levels)[0]:
            hi = mid
        else:
            lo = mid
    return _uniform_pruning(base, hi)
