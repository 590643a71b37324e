"""The agents grid on ResNet-20 / CIFAR-10: does a search method beat the cheap alternatives?

JPQWeightsActs-v0 at 1/64 and 1/128 of FP32 BOPs, 300 evaluations per search: two-level,
greedy, cmaes-warm, ppo, random and two-level-greedy (the two-level controller started from
greedy's rounds: ``TwoLevelConfig.greedy_start``) with seeds 0-2, two-stage and uniform once
(deterministic).
Each search appends one line to ``benchmarks/results/resnet20_grid_runs.jsonl`` as it ends
(``agent``, ``budget``, ``seed``, ``val`` and ``test`` of the best policy, ``evaluations``,
``image_forwards``, ``seconds``, ``commit``, ``command``, and the best-so-far curve against
evaluations and against held-out images scored), so a killed grid continues where it stopped
and the grid can be completed over several sittings (``run_grid``; a search killed mid-way
starts over, so that every row costs one whole search). The report compares the
agents at equal evaluations and at equal cost (held-out images scored: racing makes evaluations
unequal), mean ± sd over seeds, and draws the curves (``resnet20_grid.png``).

    python -m benchmarks.cifar_workload                 # once: data and checkpoint
    JPQ_THREADS=2 python -m benchmarks.resnet20_grid    # about 6 minutes a search on 2 idle cores
    python -m benchmarks.resnet20_grid --agents greedy,two-level --budgets 1/64
    python -m benchmarks.resnet20_grid --report         # the report from the rows so far
    python -m benchmarks.resnet20_grid --quick          # digits, 12 evaluations: a smoke run
"""

from __future__ import annotations

import argparse
import math
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, commit, configure_threads, load_rows, run_grid, write_result

NAME = "resnet20_grid"
LOG = RESULTS / f"{NAME}_runs.jsonl"
RUNS = Path(__file__).parent / "runs" / NAME
AGENTS = ("two-level", "greedy", "cmaes-warm", "ppo", "random", "two-level-greedy")
ONCE = ("two-stage", "uniform")  # deterministic: one seed
VARIANTS = {"two-level-greedy": ("two-level", {"greedy_start": True})}
"""Grid agents that are another agent with options: two-level started from greedy's rounds."""
BUDGETS = (1 / 64, 1 / 128)
ENV_ID = "jpq_env/JPQWeightsActs-v0"


def grid(agents: tuple[str, ...], budgets: tuple[float, ...], seeds: int) -> list[dict[str, Any]]:
    """Every search of the grid: agent, budget and seed."""
    runs = []
    for budget in budgets:
        for agent in agents:
            for seed in range(1 if agent in ONCE else seeds):
                runs.append({"agent": agent, "budget": budget, "seed": seed})
    return runs


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return (row["agent"], f"{row['budget']:.8f}", str(row["seed"]), row.get("task", "resnet20"))


def _curves(out: Path) -> tuple[list[float | None], list[int]]:
    """Best-so-far held-out score per evaluation and the held-out images scored so far."""
    from jpq_agents.compare import load_run

    run = load_run(out)
    best = [None if math.isnan(v) else round(float(v), 6) for v in run.best]
    return best, [int(x) for x in run.images]


def one(run: dict[str, Any]) -> dict[str, Any]:
    """One search of the grid, its row (a module-level function: ``run_grid`` may fork)."""
    from benchmarks.cifar_workload import DATA, SHARED, WEIGHTS_NAME, task_options
    from jpq_agents.run import run_search
    from jpq_env import load_task

    quick = run.get("task") == "digits"
    if quick:
        task: Any = "digits"
    else:
        tuned = DATA / WEIGHTS_NAME
        weights = tuned if tuned.exists() else SHARED / "resnet20-12fca82f.th"
        task = load_task("resnet20-cifar", **task_options(DATA, weights))
    budget = run["budget"]
    out = Path(run["out"]) / f"{run['agent']}-1_{round(1 / budget)}-seed{run['seed']}"
    if out.exists():
        # A row measures one whole search: its minutes and image-forwards. A folder left by a
        # killed grid would resume and record only the resume's cost, so the search starts over.
        shutil.rmtree(out)
    agent, options = VARIANTS.get(run["agent"], (run["agent"], None))
    summary = run_search(
        agent,
        out,
        run["episodes"],
        seed=run["seed"],
        env_id=ENV_ID,
        env_kwargs={"task": task, "budget_bops": budget},
        progress=False,
        fidelity="race",  # explicit: an old folder never resumes in another fidelity
        agent_options=options,
    )
    best, images = _curves(out)
    proxy = summary.get("proxy", {})
    return {
        **{k: run[k] for k in ("agent", "budget", "seed")},
        **({"task": "digits"} if quick else {}),
        "val": summary["best"]["accuracy_val"] if summary.get("best") else None,
        "test": summary["best"]["accuracy_test"] if summary.get("best") else None,
        "best_phase": (summary.get("best") or {}).get("phase"),
        "same_as": (summary.get("best") or {}).get("same_as"),
        "fp32_test": summary["accuracy_fp32_test"],
        "evaluations": summary["evaluations"],
        "image_forwards": proxy.get("image_forwards"),
        "seconds": round(float(summary["seconds"]), 1),
        "setup_seconds": summary.get("setup_seconds"),
        "commit": run["commit"],  # the code this process runs: its HEAD when it started
        "curve_best_val": best,
        "curve_images": images,
    }


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    arr = np.array(values) * 100
    return f"{arr.mean():.2f} ± {arr.std(ddof=1) if len(arr) > 1 else 0.0:.2f}"


