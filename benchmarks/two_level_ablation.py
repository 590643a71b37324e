"""Does learning pay? The two-level controller with and without each of its phases.

Variants of the two-level controller (``jpq_agents.two_level``), each at equal evaluations, several
seeds, against cold black-box optimizers through the same environment:

- ``default``: prune-then-quantize warm start, model-based learning (a surrogate of the proxy
  fitted to the real evaluations trains the controllers on imagined episodes), refinement;
- ``no-learning``: warm start, then refinement at once (``refine_fraction=1``);
- ``learning-only``: warm start and learning, no refinement (``refine_fraction=0``);
- ``model-free``: the default phases, the controllers trained on real episodes only
  (``surrogate=False``, jpq-env 0.1's learning);
- ``pure-rl``: no warm start, no refinement: the controllers alone, model-based;
- ``pure-rl-model-free``: the same, model-free;
- ``greedy-start``: greedy's rounds as the warm start (each probe an episode the controllers learn
  from), then learning and refinement from greedy's best (``greedy_start``);
- ``cmaes`` and ``tpe``: Optuna's CMA-ES and TPE through the public Gymnasium API, cold;
- ``ppo``, ``ddpg``: SB3's learners with the learning signals (sensitivity features in the
  observation, potential-based shaping on the predicted error), ``ppo-no-signals`` and
  ``ddpg-no-signals`` without them, and ``random`` search;
- ``two-stage`` and ``greedy``: the baselines (seed-free: one run each).

Each row records the best policy within budget (held-out and test accuracy), the phase of the
episode that found it, and the learning curve (best held-out accuracy within budget after each
evaluation); the table gives mean ± sd over seeds and where the best episodes came from, the plot
the curves (mean ± sd). Rows are appended to ``results/two_level_ablation_runs.jsonl`` as runs
end, so an interrupted benchmark continues.

    python -m benchmarks.two_level_ablation           # digits v1 1/128 and 1/256, deep v0 1/64
    python -m benchmarks.two_level_ablation --cases digits:v1:1/256 --seeds 3
    python -m benchmarks.two_level_ablation --cases resnet20:v1:1/128 --variants default,no-learning
    python -m benchmarks.two_level_ablation --report        # rebuild the table and plot only
    python -m benchmarks.two_level_ablation --quick         # a smoke run (CI), writes nothing
    JPQ_THREADS=1 python -m benchmarks.two_level_ablation --jobs 2   # one run per core
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    commit,
    configure_threads,
    load_rows,
    mean_sd,
    run_grid,
    write_result,
)

NAME = "two_level_ablation"
ENVS = {"v0": "jpq_env/JPQWeights-v0", "v1": "jpq_env/JPQWeightsActs-v0"}
CASES = ("digits:v1:1/128", "digits-deep:v0:1/64", "digits:v1:1/256")
RESNET20 = "resnet20"  # the ResNet-20 / CIFAR-10 workload (``--cases resnet20:v1:1/128``)
UNSEEN = "lenet5"  # a model no default was tuned on (``benchmarks.unseen``): ``lenet5:v1:1/64``
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-learning": {"refine_fraction": 1.0},
    "learning-only": {"refine_fraction": 0.0},
    "model-free": {"surrogate": False},
    "pure-rl": {"warm_start": False, "refine_fraction": 0.0},
    "pure-rl-model-free": {"warm_start": False, "refine_fraction": 0.0, "surrogate": False},
    "greedy-start": {"greedy_start": True},
}
OPTIMIZERS = ("cmaes", "tpe")
# SB3 learners with the learning signals they get by default (sensitivities in the observation,
# potential-based shaping on the predicted error: ``jpq_agents.run.LEARNER_ENV``) and without.
NO_SIGNALS = {"sensitivity": False, "error_shaping": 0.0}
LEARNERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ppo": ("ppo", {}),
    "ppo-no-signals": ("ppo", NO_SIGNALS),
    "ddpg": ("ddpg", {}),
    "ddpg-no-signals": ("ddpg", NO_SIGNALS),
    "random": ("random", {}),
}
NOTED = (  # rows recorded before rows named their commit
    "85b4338 to 05ad056 (default and no-learning rows ran before 05ad056's NaN guard, which "
    "they never reached)"
)
BASELINES = ("two-stage", "greedy")  # deterministic: one run each (seed 0)
STAMPS = (  # what a row's commit stamp does not say
    "The ResNet-20 rows were run by one invocation started at 4808d51 and are stamped with the "
    "commit checked out when each ended (9f1aea51f1 or 68fd4ec78d: no change to the search code "
    "in between); "
    "their '+changes' was this log itself, which commit stamps no longer count. "
    "The digits v1 1/256 rows ran on one thread beside other work on the second core: their "
    "seconds are not an idle machine's. "
    "The lenet5 1/256 rows' '+changes' (6212e9519a) was an uncommitted edit of "
    "benchmarks/jpq_bench.py, no search code."
)
ALL = (*VARIANTS, *OPTIMIZERS, *LEARNERS, *BASELINES)


def _key(run: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(run[k]) for k in ("case", "variant", "seed", "episodes"))


def _register(variant: str) -> str:
    """The agent name of ``variant`` (two-level variants are added to the registry here)."""
    if variant in OPTIMIZERS or variant in BASELINES:
        return variant
    if variant in LEARNERS:
        return LEARNERS[variant][0]
    from jpq_agents.run import AGENTS
    from jpq_agents.two_level import TwoLevelConfig, run_two_level

    name = f"two-level:{variant}"
    config = TwoLevelConfig(**VARIANTS[variant])
    AGENTS[name] = lambda search, seed, _: run_two_level(search, seed, config)
    return name


def _task(name: str) -> Any:
    """The task of a case: a registered task's name, or ``resnet20`` for the CIFAR-10 workload.

    ``resnet20`` is ResNet-20 on the workload ``python -m benchmarks.cifar_workload`` prepares
    (its fine-tuned checkpoint, the full 5,000-image held-out split).
    """
    if name == UNSEEN:
        return "benchmarks.unseen:lenet5_digits_task"
    if name != RESNET20:
        return name
    from benchmarks.cifar_workload import DATA, WEIGHTS_NAME, task_options
    from jpq_env import load_task

    if not (DATA / WEIGHTS_NAME).exists():
        raise SystemExit(
            f"{DATA / WEIGHTS_NAME} is missing: run `python -m benchmarks.cifar_workload` first"
        )
    return load_task("resnet20-cifar", **task_options(DATA))


def _curve(log: Path) -> tuple[list[float], str]:
    """Best complete held-out accuracy within budget after each evaluation; the best's phase."""
    best, phase, curve = 0.0, "", []
    lines = log.read_text().splitlines() if log.exists() else []  # no evaluation: no log
    for line in lines:
        r = json.loads(line)
        if r["budget_met"] and r.get("proxy_complete", True) and r["accuracy"] > best:
            best, phase = r["accuracy"], r.get("phase", "")
        curve.append(best)
    return curve, phase


