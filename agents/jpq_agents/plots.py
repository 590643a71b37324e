"""Plots of a search: accuracy against BOPs of every evaluated policy, reference points marked."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jpq_env.atomic import atomic_file

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with this module
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["one_in", "pareto_figure", "pareto_front", "pareto_plot"]


def one_in(ratio: float) -> str:
    """A fraction of FP32 as the project writes it everywhere: ``1/128`` (``1`` for FP32)."""
    if not ratio > 0:
        return "0"
    inverse = 1 / ratio
    return (
        "1" if round(inverse) == 1 else f"1/{inverse:.0f}" if inverse >= 10 else f"1/{inverse:.2g}"
    )


def _one_in_ticks(low: float, high: float) -> list[float]:
    """Ticks 1/N over [low, high] (N = 2^k and 1.5 x 2^k): at least two on any range."""
    ticks = [1 / (m * 2**k) for k in range(0, 24) for m in (1, 1.5)]
    inside = sorted(t for t in ticks if low / 1.05 <= t <= high * 1.05)
    if len(inside) > 8:  # a wide range: powers of two only
        inside = [t for t in inside if (1 / t) == 2 ** round(math.log2(1 / t))]
    return inside or [low, high]


def pareto_front(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both BOPs and accuracy, by increasing BOPs.

    A point is on the front when every point with at most its BOPs has lower accuracy (ties in
    BOPs keep the most accurate one).
    """
    front: list[dict[str, Any]] = []
    for p in sorted(points, key=lambda r: (r["bops_ratio"], -r["accuracy"])):
        if not front or p["accuracy"] > front[-1]["accuracy"]:
            front.append(p)
    return front


def pareto_plot(
    records: Sequence[dict[str, Any]],
    reference: Sequence[dict[str, Any]],
    budget: float | None,
    path: str | os.PathLike[str],
    title: str = "",
) -> None:
    """Save ``pareto_figure`` as a PNG (written atomically)."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(records, reference, budget, title)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def pareto_figure(
    records: Sequence[dict[str, Any]],
    reference: Sequence[dict[str, Any]],
    budget: float | None,
    title: str = "",
) -> Any:
    """Scatter proxy accuracy against BOPs (fraction of FP32, log scale): a matplotlib Figure.

    Drawn: every fully scored policy coloured by its episode (colour bar), raced ones (scored on
    part of the held-out split, so their accuracy is not comparable) as grey crosses, the
    Pareto front of the scored ones, the two-stage reference points, the FP32 model's accuracy,
    the budget and the best policy within it (its legend entry names the reference point it
    coincides with, which the star then hides).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.6), dpi=120)
    # Drawn in this order: it is the order of the legend's entries.
    scored = [r for r in records if r.get("proxy_complete", True)]
    inside = [r for r in scored if r["budget_met"]]
    _draw_evaluated(fig, ax, records)
    if scored:
        _draw_front(ax, scored)
    _draw_reference(ax, reference)
    if inside:
        _draw_best(ax, max(inside, key=lambda r: r["accuracy"]), reference)
    _draw_fp32_and_budget(ax, records, budget)
    _format_axes(ax, records, reference, budget, title)
    fig.tight_layout()
    return fig


def _draw_evaluated(fig: Figure, ax: Axes, records: Sequence[dict[str, Any]]) -> None:
    """Every evaluated policy: raced ones as crosses, over budget in grey, the rest by episode."""
    scored = [r for r in records if r.get("proxy_complete", True)]
    raced = [r for r in records if not r.get("proxy_complete", True)]
    inside = [r for r in scored if r["budget_met"]]
    outside = [r for r in scored if not r["budget_met"]]
    if raced:
        ax.scatter(
            [r["bops_ratio"] for r in raced],
            [r["accuracy"] for r in raced],
            s=10,
            marker="x",
            c="silver",
            linewidths=0.7,
            label="raced (stopped early: a partial score)",
        )
    if outside:
        ax.scatter(
            [r["bops_ratio"] for r in outside],
            [r["accuracy"] for r in outside],
            s=10,
            c="lightgrey",
            label="over budget",
        )
    if inside:
        dots = ax.scatter(
            [r["bops_ratio"] for r in inside],
            [r["accuracy"] for r in inside],
            s=12,
            c=[r["episode"] for r in inside],
            cmap="viridis",
            vmin=0,
            vmax=max(r["episode"] for r in records),
            label="evaluated within budget",
        )
        fig.colorbar(dots, ax=ax, pad=0.01).set_label("episode")


