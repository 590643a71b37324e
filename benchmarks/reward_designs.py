"""Reward designs compared: the same agents, budgets and evaluations, one design at a time.

For every reward design (the built-in ones, or any registered by name: ``--import mymodule``
runs ``mymodule``'s ``register_reward`` calls first), agent (the two-level controller and DDPG),
BOPs budget and seed, a search on JPQWeightsActs-v0 of the default task with a fixed number of
evaluations. Reported per design:

- best test accuracy within budget (of the policy the proxy picked);
- share of episodes over budget (with ``--enforcement none`` the reward alone must keep the
  agent within budget; with the default forward wall no episode can be over);
- evaluations until the best proxy accuracy first comes within 1 point of its final value;
- Kendall's tau (tau-b, ties allowed) between the proxy (held-out) accuracy and the test
  accuracy of the policies the run found: over up to 30 distinct policies within budget spread
  evenly over the run's ranking (how well the proxy orders what the search sees), and over the
  run's 30 best (whether it can pick the best among good policies; often a plateau of equal
  proxy scores, then undefined);
- learning curves (best proxy accuracy within budget against evaluations), one plot per budget.

    python -m benchmarks.reward_designs                       # full grid, writes results/
    python -m benchmarks.reward_designs --enforcement none    # the designs without the wall
    python -m benchmarks.reward_designs --designs galen,mine --import mypkg.rewards
    python -m benchmarks.reward_designs --quick               # a smoke run (CI), writes nothing
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau

from benchmarks.common import RESULTS, load_rows, mean_sd, run_grid, write_result
from jpq_env.envs.rewards import REWARDS

NAME = "reward_designs"
ENV = "jpq_env/JPQWeightsActs-v0"
AGENTS = ("two-level", "ddpg")
BUDGETS = ("1/64", "1/128")
TOP = 30  # policies re-scored on the test split per run, for the rank correlation


def _key(run: dict[str, Any]) -> tuple[str, ...]:
    keys = ("design", "agent", "budget", "enforcement", "seed", "episodes")
    return tuple(str(run[k]) for k in keys)


def best_curve(records: Sequence[dict[str, Any]]) -> list[float]:
    """Best proxy accuracy within budget after each evaluation (0 before the first within)."""
    best, curve = 0.0, []
    for r in records:
        if r["budget_met"]:
            best = max(best, r["accuracy"])
        curve.append(best)
    return curve


def evaluations_to_within(curve: Sequence[float], points: float = 0.01) -> int:
    """Evaluations until the curve first comes within ``points`` of its final value."""
    final = curve[-1]
    return next(i + 1 for i, v in enumerate(curve) if v >= final - points)


def rank_correlation(proxy: Sequence[float], test: Sequence[float]) -> float:
    """Kendall's tau-b of two score lists; NaN when either is constant (no ranking to compare)."""
    if len(set(proxy)) < 2 or len(set(test)) < 2:
        return float("nan")
    return float(kendalltau(proxy, test).statistic)


