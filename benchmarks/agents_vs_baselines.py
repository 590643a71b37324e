"""Agents against baselines at equal evaluations, over BOPs budgets, tasks and environment versions.

Every agent and baseline gets the same number of evaluations per run (baselines that need fewer
stop early) at each BOPs budget, on JPQWeights-v0 (weights only) and JPQWeightsActs-v0 (weights and
activations). The seed-independent baselines (uniform, two-stage, greedy) run once; the others over
several seeds. Each run's summary is appended to ``results/agents_vs_baselines_runs.jsonl`` as soon
as it ends, so an interrupted benchmark continues where it stopped and the tables are rebuilt from
it.

    python -m benchmarks.agents_vs_baselines                 # the full grid (hours on 2 cores)
    python -m benchmarks.agents_vs_baselines --envs v1 --tasks digits --budgets 1/64,1/128,1/256
    python -m benchmarks.agents_vs_baselines --report        # rebuild tables and plots only
    python -m benchmarks.agents_vs_baselines --quick         # a smoke run (CI), writes nothing
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, load_rows, mean_sd, run_grid, write_result

NAME = "agents_vs_baselines"
ENVS = {"v0": "jpq_env/JPQWeights-v0", "v1": "jpq_env/JPQWeightsActs-v0"}
TASKS = ("digits", "digits-deep")
BUDGETS = ("1/16", "1/32", "1/64", "1/100", "1/128", "1/256")
AGENTS = ("two-level", "ddpg", "ppo", "random", "uniform", "two-stage", "greedy")
FINETUNED = frozenset({"1/100"})  # budgets whose best policies are also fine-tuned (3 epochs)
SEED_FREE = frozenset({"uniform", "two-stage", "greedy"})  # same policies whatever the seed


def _key(run: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(run[k]) for k in ("env", "task", "budget", "agent", "seed", "episodes"))


def _one(run: dict[str, Any]) -> dict[str, Any]:
    """Run one search in a scratch directory and return its row (runs in a worker process)."""
    from jpq_agents.run import run_search

    torch.set_num_threads(1)  # workers get their parallelism from being several
    kwargs = {"task": run["task"], "budget_bops": float(Fraction(run["budget"]))}
    tuned = None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        summary = run_search(
            run["agent"],
            out,
            run["episodes"],
            seed=run["seed"],
            env_id=ENVS[run["env"]],
            env_kwargs=kwargs,
            progress=False,
        )
        if run["budget"] in FINETUNED and summary["best"]:
            tuned = _finetuned(out / "policy.json", run["task"])
    best = summary["best"] or {}
    return {
        "finetuned": tuned,
        **run,
        "evaluations": summary["evaluations"],
        "seconds": summary["seconds"],
        "fp32_val": summary["accuracy_fp32_val"],
        "fp32_test": summary["accuracy_fp32_test"],
        "val": best.get("accuracy_val", 0.0),
        "test": best.get("accuracy_test", 0.0),
        "bops_ratio": best.get("bops_ratio"),
        "violations": summary["budget_violations"],
    }


def _grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for env in args.envs:
        for task in args.tasks:
            for budget in args.budgets:
                for agent in args.agents:
                    seeds = [0] if agent in SEED_FREE else range(args.seeds)
                    for seed in seeds:
                        runs.append(
                            {
                                "env": env,
                                "task": task,
                                "budget": budget,
                                "agent": agent,
                                "seed": seed,
                                "episodes": args.episodes,
                            }
                        )
    return runs


def _finetuned(policy_file: Path, task: str) -> float:
    """Test accuracy of the best policy after ``jpq finetune``'s default 3 epochs."""
    from jpq_env import LocalEvaluator, Policy, load_task
    from jpq_env.proxy.finetune import finetune

    policy = Policy.from_json(json.loads(policy_file.read_text()))
    return finetune(LocalEvaluator(load_task(task)), policy, epochs=3).accuracy_after


def _describe(row: dict[str, Any]) -> str:
    return (
        f"{row['env']} {row['task']} {row['budget']} {row['agent']} seed {row['seed']}: "
        f"val {row['val']:.2%} test {row['test']:.2%} ({row['seconds']:.0f} s)"
    )


