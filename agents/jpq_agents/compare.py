"""``jpq compare``: runs grouped by agent, seeds aggregated, learning curves and a table.

A search's learning curve is its best-so-far held-out score (budget met, scored in full) against
the evaluations it has spent. Racing makes evaluations unequal in cost (a raced one scores part of
the held-out split), so the curves are drawn against the held-out images scored as well: a
record's ``proxy_images`` where it has one, else the run's complete evaluation
(``summary.json``'s ``val_images``). Runs are grouped by agent, environment id and budget; a
group's curve is the mean over its runs (seeds) with a band of one standard deviation, its row the
mean ± sd of the best held-out and test accuracies.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jpq_env.errors import ArgumentError

from .search import LOG_NAME, RUN_NAME, read_log

__all__ = ["RunCurve", "compare_table", "compare_figure", "load_run"]


@dataclass(frozen=True)
class RunCurve:
    """One run's settings and its best-so-far curve.

    Attributes:
        path: The run directory.
        agent: Its agent; ``seed`` its seed; ``group`` what it is compared within
            (``agent  env id  budget``).
        best: Per evaluation, the best held-out score so far (NaN before the first policy that
            meets the budget and was scored in full).
        images: Per evaluation, the held-out images scored so far (NaN where a complete
            evaluation's size is unknown: a run without ``summary.json``'s ``val_images``).
        test: The best policy's test accuracy (``summary.json``), or None if the run has none.
        seconds: The search's wall time (``summary.json``), or None.
    """

    path: Path
    agent: str
    seed: int
    group: str
    best: np.ndarray
    images: np.ndarray
    test: float | None
    seconds: float | None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ArgumentError(f"cannot read '{path}': {exc.strerror}") from None
    except ValueError as exc:
        raise ArgumentError(f"'{path}' is not valid JSON: {exc}") from None


def load_run(path: str | Path) -> RunCurve:
    """A run directory's curve (its ``run.json``, ``evaluations.jsonl`` and ``summary.json``).

    Raises:
        ArgumentError: If the folder is not a run, or its log is not one ``--resume`` accepts.
    """
    path = Path(path)
    if not (path / RUN_NAME).is_file():
        raise ArgumentError(f"'{path}' is not a run directory: it has no {RUN_NAME}")
    settings = _read_json(path / RUN_NAME)
    if not isinstance(settings, dict):
        raise ArgumentError(f"'{path / RUN_NAME}' holds no run settings")
    records = read_log(path / LOG_NAME)
    summary_file = path / "summary.json"
    summary = _read_json(summary_file) if summary_file.is_file() else {}
    summary = summary if isinstance(summary, dict) else {}
    complete = summary.get("val_images")
    best, images, so_far, seen = [], [], -math.inf, 0.0
    for r in records:
        full = r.get("proxy_complete", True)
        if r["budget_met"] and full:
            so_far = max(so_far, float(r["accuracy"]))
        best.append(so_far if so_far > -math.inf else math.nan)
        count = r.get("proxy_images", complete)
        seen = seen + count if isinstance(count, int) and seen == seen else math.nan
        images.append(seen)  # NaN from the first complete evaluation of unknown size on
    recorded = settings.get("env")
    env: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    recorded_budget = summary.get("budget")
    ran: dict[str, Any] = recorded_budget if isinstance(recorded_budget, dict) else {}
    budget = env.get("budget_bops", ran.get("bops", "default"))  # the env's default, if recorded
    if isinstance(budget, (int, float)) and 0 < budget < 1:
        budget = f"1/{1 / budget:.0f}"
    group = f"{settings.get('agent')}  {env.get('id', '')}  BOPs {budget}"
    test = (summary.get("best") or {}).get("accuracy_test")
    return RunCurve(
        path,
        str(settings.get("agent")),
        int(settings.get("seed", 0)),
        group,
        np.array(best, dtype=np.float64),
        np.array(images, dtype=np.float64),
        float(test) if isinstance(test, (int, float)) else None,
        float(summary["seconds"]) if isinstance(summary.get("seconds"), (int, float)) else None,
    )


def _groups(runs: Sequence[RunCurve]) -> dict[str, list[RunCurve]]:
    out: dict[str, list[RunCurve]] = {}
    for run in runs:
        out.setdefault(run.group, []).append(run)
    return out


def _mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "-"
    arr = np.asarray(values, dtype=np.float64) * 100
    if len(arr) == 1:
        return f"{arr[0]:.2f} (one run)"
    return f"{arr.mean():.2f} ± {float(arr.std(ddof=1)):.2f}"


def compare_table(runs: Sequence[RunCurve]) -> str:
    """A Markdown table: per group, its runs, evaluations, best held-out and test (mean ± sd, %)."""
    rows = [
        "| agent, env, budget | runs (seeds) | evaluations | best held-out | best test | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for group, members in _groups(runs).items():
        finals = [float(r.best[-1]) for r in members if len(r.best) and not math.isnan(r.best[-1])]
        tests = [r.test for r in members if r.test is not None]
        seconds = [r.seconds for r in members if r.seconds is not None]
        seeds = ", ".join(str(r.seed) for r in members)
        evals = "/".join(sorted({str(len(r.best)) for r in members}))
        secs = f"{np.mean(seconds):.0f}" if seconds else "-"
        rows.append(
            f"| {group} | {len(members)} ({seeds}) | {evals} | {_mean_sd(finals)} | "
            f"{_mean_sd(tests)} | {secs} |"
        )
    return "\n".join(rows)


def _band(curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> np.ndarray:
    """Each run's best-so-far at the grid's x values (step function), as rows."""
    rows = []
    for x, y in curves:
        idx = np.searchsorted(x, grid, side="right") - 1
        row = np.where(idx >= 0, y[np.clip(idx, 0, None)], np.nan)
        rows.append(row)
    return np.array(rows)


def compare_figure(runs: Sequence[RunCurve], out: str | Path) -> Path:
    """Learning curves (mean ± sd per group) against evaluations and against images; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jpq_env.atomic import atomic_file

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for group, members in _groups(runs).items():
        for ax, axis in zip(axes, ("evaluations", "images"), strict=True):
            curves = [
                (np.arange(1, len(r.best) + 1, dtype=np.float64) if axis == "evaluations"
                 else r.images, r.best * 100)
                for r in members
                if len(r.best) and (axis == "evaluations" or not np.isnan(r.images).any())
            ]  # fmt: skip
            if not curves:
                continue
            top = max(float(x[-1]) for x, _ in curves)
            grid = np.linspace(1, top, 200)
            rows = _band(curves, grid)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN before a first policy
                mean, sd = np.nanmean(rows, axis=0), np.nanstd(rows, axis=0)
            (line,) = ax.plot(grid, mean, label=f"{group} (n={len(members)})")
            ax.fill_between(grid, mean - sd, mean + sd, alpha=0.2, color=line.get_color())
    axes[0].set_xlabel("evaluations")
    axes[1].set_xlabel("held-out images scored (racing makes evaluations unequal)")
    axes[0].set_ylabel("best held-out accuracy so far (%)")
    axes[0].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("Best policy within budget so far: mean ± sd over seeds")
    fig.tight_layout()
    out = Path(out)
    with atomic_file(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