def _at(row: dict[str, Any], images: float) -> float | None:
    """The row's best-so-far once it had scored ``images`` held-out images (None: none yet)."""
    best: float | None = None
    for value, seen in zip(row["curve_best_val"], row["curve_images"], strict=True):
        if seen > images:
            break
        best = value if value is not None else best
    return best


def report(rows: list[dict[str, Any]]) -> str:
    """Per budget: the agents at equal evaluations and at equal images, mean ± sd over seeds."""
    out = [
        "# The agents grid on ResNet-20 / CIFAR-10",
        "",
        f"`{ENV_ID}`, 300 evaluations, the full 5,000-image held-out split. Accuracies in %, mean "
        "± sd over seeds (two-stage and uniform are deterministic: one run). At equal cost: each "
        "search's best held-out score once it had scored as many held-out images as the "
        "cheapest complete search of its budget. Minutes: the search's wall time as it ran (the "
        "first rows on 2 idle threads, later ones with `JPQ_THREADS=1` beside other work), so "
        "compare costs by image-forwards. Target (issue 29): two-level ahead of every other "
        "agent on test, and ahead of greedy at equal cost.",
    ]
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        mine = [r for r in rows if r["budget"] == budget]
        full = [r for r in mine if r["evaluations"] >= 300 and r["agent"] not in ONCE]
        full = full or mine  # the one-seed agents spend fewer evaluations: never the yardstick
        cheapest = min((r["curve_images"][-1] for r in full), default=0)
        out += [
            "",
            f"## 1/{1 / budget:.0f} of FP32 BOPs",
            "",
            "| agent | runs (seeds) | best held-out | best test | evaluations | image-forwards "
            f"| minutes | held-out at {cheapest:,} images |",
            "|---|---|---|---|---|---|---|---|",
        ]
        agents = [a for a in (*AGENTS, *ONCE) if any(r["agent"] == a for r in mine)]
        for agent in agents:
            group = [r for r in mine if r["agent"] == agent]
            at = [v for r in group if (v := _at(r, cheapest)) is not None]
            forwards = [r["image_forwards"] for r in group if r.get("image_forwards")]
            out.append(
                f"| {agent} | {len(group)} ({', '.join(str(r['seed']) for r in group)}) | "
                f"{_mean_sd([r['val'] for r in group if r['val'] is not None])} | "
                f"{_mean_sd([r['test'] for r in group if r['test'] is not None])} | "
                f"{np.mean([r['evaluations'] for r in group]):.0f} | "
                f"{np.mean(forwards) if forwards else 0:,.0f} | "
                f"{np.mean([r['seconds'] for r in group]) / 60:.1f} | {_mean_sd(at)} |"
            )
    commits = sorted({r["commit"] for r in rows})
    out += ["", f"Rows from commits {', '.join(commits)}; each row names its command in the log."]
    return "\n".join(out)


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Best-so-far against evaluations and against held-out images, per agent and budget.

    ``jpq compare``'s figure (mean ± sd over seeds), drawn from the rows' curves.
    """
    from jpq_agents.compare import RunCurve, compare_figure

    curves = [
        RunCurve(
            RUNS,
            r["agent"],
            r["seed"],
            f"{r['agent']} 1/{1 / r['budget']:.0f}",
            np.array([np.nan if v is None else v for v in r["curve_best_val"]], dtype=float),
            np.array(r["curve_images"], dtype=float),
            r["test"],
            r["seconds"],
        )
        for r in rows
    ]
    compare_figure(curves, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default=",".join((*AGENTS, *ONCE)), help="comma-separated")
    parser.add_argument("--budgets", default="1/64,1/128", help="comma-separated fractions")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--report", action="store_true", help="the report from the rows so far")
    parser.add_argument("--quick", action="store_true", help="digits, 12 evaluations; no files")
    args = parser.parse_args()
    configure_threads()
    if args.quick:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            runs = [
                {**r, "task": "digits", "episodes": 12, "out": tmp, "commit": commit()}
                for r in grid(("greedy", "random", "uniform"), (1 / 64,), 2)
            ]
            rows = run_grid(runs, Path(tmp) / "rows.jsonl", one, _key, describe=_describe)
            print(report(rows))
        return
    if not args.report:
        agents = tuple(a.strip() for a in args.agents.split(","))
        budgets = tuple(float(Fraction(b)) for b in args.budgets.split(","))
        stamp = commit()  # the code this process runs: its HEAD when it started
        runs = [
            {**r, "episodes": 300, "out": str(RUNS), "commit": stamp}
            for r in grid(agents, budgets, args.seeds)
        ]
        run_grid(runs, LOG, one, _key, describe=_describe)
    rows = [r for r in load_rows(LOG) if r.get("task", "resnet20") == "resnet20"]
    if rows:
        figure(rows, RESULTS / f"{NAME}.png")
        print(write_result(NAME, report(rows) + f"\n\n![learning curves]({NAME}.png)"))


def _describe(row: dict[str, Any]) -> str:
    test = "-" if row["test"] is None else f"{row['test']:.2%}"
    return (
        f"{row['agent']} 1/{1 / row['budget']:.0f} seed {row['seed']}: test {test}, "
        f"{row['evaluations']} evaluations, {row['seconds'] / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
