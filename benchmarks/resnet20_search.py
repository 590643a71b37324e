"""A 300-evaluation two-level search on ResNet-20 / CIFAR-10: wall time and where it goes.

The targets (issue 26): a 300-evaluation two-level search at 1/128 and at 1/64 of FP32 BOPs (seed
0) in at most 5 minutes on 2 idle cores, with a best policy at least as accurate on the test
split as the recorded runs before it (64.58% and 79.55%), and a mean of at most a quarter of a
complete evaluation's image-forwards per evaluation over the whole search. Each invocation runs
the search with today's defaults (``default``: every evaluation races against the best so far)
and, for the ratio, as the code before issue 26 ran it (``today``: complete evaluations outside
the two-level refinement, ``RunSettings(fidelity="full")``), one after the other on the same
machine (``--configs``). It records per phase of the controller the evaluations, their wall time
and the image-forwards the proxy spent (images times the share of the network's MACs computed:
prefix reuse and racing both lower it), the BatchNorm re-calibration's share among them, and the
set-up (the task, and the layer sensitivities measured or read from their cache).

``plain`` turns off what makes refinement cheap (racing and the surrogate's screening, and the
prefix cache) for the comparison of the refinement's image-forwards per evaluation.

    python -m benchmarks.cifar_workload                          # once: data and checkpoint
    python -m benchmarks.resnet20_search                         # 1/128: default, then today
    python -m benchmarks.resnet20_search --budget 1/64
    python -m benchmarks.resnet20_search --configs plain         # without the fast paths
    python -m benchmarks.resnet20_search --budget 1/64 --finetune 1   # then one epoch of
                                                        # jpq finetune of the best policy
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Any

from benchmarks.cifar_workload import DATA, SHARED, WEIGHTS_NAME, task_options
from benchmarks.common import RESULTS, command, commit, configure_threads, write_result

NAME = "resnet20_search"


CONFIGS = ("default", "today", "plain")


def run(
    weights: Path,
    budget: float,
    episodes: int,
    seed: int,
    config: str = "default",
    finetune_epochs: int = 0,
) -> dict[str, Any]:
    """One search; its summary and the per-phase accounting (and the fine-tuned best's test)."""
    from jpq_env.proxy import sensitivity

    plain = config == "plain"
    import gymnasium as gym

    from jpq_agents.search import RunSettings, Search
    from jpq_agents.two_level import TwoLevelConfig, run_two_level
    from jpq_env import LocalEvaluator, load_task

    start = time.perf_counter()
    task = load_task("resnet20-cifar", **task_options(DATA, weights))
    evaluator = LocalEvaluator(task, **({"prefix_cache_mb": 0} if plain else {}))
    env = gym.make(
        "jpq_env/JPQWeightsActs-v0",
        task=task,
        evaluator=evaluator,
        budget_bops=budget,
        sensitivity=True,
    ).unwrapped
    setup = time.perf_counter() - start
    measured = sensitivity.last_measurement()
    phases: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    last = {"t": time.perf_counter(), "forwards": 0.0, "calib": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        fidelity = "race" if config == "default" else "full"
        settings = RunSettings("two-level", episodes, seed, fidelity=fidelity)
        search = Search(Path(tmp) / "run", settings, env)
        stats = search.evaluator.stats

        def on_record(record: dict[str, Any], _: bool) -> None:
            now = time.perf_counter()
            phase = record.get("phase", "").split(":")[0] or "learning"
            p = phases[phase]
            p["evaluations"] += 1
            p["seconds"] += now - last["t"]
            p["image_forwards"] += stats.image_forwards - last["forwards"]
            p["calibration_forwards"] += stats.calibration_forwards - last["calib"]
            p["raced"] += record.get("proxy_complete", True) is False
            last.update(t=now, forwards=stats.image_forwards, calib=stats.calibration_forwards)

        search.on_record = on_record
        agent_config = TwoLevelConfig(race=False, screen=1) if plain else TwoLevelConfig()
        searched = time.perf_counter()
        run_two_level(search, seed, agent_config)
        seconds = time.perf_counter() - searched
        best = search.best
        policy = search.best_policy()
        test = evaluator.test_accuracy(policy) if policy is not None else None
        search.release()
    tuned: dict[str, Any] = {}
    if finetune_epochs and policy is not None:
        from jpq_env.proxy.finetune import finetune

        started = time.perf_counter()
        result = finetune(evaluator, policy, epochs=finetune_epochs)  # jpq finetune's defaults
        tuned = {
            "finetune_epochs": finetune_epochs,
            "finetuned_test": result.accuracy_after,
            "finetune_seconds": round(time.perf_counter() - started, 1),
        }
    return {
        "weights": weights.name,
        "budget": budget,
        "episodes": episodes,
        "seed": seed,
        "config": config,
        "plain": plain,
        "setup_seconds": round(setup, 1),
        "sensitivity": None
        if measured is None
        else {"source": measured.source, "seconds": round(measured.seconds, 1)},
        "search_seconds": round(seconds, 1),
        "val_images": evaluator.val_images,
        "calib_images": evaluator.calib_images,
        "fp32_val": evaluator.fp32_accuracy,
        "fp32_test": evaluator.test_accuracy(None),
        "best_val": None if best is None else best["accuracy"],
        "best_test": test,
        "best_phase": None if best is None else best.get("phase"),
        "best_bops": None if best is None else best["bops_ratio"],
        "stats": stats.as_dict(),
        "phases": {k: dict(v) for k, v in phases.items()},
        **tuned,
    }


BEFORE = {0.0078125: 0.6458, 0.015625: 0.7955}
"""Best test accuracy of the recorded default runs before issue 26, by budget."""


def _complete(row: dict[str, Any]) -> int:
    """Image-forwards of one complete evaluation: the held-out split and the calibration."""
    return int(row["val_images"]) + int(row.get("calib_images", 512))


def _issue26_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| budget | run | commit | search time | set-up | target <= 5 min | best val / test "
        "(FP32) | test >= before | image-forwards per evaluation | target <= 1/4 | of which "
        "re-calibration |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = r["stats"]["image_forwards"] / max(r["stats"]["evaluations"], 1)
        share = per / _complete(r)
        calib = r["stats"].get("calibration_forwards", 0.0) / max(r["stats"]["image_forwards"], 1)
        minutes = r["search_seconds"] / 60
        met = "yes" if r["search_seconds"] <= 300 else f"no ({r['search_seconds'] / 300:.2f}x)"
        before = BEFORE.get(r["budget"])
        better = (
            "-"
            if before is None or r["best_test"] is None
            else (
                f"yes (+{100 * (r['best_test'] - before):.2f})"
                if r["best_test"] >= before
                else f"no ({100 * (r['best_test'] - before):.2f})"
            )
        )
        sens = r.get("sensitivity") or {}
        setup = f"{r['setup_seconds']:.0f} s" + (
            f" (sensitivities {sens['source']}, {sens['seconds']:.0f} s)" if sens else ""
        )
        out.append(
            f"| 1/{1 / r['budget']:.0f} | {r['config']}, seed {r['seed']} | {r['commit']} | "
            f"{minutes:.1f} min | {setup} | {met if r['config'] == 'default' else '-'} | "
            f"{r['best_val']:.2%} / {r['best_test']:.2%} ({r['fp32_val']:.2%} / "
            f"{r['fp32_test']:.2%}) | {better} | {per:,.0f} ({share:.2f} of {_complete(r):,}) | "
            f"{('yes' if share <= 0.25 else 'no') if r['config'] == 'default' else '-'} | "
            f"{calib:.0%} |"
        )
    ratios = []
    for r in rows:
        if r["config"] != "default":
            continue
        same = [
            q
            for q in rows
            if q["config"] == "today"
            and q["budget"] == r["budget"]
            and q["seed"] == r["seed"]
            and q["commit"] == r["commit"]
        ]
        if same:
            q = same[-1]
            ratios.append(
                f"- 1/{1 / r['budget']:.0f}: today's defaults took {q['search_seconds'] / 60:.1f}"
                f" min, {q['search_seconds'] / r['search_seconds']:.2f}x the time of the default "
                f"run (best test {q['best_test']:.2%} against {r['best_test']:.2%})"
            )
    return out + (["", *ratios] if ratios else [])


def _history_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| run | commit | held-out images | search time | per evaluation | best val "
        "/ test (FP32) | best from | test after `jpq finetune` |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = r["search_seconds"] / max(r["episodes"], 1)
        kind = "plain (no racing, screening, prefix cache)" if r["plain"] else "default"
        val = "-" if r["best_val"] is None else f"{r['best_val']:.2%}"
        test = "-" if r["best_test"] is None else f"{r['best_test']:.2%}"
        tuned = "-"
        if r.get("finetuned_test") is not None:
            gap = 100 * (r["fp32_test"] - r["finetuned_test"])
            tuned = (
                f"{r['finetuned_test']:.2%} ({r['finetune_epochs']} epoch, "
                f"{r['finetune_seconds'] / 60:.0f} min; {gap:.2f} points below FP32)"
            )
        out.append(
            f"| {kind}, {r['weights']}, 1/{1 / r['budget']:.0f}, seed {r['seed']} | "
            f"{r.get('commit', '-')} | {r['val_images']:,} | {r['search_seconds'] / 60:.1f} min "
            f"(+{r['setup_seconds']:.0f} s set-up) | {per:.2f} s | {val} / {test} "
            f"({r['fp32_val']:.2%} / {r['fp32_test']:.2%}) | {r['best_phase']} | {tuned} |"
        )
    return out


def report(rows: list[dict[str, Any]]) -> str:
    """The Markdown of the recorded runs."""
    current = [r for r in rows if "config" in r]
    older = [r for r in rows if "config" not in r]
    out = [
        "# A 300-evaluation two-level search on ResNet-20 / CIFAR-10",
        "",
        "Targets (issue 26), `JPQWeightsActs-v0`, seed 0, 2 idle cores, the full 5,000-image "
        "held-out split: the search in at most 5 minutes, its best at least as accurate on the "
        "test split as before (64.58% at 1/128, 79.55% at 1/64), a mean of at most a quarter of "
        "a complete evaluation's image-forwards per evaluation. `default`: every evaluation "
        "races against the best so far; `today`: the code's defaults before issue 26 (complete "
        "evaluations outside the two-level refinement), run in the same invocation.",
        "",
        *_issue26_table(current),
    ]
    notes = [
        f"- {r.get('config', 'plain' if r['plain'] else 'default')}, 1/{1 / r['budget']:.0f}: "
        f"`{r['command']}` at {r['commit']}"
        for r in rows
        if r.get("command")
    ]
    out += ["", "Commands:", "", *notes] if notes else []
    if older:
        out += [
            "",
            "## Before issue 26 (BatchNorm re-calibrated by averaged batch moments; racing in "
            "the refinement only)",
            "",
            *_history_table(older),
        ]
    out += [
        "",
        "Per phase (image-forwards: images times the share of the network's MACs computed; "
        "re-calibration: their BatchNorm re-calibration part):",
        "",
        "| run | phase | evaluations | raced | seconds | image-forwards per evaluation | "
        "re-calibration |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kind = r.get("config", "plain" if r["plain"] else "default-before-26")
        kind += f", 1/{1 / r['budget']:.0f}, {r.get('commit', '-')}"
        for phase, ph in r["phases"].items():
            n = max(ph["evaluations"], 1)
            calib = ph.get("calibration_forwards")
            out.append(
                f"| {kind} | {phase} | {ph['evaluations']:.0f} | {ph['raced']:.0f} | "
                f"{ph['seconds']:.0f} | {ph['image_forwards'] / n:,.0f} | "
                f"{'-' if calib is None else f'{calib / n:,.0f}'} |"
            )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", type=Path, default=None, help="default: fine-tuned, else public"
    )
    parser.add_argument(
        "--budget", type=lambda t: float(Fraction(t)), default=1 / 128, help="e.g. 1/64"
    )
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--configs", default="default,today", help=f"comma-separated, from {CONFIGS}"
    )
    parser.add_argument("--finetune", type=int, default=0, metavar="EPOCHS")
    parser.add_argument("--report", action="store_true", help="rewrite the report only")
    args = parser.parse_args()
    log = RESULTS / f"{NAME}_runs.jsonl"
    if not args.report:
        configure_threads()
        weights = args.weights
        if weights is None:
            tuned = DATA / WEIGHTS_NAME
            weights = tuned if tuned.exists() else SHARED / "resnet20-12fca82f.th"
        started_at = commit()  # the code the run measures (the tree may move on while it runs)
        for config in args.configs.split(","):
            if config not in CONFIGS:
                parser.error(f"unknown config {config!r}: choose from {CONFIGS}")
            row = {
                "commit": started_at,
                "command": command(),
            }
            row.update(run(weights, args.budget, args.episodes, args.seed, config, args.finetune))
            print(json.dumps(row, indent=1))
            with log.open("a") as f:  # a row as soon as its search is done
                f.write(json.dumps(row) + "\n")
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    print(write_result(NAME, report(rows)))


if __name__ == "__main__":
    main()
