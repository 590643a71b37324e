"""The agents issue's quality bar: best policy within budget per agent, equal evaluations.

On the default task at a BOPs budget of 1/64 of FP32, every agent and baseline gets the same
number of evaluations (baselines that need fewer stop early) over several seeds; the table gives
the best proxy (held-out) accuracy within budget and the test accuracy of that policy.

    python -m benchmarks.agents_quality            # 300 evaluations x 3 seeds, writes results/
    python -m benchmarks.agents_quality --quick    # a smoke run (CI), writes nothing
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import write_result
from jpq_agents.run import run_search

AGENTS = ("two-level", "ddpg", "ppo", "maskable-ppo", "random", "uniform", "two-stage", "greedy")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, no result file")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    episodes, seeds = (12, 1) if args.quick else (args.episodes, args.seeds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for agent in AGENTS:
            val, test, evals, secs = [], [], [], []
            for seed in range(seeds):
                summary = run_search(
                    agent, Path(tmp) / f"{agent}-{seed}", episodes, seed=seed, progress=False
                )
                best = summary["best"]
                val.append(best["accuracy_val"] if best else 0.0)
                test.append(best["accuracy_test"] if best else 0.0)
                evals.append(summary["evaluations"])
                secs.append(summary["seconds"])

            def stat(xs: list[float]) -> str:
                sd = statistics.pstdev(xs) if len(xs) > 1 else 0.0
                return f"{100 * statistics.mean(xs):.2f} ± {100 * sd:.2f}"

            rows.append(
                f"| {agent} | {stat(val)} | {max(val):.2%} | {stat(test)} | "
                f"{statistics.mean(evals):.0f} | {statistics.mean(secs):.1f} |"
            )
            print(rows[-1], flush=True)
    body = "\n".join(
        [
            "# Agents against baselines at equal evaluations (default task, BOPs budget 1/64)",
            "",
            f"{episodes} evaluations per run, seeds 0-{seeds - 1}; `JPQWeights-v0` defaults "
            "(reward "
            "`galen`, forward wall, 4 importance groups, activations at 8 bits). Accuracy in %: "
            "mean ± standard deviation over seeds. FP32: 98.61% val, 99.17% test.",
            "",
            "| agent | best val acc within budget | max over seeds | its test acc | "
            "evaluations used | seconds per run |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    if not args.quick:
        print(f"written to {write_result('agents_quality', body)}")


if __name__ == "__main__":
    main()
