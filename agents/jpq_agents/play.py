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

from jpq_env.envs import JPQEnv

__all__ = [
    "LayerChoice",
    "channel_action",
    "choices_fit",
    "fits",
    "act_level_near",
    "jpq",
    "layer_action",
    "least_uniform_pruning",
    "level_pairs",
    "play",
    "uniform_choices",
]


@dataclass(frozen=True)
class LayerChoice:
    """One layer's decisions: kernels to prune and a width level per importance group.

    With activation decisions, ``act_level`` indexes the layer's input activation width
    (None: the widest).
    """

    n_pruned: int
    levels: tuple[int, ...]
    act_level: int | None = None


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

    With activation decisions, ``act_level`` indexes the activation widths (default: the
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
        env.step(layer_action(base, layer, choice.n_pruned, choice.act_level))
        _, _, terminated, _, info = env.step(channel_action(base, choice.levels))
        if terminated:
            break
    return info


def _act_levels(base: JPQEnv, act_levels: Sequence[int | None] | None) -> list[int | None]:
    return [None] * base.num_layers if act_levels is None else list(act_levels)


def uniform_choices(
    base: JPQEnv,
    pruned: Sequence[int],
    levels: Sequence[int],
    act_levels: Sequence[int | None] | None = None,
) -> list[LayerChoice]:
    """Choices giving every importance group of layer ``i`` the width level ``levels[i]``.

    ``act_levels[i]`` indexes layer ``i``'s activation width (if decided; None or omitted: the
    widest).
    """
    acts = _act_levels(base, act_levels)
    return [
        LayerChoice(int(n), (int(lv),) * base.channel_slots, None if a is None else int(a))
        for n, lv, a in zip(pruned, levels, acts, strict=True)
    ]


def fits(
    base: JPQEnv,
    pruned: Sequence[int],
    levels: Sequence[int],
    act_levels: Sequence[int | None] | None = None,
) -> tuple[bool, float]:
    """Whether per-layer pruning and width levels meet the budget, by the cost model alone.

    ``act_levels`` as in ``uniform_choices``.

    Returns:
        ``(within budget, BOPs as a fraction of FP32)``; no evaluation is spent.
    """
    decisions = []
    widths = base.space.act_bits
    acts = _act_levels(base, act_levels)
    for layer, (n, lv, a) in enumerate(zip(pruned, levels, acts, strict=True)):
        k = base.graph.layers[layer].out_channels
        act = base.space.act_for(layer, widths[-1] if a is None else widths[a])
        decisions.append(base.space.decision(layer, int(n), np.full(k - n, base.bits[lv]), act))
    bops, size = base.space.ratios(decisions)
    return base.budget.within(bops, size), bops


def _uniform_pruning(base: JPQEnv, sparsity: float) -> list[int]:
    return [base.space.n_pruned(i, sparsity) for i in range(base.num_layers)]


def least_uniform_pruning(
    base: JPQEnv, levels: Sequence[int], act_levels: Sequence[int | None] | None = None
) -> list[int] | None:
    """The least magnitude pruning, one sparsity shared by all layers, that fits with ``levels``.

    ``act_levels`` as in ``uniform_choices``.

    Returns:
        Kernels pruned per layer, or None if even the largest sparsity does not fit.
    """
    if not fits(base, _uniform_pruning(base, base.space.max_sparsity), levels, act_levels)[0]:
        return None
    if fits(base, [0] * base.num_layers, levels, act_levels)[0]:
        return [0] * base.num_layers
    lo, hi = 0.0, base.space.max_sparsity
    for _ in range(30):  # bisection: the cost falls as the shared sparsity grows
        mid = (lo + hi) / 2
        if fits(base, _uniform_pruning(base, mid), levels, act_levels)[0]:
            hi = mid
        else:
            lo = mid
    return _uniform_pruning(base, hi)


def level_pairs(base: JPQEnv) -> list[tuple[int, int | None]]:
    """Every (weight level, activation level) pair, most bits first.

    Weights only: one pair per weight width (activation level None: the env's fixed width); with
    activation decisions the full grid of weight and activation widths (WxAy).
    """
    weights = range(len(base.bits))
    if not base.decides_act:
        return [(w, None) for w in reversed(weights)]
    acts = base.space.act_bits
    grid = sorted(
        ((w, a) for w in weights for a in range(len(acts))),
        key=lambda p: (-base.bits[p[0]] * acts[p[1]], -p[0]),
    )
    return list[tuple[int, int | None]](grid)


def act_level_near(base: JPQEnv, width: int) -> int | None:
    """The activation level whose width is closest to ``width`` (None: not decided)."""
    if not base.decides_act:
        return None
    return int(np.argmin([abs(a - width) for a in base.space.act_bits]))


def choices_fit(base: JPQEnv, choices: Sequence[LayerChoice]) -> bool:
    """Whether per-layer choices (per-group widths included) meet the budget, by the cost model.

    No evaluation is spent; groups split the kept kernels as the environment does.
    """
    decisions = []
    widths = base.space.act_bits
    for layer, c in enumerate(choices):
        kept = base.graph.layers[layer].out_channels - c.n_pruned
        per_kernel = base.space.kernel_levels(np.asarray(c.levels, dtype=np.int64), kept)
        act = base.space.act_for(layer, widths[-1] if c.act_level is None else widths[c.act_level])
        bits = np.asarray(base.bits)[per_kernel]
        decisions.append(base.space.decision(layer, c.n_pruned, bits, act))
    return base.space.fits(base.budget, decisions)
