"""Plots of a search: accuracy against BOPs of every evaluated policy, reference points marked."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from jpq_env.atomic import atomic_file

__all__ = ["pareto_plot"]


def pareto_plot(
    records: Sequence[dict[str, Any]],
    reference: Sequence[dict[str, Any]],
    budget: float | None,
    path: str | os.PathLike[str],
    title: str = "",
) -> None:
    """Scatter proxy accuracy against BOPs (fraction of FP32, log scale) and save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    inside = [r for r in records if r["budget_met"]]
    outside = [r for r in records if not r["budget_met"]]
    if outside:
        ax.scatter(
            [r["bops_ratio"] for r in outside],
            [r["accuracy"] for r in outside],
            s=10,
            c="lightgrey",
            label="over budget",
        )
    if inside:
        ax.scatter(
            [r["bops_ratio"] for r in inside],
            [r["accuracy"] for r in inside],
            s=12,
            c=[r["episode"] for r in inside],
            cmap="viridis",
            label="evaluated (colour: episode)",
        )
        best = max(inside, key=lambda r: r["accuracy"])
        ax.scatter(
            [best["bops_ratio"]],
            [best["accuracy"]],
            marker="*",
            s=220,
            c="red",
            label="best within budget",
        )
    # Labels alternate below and above along the BOPs axis: neighbours (W5A5, W6A6) stay legible.
    for i, point in enumerate(sorted(reference, key=lambda p: p["bops_ratio"])):
        ax.scatter(
            [point["bops_ratio"]],
            [point["accuracy"]],
            marker="s",
            s=40,
            facecolors="none",
            edgecolors="black",
        )
        ax.annotate(
            point["label"],
            (point["bops_ratio"], point["accuracy"]),
            fontsize=6,
            xytext=(4, -8 if i % 2 == 0 else 4),
            textcoords="offset points",
        )
    if budget is not None:
        ax.axvline(
            budget, color="red", linestyle="--", linewidth=1, label=f"budget 1/{1 / budget:.0f}"
        )
    if records:
        ax.set_xscale("log")
    ax.set_xlabel("BOPs (fraction of FP32)")
    ax.set_ylabel("proxy accuracy (held-out split)")
    ax.set_title(f"{title}: every evaluated policy; squares: two-stage baselines")
    ax.legend(fontsize=7, loc="best")  # away from the points (W8A8 sits at the lower right)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