def tables(rows: Sequence[dict[str, Any]]) -> str:
    """One Markdown table per (task, env): agents by budget, best test accuracy within budget."""
    groups: dict[tuple[str, str], dict[tuple[str, str], list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in rows:
        groups[(r["task"], r["env"])][(r["agent"], r["budget"])].append(r)
    out = []
    for (task, env), cells in sorted(groups.items()):
        budgets = sorted({b for _, b in cells}, key=lambda b: -Fraction(b))
        agents = [a for a in AGENTS if any(a == x for x, _ in cells)]
        fp32 = next(iter(cells.values()))[0]
        out += [
            f"### {task} on JPQ-{env}",
            "",
            f"FP32: {fp32['fp32_val']:.2%} val, {fp32['fp32_test']:.2%} test. Cells: test accuracy "
            "(%) of the best policy within budget by the proxy, mean ± sd over seeds; in brackets "
            "the proxy (val) accuracy. Bold: the best mean test accuracy of the column.",
            "",
            "| agent | " + " | ".join(f"{b} of FP32 BOPs" for b in budgets) + " |",
            "|---|" + "---|" * len(budgets),
        ]
        best = {
            b: max(statistics.mean(x["test"] for x in cells[(a, b)]) for a in agents)
            for b in budgets
            if all((a, b) in cells for a in agents)
        }
        for agent in agents:
            row = [agent]
            for b in budgets:
                runs = cells.get((agent, b))
                if not runs:
                    row.append("-")
                    continue
                mean = statistics.mean(x["test"] for x in runs)
                val = 100 * statistics.mean(x["val"] for x in runs)
                text = f"{mean_sd(x['test'] for x in runs)} ({val:.1f})"
                row.append(f"**{text}**" if b in best and mean == best[b] else text)
            out.append("| " + " | ".join(row) + " |")
        out.append("")
        tuned = [(a, b) for (a, b), runs in cells.items() if runs[0].get("finetuned") is not None]
        if tuned:
            out += [
                "Fine-tuned (`jpq finetune`, 3 epochs of quantization-aware training, masks "
                "fixed): test accuracy (%) before and after, mean over seeds.",
                "",
                "| agent | budget | before | after | FP32 gap before | FP32 gap after |",
                "|---|---|---|---|---|---|",
            ]
            for a, b in sorted(tuned, key=lambda ab: (AGENTS.index(ab[0]), ab[1])):
                runs = cells[(a, b)]
                before = 100 * statistics.mean(x["test"] for x in runs)
                after = 100 * statistics.mean(x["finetuned"] for x in runs)
                fp32 = 100 * runs[0]["fp32_test"]
                out.append(
                    f"| {a} | {b} | {before:.2f} | {after:.2f} | {fp32 - before:.2f} | "
                    f"{fp32 - after:.2f} |"
                )
            out.append("")
    return "\n".join(out)


BASELINES = ("uniform", "two-stage", "random", "greedy")
LEARNED = ("two-level", "ddpg", "ppo")


def _means(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, ...], dict[str, float]]:
    """Mean test and val accuracy per (task, env, budget, agent)."""
    cells: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        cells[(r["task"], r["env"], r["budget"], r["agent"])].append(r)
    return {
        key: {
            "test": statistics.mean(x["test"] for x in runs),
            "val": statistics.mean(x["val"] for x in runs),
            "fp32": runs[0]["fp32_test"],
        }
        for key, runs in cells.items()
    }


def headline(rows: Sequence[dict[str, Any]]) -> str:
    """The joint search against prune-then-quantize, and the issue's targets, as two tables."""
    means = _means(rows)
    cells = sorted(
        {k[:3] for k in means},
        key=lambda k: (k[0], k[1], -Fraction(k[2])),
    )
    out = [
        "## Headline: the joint search against prune-then-quantize",
        "",
        "Test accuracy (%) of the best policy within budget, mean over seeds (proxy val in "
        "brackets): the two-level controller's joint search against the two-stage baseline "
        "(magnitude pruning to the budget, then uniform widths; on v1 the best WxAy pair), and "
        "the best of every baseline and learned agent in the cell.",
        "",
        "| task | env | budget | two-level | two-stage | two-level - two-stage (points) | best "
        "baseline | best learned agent |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def best(cell: tuple[str, ...], names: Sequence[str]) -> str:
        present = [(means[(*cell, a)]["test"], a) for a in names if (*cell, a) in means]
        if not present:
            return "-"
        acc, agent = max(present)
        return f"{agent} {100 * acc:.2f}"

    for cell in cells:
        tl, ts = means.get((*cell, "two-level")), means.get((*cell, "two-stage"))
        if tl is None or ts is None:
            continue
        out.append(
            f"| {cell[0]} | {cell[1]} | {cell[2]} | {100 * tl['test']:.2f} ({100 * tl['val']:.1f}) "
            f"| {100 * ts['test']:.2f} ({100 * ts['val']:.1f}) | "
            f"{100 * (tl['test'] - ts['test']):+.2f} | {best(cell, BASELINES)} | "
            f"{best(cell, LEARNED)} |"
        )
    out += [
        "",
        "## Targets",
        "",
        "At 1/64 of FP32 BOPs (BN re-calibrated, not fine-tuned): is the two-level controller "
        "within 1 point of FP32 test accuracy, and does no baseline beat it on the test split?",
        "",
        "| task | env | FP32 test | two-level | gap (points) | within 1 point | best baseline "
        "| no baseline beats it |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in (c for c in cells if c[2] == "1/64"):
        tl = means.get((*cell, "two-level"))
        present = [(means[(*cell, a)]["test"], a) for a in BASELINES if (*cell, a) in means]
        if tl is None or not present:
            continue
        gap = 100 * (tl["fp32"] - tl["test"])
        top, name = max(present)
        out.append(
            f"| {cell[0]} | {cell[1]} | {100 * tl['fp32']:.2f} | {100 * tl['test']:.2f} | "
            f"{gap:.2f} | {'yes' if gap <= 1.0 else 'no'} | {name} {100 * top:.2f} | "
            f"{'yes' if top <= tl['test'] else 'no'} |"
        )
    out.append("")
    return "\n".join(out)


def plot(rows: Sequence[dict[str, Any]], task: str, path: Path) -> None:
    """Best test accuracy against the BOPs budget, a panel per environment version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = [e for e in ENVS if any(r["task"] == task and r["env"] == e for r in rows)]
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4.5), squeeze=False)
    colours = dict(zip(AGENTS, plt.get_cmap("tab10").colors, strict=False))
    fp32 = next((r["fp32_test"] for r in rows if r["task"] == task), None)
    for ax, env in zip(axes[0], envs, strict=True):
        for agent in AGENTS:
            runs = [
                r for r in rows if r["task"] == task and r["env"] == env and r["agent"] == agent
            ]
            budgets = sorted({r["budget"] for r in runs}, key=lambda b: Fraction(b))
            if not budgets:
                continue
            ys = [
                100 * statistics.mean(r["test"] for r in runs if r["budget"] == b) for b in budgets
            ]
            joint = agent == "two-level"
            ax.plot(
                [float(Fraction(b)) for b in budgets],
                ys,
                "-" if agent in LEARNED else "--",
                marker="o",
                lw=2.5 if joint else 1.2,
                color=colours[agent],
                label=agent,
                zorder=3 if joint else 2,
            )
        if fp32 is not None:
            ax.axhline(100 * fp32, color="grey", lw=0.8, ls=":", label="FP32")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("BOPs budget (fraction of FP32)")
        ax.set_ylabel("best test accuracy within budget (%)")
        ax.set_title(f"{task}, JPQ-{env} (learned solid, baselines dashed)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, no result file")
    parser.add_argument("--envs", type=lambda s: s.split(","), default=list(ENVS))
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=list(TASKS))
    parser.add_argument("--budgets", type=lambda s: s.split(","), default=list(BUDGETS))
    parser.add_argument("--agents", type=lambda s: s.split(","), default=list(AGENTS))
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--report", action="store_true", help="only rebuild tables and plots")
    args = parser.parse_args(argv)
    for name, allowed in (("envs", ENVS), ("tasks", TASKS), ("agents", AGENTS)):
        unknown = set(getattr(args, name)) - set(allowed)
        if unknown:
            parser.error(f"unknown {name}: {sorted(unknown)}; choose from {sorted(allowed)}")
    if args.quick:
        args.envs, args.tasks, args.budgets = ["v1"], ["digits"], ["1/100"]
        args.agents, args.episodes, args.seeds = ["two-level", "two-stage"], 8, 1
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_grid(_grid(args), Path(tmp) / "runs.jsonl", _one, _key, 1, _describe)
            print(headline(rows))
            print(tables(rows))
            plot(rows, "digits", Path(tmp) / "plot.png")
        return
    log = RESULTS / f"{NAME}_runs.jsonl"
    if not args.report:
        run_grid(_grid(args), log, _one, _key, args.jobs, _describe)
    rows = list({_key(r): r for r in load_rows(log)}.values())  # every run so far, not only these
    episodes = ", ".join(str(e) for e in sorted({r["episodes"] for r in rows}))
    seeds = max(r["seed"] for r in rows) + 1
    for task in sorted({r["task"] for r in rows}):
        plot(rows, task, RESULTS / f"{NAME}_{task}.png")
    body = "\n".join(
        [
            "# Agents against baselines at equal evaluations",
            "",
            f"Each run: {episodes} evaluations (baselines that need fewer stop early), "
            "reward `galen`, forward wall, 4 importance groups; JPQWeights-v0 keeps activations "
            "at 8 "
            "bits, JPQWeightsActs-v0 decides them per layer from {2, 3, 4, 5, 6, 8}. Seeds 0-"
            f"{seeds - 1} for the learned agents and random search; uniform, two-stage and "
            "greedy do not depend on the seed and run once. Every run's row is in "
            f"`{NAME}_runs.jsonl`; plots: `{NAME}_<task>.png`. The log holds {len(rows)} runs; "
            "the grid is filled by several invocations (subsets of environments, tasks, budgets "
            "and agents), and the tables are rebuilt from the whole log each time.",
            "",
            headline(rows),
            "## Every agent by budget",
            "",
            tables(rows),
        ]
    )
    print(f"written to {write_result(NAME, body)}")


if __name__ == "__main__":
    main()
