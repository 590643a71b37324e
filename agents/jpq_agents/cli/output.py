"""Text the ``jpq`` commands print: aligned tables and fractions of FP32 as ``1/N``.

Shared by ``jpq report``, ``jpq search`` and ``jpq evaluate`` so that their tables look alike.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["one_in", "table"]


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``rows`` under ``header`` as right-aligned columns, a dashed line under the header."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def one_in(ratio: float) -> str:
    """``ratio`` as "1/N" (``0`` when nothing is left: every kernel pruned)."""
    return f"1/{1 / ratio:.1f}" if ratio > 0 else "0"