def env_kwargs(run: dict[str, Any]) -> dict[str, Any]:
    """The environment arguments of a run: its case's task and budget, its variant's signals."""
    task, _, budget = run["case"].split(":")
    kwargs: dict[str, Any] = {"task": _task(task), "budget_bops": float(Fraction(budget))}
    if run["variant"] in VARIANTS:
        kwargs["sensitivity"] = True  # what the two-level agent gets by default
    kwargs.update(LEARNERS.get(run["variant"], ("", {}))[1])
    return kwargs


def one(run: dict[str, Any]) -> dict[str, Any]:
    """Run one search in a scratch directory and return its row."""
    from jpq_agents.run import run_search

    kwargs = env_kwargs(run)
    env = run["case"].split(":")[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        summary = run_search(
            _register(run["variant"]),
            out,
            run["episodes"],
            seed=run["seed"],
            env_id=ENVS[env],
            env_kwargs=kwargs,
            progress=False,
        )
        curve, phase = _curve(out / "evaluations.jsonl")
    best = summary["best"] or {}
    return {
        **run,
        "commit": commit(),
        "evaluations": summary["evaluations"],
        "seconds": summary["seconds"],
        "fp32_test": summary["accuracy_fp32_test"],
        "val": best.get("accuracy_val", 0.0),
        "test": best.get("accuracy_test", 0.0),
        "best_episode": best.get("episode"),
        "best_phase": phase or run["variant"],
        "curve": curve,
    }


def _describe(row: dict[str, Any]) -> str:
    return (
        f"{row['case']} {row['variant']} seed {row['seed']}: val {row['val']:.2%} test "
        f"{row['test']:.2%}, best from {row['best_phase']} ({row['seconds']:.0f} s)"
    )


def _origin(phase: str) -> str:
    """Where a best episode came from: warm start, learning, or refinement of which."""
    if phase.startswith("refinement:from-"):
        return "refined " + phase.removeprefix("refinement:from-")
    return phase


def table(rows: Sequence[dict[str, Any]]) -> str:
    """One Markdown table per case: variants, accuracy (mean ± sd), where the best came from."""
    by_case: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_case[r["case"]][r["variant"]].append(r)
    out = []
    for case, variants in by_case.items():
        task, env, budget = case.split(":")
        any_row = next(iter(variants.values()))[0]
        out += [
            f"### {task}, {ENVS[env].split('/')[1]}, {budget} of FP32 BOPs",
            "",
            f"FP32 test accuracy {any_row['fp32_test']:.2%}; {any_row['episodes']} evaluations "
            f"per run, seeds {sorted({r['seed'] for runs in variants.values() for r in runs})}.",
            "",
            "| variant | held-out % | test % | best after (evaluations, median) | best came from |",
            "|---|---|---|---|---|",
        ]
        for variant in ALL:
            runs = variants.get(variant)
            if not runs:
                continue
            reached = [next(i + 1 for i, v in enumerate(r["curve"]) if v >= r["val"]) for r in runs]
            origins = Counter(_origin(r["best_phase"]) for r in runs)
            out.append(
                f"| {variant} | {mean_sd(r['val'] for r in runs)} | "
                f"{mean_sd(r['test'] for r in runs)} | {statistics.median(reached):.0f} | "
                + ", ".join(f"{k} {v}" for k, v in origins.most_common())
                + " |"
            )
        out.append("")
    return "\n".join(out)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Learning curves: best held-out accuracy within budget against evaluations, mean ± sd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cases = sorted({r["case"] for r in rows})
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4.8), squeeze=False)
    for ax, case in zip(axes[0], cases, strict=True):
        for variant in ALL:
            curves = [r["curve"] for r in rows if r["case"] == case and r["variant"] == variant]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            data = np.array([c[:n] for c in curves]) * 100
            mean, sd = data.mean(0), data.std(0)
            x = np.arange(1, n + 1)
            colour = plt.get_cmap("tab20")(ALL.index(variant) % 20)  # one colour per variant
            ax.plot(x, mean, label=variant, lw=1.4, color=colour)
            ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.12)
        task, env, budget = case.split(":")
        ax.set_title(f"{task}, {ENVS[env].split('/')[1]}, {budget} of FP32 BOPs")
        ax.set_xlabel("evaluations")
        ax.set_ylabel("best held-out accuracy within budget (%)")
        low = min(min(r["curve"][len(r["curve"]) // 10 :]) for r in rows if r["case"] == case)
        ax.set_ylim(max(0.0, low * 100 - 5), 100)
        ax.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes[0]:  # one legend below the axes: inside them it hid the curves
        handles.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    fig.legend(
        list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 8),
        fontsize=8, frameon=False,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _commands(rows: Sequence[dict[str, Any]]) -> str:
    """The commands that produced the rows, for the rows that record theirs (newer ones do)."""
    counts = Counter(r["command"] for r in rows if "command" in r)
    if not counts:
        return ""

    def rows_(n: int) -> str:
        return f"{n} row" + ("s" if n != 1 else "")

    listed = "; ".join(f"`{c}` ({rows_(n)})" for c, n in sorted(counts.items()))
    older = sum(1 for r in rows if "command" not in r)
    return f"Commands: {listed}" + (
        f"; {rows_(older)} {'predates' if older == 1 else 'predate'} the field (the module "
        "docstring lists the commands)."
        if older
        else "."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="task:env:budget, comma-separated")
    parser.add_argument("--variants", default=",".join(ALL))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel processes (set JPQ_THREADS=1)"
    )
    parser.add_argument("--report", action="store_true", help="rebuild the table and plot only")
    parser.add_argument("--quick", action="store_true", help="a smoke run, writes nothing")
    args = parser.parse_args()
    configure_threads()
    if args.quick:
        args.cases, args.variants, args.seeds, args.episodes = "digits:v1:1/128", "default", 1, 24
    runs = [
        {"case": c, "variant": v, "seed": s, "episodes": args.episodes}
        for c in args.cases.split(",")
        for s in range(args.seeds)  # seed by seed: an interrupted grid leaves comparable pairs
        for v in args.variants.split(",")
        if s == 0 or v not in BASELINES
    ]
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_grid(runs, Path(tmp) / "runs.jsonl", one, _key, describe=_describe)
        print(table(rows))
        return
    log = RESULTS / f"{NAME}_runs.jsonl"
    if not args.report:
        run_grid(runs, log, one, _key, args.jobs, _describe)
    rows = list({_key(r): r for r in load_rows(log)}.values())  # every run so far, not only these
    plot(rows, RESULTS / f"{NAME}.png")
    body = (
        "# Does learning pay? The two-level controller's phases, ablated\n\n"
        "Best policy within the BOPs budget by the held-out proxy (galen reward, forward wall); "
        "test accuracy on the task's test split. *Best came from*: the phase of the episode that "
        "found the best policy, per run (refined X: a refinement move from a policy of phase X). "
        f"Curves: [{NAME}.png]({NAME}.png). Rows were run at commits "
        f"{', '.join(sorted({r.get('commit', NOTED) for r in rows}))}. {STAMPS} {_commands(rows)}"
        "\n\n" + table(rows)
    )
    print(write_result(NAME, body))


if __name__ == "__main__":
    main()
