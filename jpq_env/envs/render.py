"""The ``rgb_array`` frame of a JPQ episode: one bar per layer, its height the layer's bits.

The frame is a small ``uint8`` image (``HEIGHT`` rows, ``BAR + GAP`` columns per layer), white
background. A decided layer's bar is split in two columns: the left (blue) one rises with the
mean weight width of its kept kernels, the right (orange) one with its input activation width,
both scaled to ``max_bits``; a thin grey strip at the bottom of the bar shows the fraction of the
layer's kernels that was pruned. An undecided layer is a light-grey full-height bar, so the
frame's shape stays the same over an episode (as video recorders expect).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jpq_env.core.costs import CostReport
from jpq_env.core.graph import LayerGraph
from jpq_env.envs.decisions import LayerDecision
from jpq_env.errors import ArgumentError

__all__ = ["BAR", "GAP", "HEIGHT", "ansi_table", "bits_frame"]

HEIGHT = 64
BAR = 8
GAP = 2
_PRUNE_ROWS = 4

_WHITE = (255, 255, 255)
_UNDECIDED = (220, 220, 220)
_WEIGHTS = (31, 119, 180)
_ACTS = (255, 127, 14)
_PRUNED = (90, 90, 90)


def bits_frame(layers: Sequence[tuple[float, int, float] | None], max_bits: int) -> np.ndarray:
    """An RGB image of per-layer decisions.

    Args:
        layers: One entry per layer: ``None`` while undecided, else ``(mean weight bits of the
            kept kernels, input activation bits, pruned fraction)``.
        max_bits: The width a full-height bar stands for (at least 1).

    Returns:
        An array of shape ``(HEIGHT, len(layers) * (BAR + GAP) + GAP, 3)`` and dtype ``uint8``.
    """
    if max_bits < 1:
        raise ArgumentError(f"max_bits must be at least 1, got {max_bits}")
    width = len(layers) * (BAR + GAP) + GAP
    frame = np.empty((HEIGHT, width, 3), dtype=np.uint8)
    frame[:] = _WHITE
    top = HEIGHT - _PRUNE_ROWS  # rows above the pruning strip
    half = BAR // 2
    for i, entry in enumerate(layers):
        x = GAP + i * (BAR + GAP)
        if entry is None:
            frame[:, x : x + BAR] = _UNDECIDED
            continue
        w_bits, a_bits, pruned = entry
        for x0, bits, colour in ((x, w_bits, _WEIGHTS), (x + half, a_bits, _ACTS)):
            rows = round(top * min(max(bits / max_bits, 0.0), 1.0))
            frame[top - rows : top, x0 : x0 + half] = colour
        cols = round(BAR * min(max(pruned, 0.0), 1.0))
        frame[top:, x : x + cols] = _PRUNED
    return frame


def ansi_table(
    graph: LayerGraph,
    decided: Sequence[LayerDecision | None],
    cost: CostReport,
    last: CostReport | None = None,
) -> str:
    """The ``ansi`` render: one line per layer (kernels, sparsity, widths, BOPs), then totals.

    Args:
        graph: The layer graph.
        decided: Per layer, its decision (None: not decided yet, shown as dashes).
        cost: The costs of the decisions (undecided layers at their most aggressive).
        last: The finished episode's costs, for the closing line (None: no closing line).
    """
    lines = [
        f"{'layer':<24} {'kernels':>8} {'sparsity':>8} {'w bits':>7} {'a bits':>6} {'BOPs':>14}"
    ]
    for info, d, c in zip(graph.layers, decided, cost.layers, strict=True):
        if d is None:
            lines.append(
                f"{info.name:<24} {info.out_channels:>8} {'-':>8} {'-':>7} {'-':>6} {'-':>14}"
            )
            continue
        lines.append(
            f"{info.name:<24} {info.out_channels:>8} {d.n_pruned / info.out_channels:>8.2f} "
            f"{c.mean_w_bits:>7.2f} {d.act_bits:>6} {c.bops:>14,}"
        )
    if last is not None:
        lines.append(f"BOPs {last.bops_ratio:.5f} of FP32, size {last.size_ratio:.4f} of FP32")
    return "\n".join(lines)