def _draw_front(ax: Axes, scored: Sequence[dict[str, Any]]) -> None:
    """The Pareto front of the fully scored policies, as a step line."""
    front = pareto_front(scored)
    ax.step(
        [p["bops_ratio"] for p in front],
        [p["accuracy"] for p in front],
        where="post",
        color="tab:blue",
        linewidth=1,
        alpha=0.7,
        label="Pareto front of the evaluated policies",
    )


def _draw_reference(ax: Axes, reference: Sequence[dict[str, Any]]) -> None:
    """The two-stage reference points as open squares, each annotated with its short label."""
    # Labels alternate below and above along the BOPs axis: neighbours (W5A5, W6A6) stay legible.
    for i, point in enumerate(sorted(reference, key=lambda p: p["bops_ratio"])):
        ax.scatter(
            [point["bops_ratio"]],
            [point["accuracy"]],
            marker="s",
            s=40,
            facecolors="none",
            edgecolors="black",
            label="two-stage (prune, then quantize)" if i == 0 else None,
        )
        ax.annotate(
            point["label"].split(" (")[0].replace("two-stage ", ""),
            (point["bops_ratio"], point["accuracy"]),
            fontsize=6,
            xytext=(4, -8 if i % 2 == 0 else 4),
            textcoords="offset points",
        )


def _draw_best(ax: Axes, best: dict[str, Any], reference: Sequence[dict[str, Any]]) -> None:
    """The best policy within budget as a red star.

    Its legend entry names the reference point it coincides with, since the star hides it.
    """
    hidden = [
        p["label"].split(" (")[0]
        for p in reference
        if math.isclose(p["bops_ratio"], best["bops_ratio"], rel_tol=1e-9)
        and p["accuracy"] == best["accuracy"]
    ]
    ax.scatter(
        [best["bops_ratio"]],
        [best["accuracy"]],
        marker="*",
        s=220,
        c="red",
        zorder=3,
        label=f"best within budget ({best['accuracy']:.2%}, episode {best['episode']})"
        + (f": the same point as {hidden[0]}" if hidden else ""),
    )


def _draw_fp32_and_budget(
    ax: Axes, records: Sequence[dict[str, Any]], budget: float | None
) -> None:
    """The FP32 model's accuracy (a horizontal line) and the BOPs budget (a vertical one)."""
    fp32 = next((r["accuracy_fp32"] for r in records if "accuracy_fp32" in r), None)
    if fp32 is not None:
        ax.axhline(fp32, color="grey", linestyle=":", linewidth=1, label=f"FP32 ({fp32:.2%})")
    if budget is not None:
        ax.axvline(
            budget, color="red", linestyle="--", linewidth=1, label=f"budget {one_in(budget)}"
        )


def _format_axes(
    ax: Axes,
    records: Sequence[dict[str, Any]],
    reference: Sequence[dict[str, Any]],
    budget: float | None,
    title: str,
) -> None:
    """Log BOPs axis with 1/N ticks, axis labels, the title, the legend and the grid."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    xs = [r["bops_ratio"] for r in [*records, *reference] if r["bops_ratio"] > 0]
    if xs:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(_one_in_ticks(min(xs), max(xs))))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: one_in(x)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("BOPs (fraction of FP32, log scale)")
    ax.set_ylabel("proxy accuracy (held-out split)")
    where = f", budget {one_in(budget)} of FP32 BOPs" if budget is not None else ""
    ax.set_title(f"{title}{where}: {len(records)} evaluated policies", fontsize=9)
    # Below the axes: inside, it hid points wherever it went (the budget line gathers them).
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    ax.grid(True, alpha=0.3)
