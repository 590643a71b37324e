"""The Pareto plot (``jpq_agents.plots``): the front against a brute-force dominance check, the
budget's fractions, and what the figure shows.
"""

import numpy as np
import pytest

from jpq_agents.plots import one_in, pareto_figure, pareto_front


def test_pareto_front_matches_a_brute_force_dominance_check():
    rng = np.random.default_rng(0)
    points = [
        {"bops_ratio": float(b), "accuracy": float(a)}
        for b, a in zip(rng.choice(40, 60) / 40 + 0.01, rng.choice(30, 60) / 30, strict=True)
    ]
    front = pareto_front(points)
    # independent: a point is on the front iff no other has <= BOPs and >= accuracy, one strictly
    expected = {
        (p["bops_ratio"], p["accuracy"])
        for p in points
        if not any(
            q["bops_ratio"] <= p["bops_ratio"]
            and q["accuracy"] >= p["accuracy"]
            and (q["bops_ratio"], q["accuracy"]) != (p["bops_ratio"], p["accuracy"])
            for q in points
        )
    }
    assert {(p["bops_ratio"], p["accuracy"]) for p in front} == expected
    assert [p["bops_ratio"] for p in front] == sorted(p["bops_ratio"] for p in front)


@pytest.mark.parametrize(
    ("ratio", "text"), [(1 / 128, "1/128"), (1 / 64, "1/64"), (0.5, "1/2"), (1.0, "1"), (0, "0")]
)
def test_fractions_are_written_as_one_in_n(ratio, text):
    assert one_in(ratio) == text


def _record(episode, bops, acc, met=True, **extra):
    return {
        "episode": episode,
        "bops_ratio": bops,
        "accuracy": acc,
        "accuracy_fp32": 0.99,
        "budget_met": met,
        **extra,
    }


def test_pareto_figure_has_front_colour_bar_fp32_line_budget_title_and_names_a_hidden_point():
    records = [
        _record(0, 1 / 256, 0.80),
        _record(1, 1 / 150, 0.90),
        _record(2, 1 / 200, 0.85),
        _record(3, 1 / 100, 0.95, met=False),
        _record(4, 1 / 140, 0.70, proxy_complete=False),
    ]
    reference = [
        {"label": "two-stage W4A4 (sparsity 0.10)", "bops_ratio": 1 / 150, "accuracy": 0.90},
        {"label": "two-stage W2A2 (sparsity 0.00)", "bops_ratio": 1 / 300, "accuracy": 0.50},
    ]
    fig = pareto_figure(records, reference, 1 / 128, "two-level on digits (JPQWeightsActs-v0)")
    ax, bar = fig.axes  # the plot and its colour bar
    assert bar.get_ylabel() == "episode"
    assert "budget 1/128 of FP32 BOPs" in ax.get_title() and "digits" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Pareto front of the evaluated policies" in labels
    assert "FP32 (99.00%)" in labels and "budget 1/128" in labels
    (star,) = [t for t in labels if t.startswith("best within budget")]
    assert star == "best within budget (90.00%, episode 1): the same point as two-stage W4A4"
    # the front is the step line through the fully scored points (the raced one is left out)
    (front,) = [line for line in ax.get_lines() if line.get_label().startswith("Pareto")]
    assert list(front.get_ydata()) == [0.80, 0.85, 0.90, 0.95]
    fig.canvas.draw()
    ticks = {t.get_text() for t in ax.get_xticklabels() if t.get_text()}
    assert ticks and all(t.startswith("1/") for t in ticks), ticks
    assert "1/128" in ticks or "1/256" in ticks