def _one(run: dict[str, Any]) -> dict[str, Any]:
    """One search, then its curve and the proxy/test rank correlation (in a worker process)."""
    from jpq_agents.run import run_search
    from jpq_env import LocalEvaluator, Policy, load_task

    torch.set_num_threads(1)
    for module in run["imports"]:
        importlib.import_module(module)  # registers the user's designs in this process too
    kwargs = {
        "reward": run["design"],
        "budget_bops": float(Fraction(run["budget"])),
        "enforcement": run["enforcement"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        summary = run_search(
            run["agent"],
            out,
            run["episodes"],
            seed=run["seed"],
            env_id=ENV,
            env_kwargs=kwargs,
            progress=False,
        )
        lines = (out / "evaluations.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    evaluator = LocalEvaluator(load_task("digits"))
    fingerprint = evaluator.graph.fingerprint
    distinct: dict[str, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: -r["accuracy"]):  # best first, stable for ties
        if r["budget_met"]:
            distinct.setdefault(json.dumps(r["policy"]), r)
    ranked = list(distinct.values())
    spread_at = np.unique(np.linspace(0, len(ranked) - 1, min(TOP, len(ranked))).round())
    spread = [ranked[int(i)] for i in spread_at] if ranked else []
    test_of: dict[int, float] = {}

    def test_accuracy(r: dict[str, Any]) -> float:
        if r["episode"] not in test_of:
            data = {"schema": 1, "fingerprint": fingerprint, "layers": r["policy"]}
            test_of[r["episode"]] = evaluator.test_accuracy(Policy.from_json(data))
        return test_of[r["episode"]]

    tau, tau_top = (
        rank_correlation([r["accuracy"] for r in rs], [test_accuracy(r) for r in rs])
        for rs in (spread, ranked[:TOP])
    )
    curve = best_curve(records)
    best = summary["best"] or {}
    return {
        **{k: v for k, v in run.items() if k != "imports"},
        "fp32_test": summary["accuracy_fp32_test"],
        "val": best.get("accuracy_val", 0.0),
        "test": best.get("accuracy_test", 0.0),
        "violations": summary["budget_violations"] / max(len(records), 1),
        "to_within_1pt": evaluations_to_within(curve),
        "tau": tau,
        "tau_top": tau_top,
        "ranked": len(spread),
        "distinct": len(ranked),
        "curve": curve,
        "seconds": summary["seconds"],
    }


def _describe(row: dict[str, Any]) -> str:
    return (
        f"{row['design']} {row['agent']} {row['budget']} {row['enforcement']} seed "
        f"{row['seed']}: test {row['test']:.2%}, over budget {row['violations']:.0%}, "
        f"tau {row['tau']:.2f} ({row['seconds']:.0f} s)"
    )


def _mean_tau(runs: Sequence[dict[str, Any]], key: str) -> str:
    """Mean tau over the runs where it is defined, with how many those are."""
    taus = [r[key] for r in runs if not np.isnan(r.get(key, float("nan")))]
    if not taus:
        return "- (0)"
    return f"{statistics.mean(taus):.2f} ({len(taus)})"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """One Markdown table per (enforcement, agent): designs by budget."""
    groups: dict[tuple[str, str], dict[str, dict[str, list[dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in rows:
        groups[(r["enforcement"], r["agent"])][r["design"]][r["budget"]].append(r)
    out = []
    for (enforcement, agent), designs in sorted(groups.items()):
        budgets = sorted({b for d in designs.values() for b in d}, key=lambda b: -Fraction(b))
        out += [
            f"### {agent}, enforcement `{enforcement}`",
            "",
            "| design | budget | best test acc within budget (%) | over budget (%) | "
            "evals to within 1 pt | Kendall tau proxy/test | tau among the best 30 | runs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for design in sorted(designs):
            for b in budgets:
                runs = designs[design].get(b, [])
                if not runs:
                    continue
                tau, top = (_mean_tau(runs, key) for key in ("tau", "tau_top"))
                out.append(
                    f"| {design} | {b} | {mean_sd(r['test'] for r in runs)} | "
                    f"{mean_sd([r['violations'] for r in runs], digits=1)} | "
                    f"{statistics.mean(r['to_within_1pt'] for r in runs):.0f} | {tau} | "
                    f"{top} | {len(runs)} |"
                )
        out.append("")
    return "\n".join(out)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Mean learning curves per design: a row of panels per enforcement, a panel per agent/budget.

    Designs that coincide (under the wall, every design whose terms differ only over budget)
    draw on top of each other; dashes of different lengths keep each one visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    enforcements = sorted({r["enforcement"] for r in rows})
    panels = sorted({(r["agent"], r["budget"]) for r in rows})
    fig, axes = plt.subplots(
        len(enforcements),
        len(panels),
        figsize=(4.5 * len(panels), 3.6 * len(enforcements)),
        squeeze=False,
    )
    designs = sorted({r["design"] for r in rows})
    for row, enforcement in zip(axes, enforcements, strict=True):
        for ax, (agent, budget) in zip(row, panels, strict=True):
            for k, design in enumerate(designs):
                curves = [
                    r["curve"]
                    for r in rows
                    if (r["enforcement"], r["agent"], r["budget"], r["design"])
                    == (enforcement, agent, budget, design)
                ]
                if curves:
                    n = min(len(c) for c in curves)
                    mean = 100 * np.mean([c[:n] for c in curves], axis=0)
                    dashes = (2 + 2 * k, 1 + k) if k else ()
                    ax.plot(np.arange(1, n + 1), mean, label=design, dashes=dashes, lw=1.3)
            ax.set_title(f"{agent}, {budget}, enforcement {enforcement}", fontsize=9)
            ax.set_xlabel("evaluations")
            ax.set_ylabel("best proxy accuracy within budget (%)", fontsize=8)
            ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, no result file")
    parser.add_argument("--designs", type=lambda s: s.split(","), default=None)
    parser.add_argument("--import", dest="imports", type=lambda s: s.split(","), default=[])
    parser.add_argument("--agents", type=lambda s: s.split(","), default=list(AGENTS))
    parser.add_argument("--budgets", type=lambda s: s.split(","), default=list(BUDGETS))
    parser.add_argument("--enforcement", default="wall", choices=["wall", "lowering", "none"])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--report", action="store_true", help="only rebuild the table and plot")
    args = parser.parse_args(argv)
    for module in args.imports:
        importlib.import_module(module)
    designs = args.designs or sorted(REWARDS)
    unknown = sorted(set(designs) - set(REWARDS))
    if unknown:
        parser.error(f"unknown reward designs {unknown}: registered are {sorted(REWARDS)}")
    if args.quick:
        designs, args.agents, args.budgets = ["galen", "haq"], ["two-level"], ["1/64"]
        args.episodes, args.seeds = 6, 1
    runs = [
        {
            "design": d,
            "agent": a,
            "budget": b,
            "enforcement": args.enforcement,
            "seed": s,
            "episodes": args.episodes,
            "imports": args.imports,
        }
        for d in designs
        for a in args.agents
        for b in args.budgets
        for s in range(args.seeds)
    ]
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_grid(runs, Path(tmp) / "runs.jsonl", _one, _key, 1, _describe)
            print(table(rows))
            plot(rows, Path(tmp) / "curves.png")
        return
    log = RESULTS / f"{NAME}_runs.jsonl"
    if not args.report:
        run_grid(runs, log, _one, _key, args.jobs, _describe)
    rows = list({_key(r): r for r in load_rows(log)}.values())
    plot(rows, RESULTS / f"{NAME}.png")
    body = "\n".join(
        [
            "# Reward designs compared",
            "",
            "JPQWeightsActs-v0 on the default task (digits); every run spends the same "
            "evaluations "
            f"({', '.join(str(e) for e in sorted({r['episodes'] for r in rows}))}); mean ± sd "
            f"over seeds. Kendall tau-b between proxy and test accuracy, mean over the runs "
            f"where it is defined (their number in brackets): over up to {TOP} distinct policies "
            f"within budget spread evenly over each run's ranking, and over its {TOP} best "
            "(undefined when they all share one proxy score). "
            f"Curves: `{NAME}.png`; every run's row (with its curve): `{NAME}_runs.jsonl`.",
            "",
            table(rows),
        ]
    )
    print(f"written to {write_result(NAME, body)}")


if __name__ == "__main__":
    main()
