"""A 300-evaluation two-level search on ResNet-20 / CIFAR-10: wall time and where it goes.

The issue-14 target: a 300-evaluation two-level search on ResNet-20 with the full 5,000-image
held-out split in at most 10 minutes on 2 idle cores (about 40 minutes before the fast proxy).
This runs one search (``JPQWeightsActs-v0``, galen reward, forward wall) on the prepared workload
(``python -m benchmarks.cifar_workload``) and records, per phase of the controller, the
evaluations, their wall time and the image-forwards the proxy spent (images times the share of
the network's MACs computed: prefix reuse and racing both lower it).

``--plain`` turns off what makes refinement cheap (racing and the surrogate's screening, and
the prefix cache) for the comparison of the refinement's image-forwards per evaluation.

    python -m benchmarks.resnet20_search                      # public or fine-tuned checkpoint
    python -m benchmarks.resnet20_search --plain              # the same without the fast paths
    python -m benchmarks.resnet20_search --budget 1/64 --finetune 1   # then one epoch of
                                                        # jpq finetune of the best policy
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Any

from benchmarks.cifar_workload import DATA, SHARED, WEIGHTS_NAME, task_options
from benchmarks.common import RESULTS, commit, configure_threads, write_result

NAME = "resnet20_search"


def run(
    weights: Path, budget: float, episodes: int, seed: int, plain: bool, finetune_epochs: int = 0
) -> dict[str, Any]:
    """One search; its summary and the per-phase accounting (and the fine-tuned best's test)."""
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
    phases: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    last = {"t": time.perf_counter(), "forwards": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        search = Search(Path(tmp) / "run", RunSettings("two-level", episodes, seed), env)
        stats = search.evaluator.stats

        def on_record(record: dict[str, Any], _: bool) -> None:
            now = time.perf_counter()
            phase = record.get("phase", "").split(":")[0] or "learning"
            p = phases[phase]
            p["evaluations"] += 1
            p["seconds"] += now - last["t"]
            p["image_forwards"] += stats.image_forwards - last["forwards"]
            p["raced"] += record.get("proxy_complete", True) is False
            last.update(t=now, forwards=stats.image_forwards)

        search.on_record = on_record
        config = TwoLevelConfig(race=False, screen=1) if plain else TwoLevelConfig()
        searched = time.perf_counter()
        run_two_level(search, seed, config)
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
        "plain": plain,
        "setup_seconds": round(setup, 1),
        "search_seconds": round(seconds, 1),
        "val_images": evaluator.val_images,
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


def report(rows: list[dict[str, Any]]) -> str:
    """The Markdown of the recorded runs."""
    out = [
        "# A 300-evaluation two-level search on ResNet-20 / CIFAR-10",
        "",
        "Target (issue 14): at most 10 minutes on 2 idle cores with the full held-out split.",
        "",
        "| run | commit | held-out images | search time | per evaluation | target met | best val "
        "/ test (FP32) | best from | test after `jpq finetune` |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for r in rows:
        per = r["search_seconds"] / max(r["episodes"], 1)
        met = "yes" if r["search_seconds"] <= 600 else f"no ({r['search_seconds'] / 600:.1f}x)"
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
            f"(+{r['setup_seconds']:.0f} s set-up) | {per:.2f} s | {met} | {val} / {test} "
            f"({r['fp32_val']:.2%} / {r['fp32_test']:.2%}) | {r['best_phase']} | {tuned} |"
        )
        if r.get("command"):
            notes.append(f"- {kind}, 1/{1 / r['budget']:.0f}: `{r['command']}` at {r['commit']}")
        if r.get("note"):
            notes.append(f"- {kind}, 1/{1 / r['budget']:.0f}: {r['note']}")
    out += ["", *notes] if notes else []
    for r in rows:  # the refinement's cost against the plain run at the same budget and seed
        plain = [
            q for q in rows if q["plain"] and q["budget"] == r["budget"] and q["seed"] == r["seed"]
        ]
        fast = r["phases"].get("refinement")
        if r["plain"] or not plain or not fast or "refinement" not in plain[-1]["phases"]:
            continue
        slow = plain[-1]["phases"]["refinement"]
        ratio = (fast["image_forwards"] / fast["evaluations"]) / (
            slow["image_forwards"] / slow["evaluations"]
        )
        verdict = "met" if ratio <= 1 / 3 else f"missed ({ratio * 3:.2f}x the target)"
        out += [
            "",
            f"Refinement at 1/{1 / r['budget']:.0f}, seed {r['seed']}: {ratio:.3f} of the plain "
            f"run's image-forwards per evaluation (target <= 1/3: {verdict}); best val / test "
            f"{r['best_val']:.2%} / {r['best_test']:.2%} against the plain run's "
            f"{plain[-1]['best_val']:.2%} / {plain[-1]['best_test']:.2%}.",
        ]
    out += [
        "",
        "Per phase (image-forwards: images times the share of the network's MACs computed):",
        "",
        "| run | phase | evaluations | raced | seconds | image-forwards per evaluation |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        kind = ("plain" if r["plain"] else "default") + f", 1/{1 / r['budget']:.0f}"
        for phase, p in r["phases"].items():
            n = max(p["evaluations"], 1)
            out.append(
                f"| {kind} | {phase} | {p['evaluations']:.0f} | {p['raced']:.0f} | "
                f"{p['seconds']:.0f} | {p['image_forwards'] / n:,.0f} |"
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
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--finetune", type=int, default=0, metavar="EPOCHS")
    args = parser.parse_args()
    configure_threads()
    weights = args.weights
    if weights is None:
        tuned = DATA / WEIGHTS_NAME
        weights = tuned if tuned.exists() else SHARED / "resnet20-12fca82f.th"
    started_at = commit()  # the code the run measures (the tree may move on while it runs)
    row = {
        "commit": started_at,
        "command": " ".join(["python -m benchmarks." + NAME, *sys.argv[1:]]),
    }
    row.update(run(weights, args.budget, args.episodes, args.seed, args.plain, args.finetune))
    print(json.dumps(row, indent=1))
    log = RESULTS / f"{NAME}_runs.jsonl"
    with log.open("a") as f:
        f.write(json.dumps(row) + "\n")
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    print(write_result(NAME, report(rows)))


if __name__ == "__main__":
    main()
