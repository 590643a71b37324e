"""``jpq compare`` on digits: the picture and table the README shows.

Searches three agents (two-level, greedy, random) for 100 evaluations with seeds 0-2 on the CLI's
default environment (JPQWeightsActs-v0, digits, 1/128 of FP32 BOPs), one after the other, then
runs ``jpq compare`` over them: ``benchmarks/results/compare_digits.md`` (the table, with the
commit and command) and ``compare_digits.png`` (the learning curves). The runs are kept in
``benchmarks/runs/compare_digits`` (not committed); a rerun resumes them.

    python -m benchmarks.compare_digits            # about 3 minutes on 2 cores
    python -m benchmarks.compare_digits --quick    # 2 agents x 2 seeds x 8 evaluations, no files
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, configure_threads, write_result

NAME = "compare_digits"
RUNS = Path(__file__).parent / "runs" / NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes no results")
    args = parser.parse_args()
    configure_threads()
    from jpq_agents.cli import main as jpq
    from jpq_agents.compare import compare_figure, compare_table, load_run

    agents = ("greedy", "random") if args.quick else ("two-level", "greedy", "random")
    seeds = (0, 1) if args.quick else (0, 1, 2)
    episodes = 8 if args.quick else 100
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) if args.quick else RUNS
        runs = []
        for agent in agents:
            for seed in seeds:
                out = root / f"{agent}-{seed}"
                argv = ["search", "--agent", agent, "--seed", str(seed), "--out", str(out)]
                argv += ["--episodes", str(episodes), "--quiet", "--resume"]
                with contextlib.redirect_stdout(io.StringIO()):
                    code = jpq(argv)
                if code != 0:
                    raise SystemExit(f"jpq {' '.join(argv)} failed with {code}")
                runs.append(load_run(out))
        table = compare_table(runs)
        print(table)
        if args.quick:
            return
        compare_figure(runs, RESULTS / f"{NAME}.png")
        body = (
            "# `jpq compare` on digits\n\n"
            f"{len(agents)} agents, seeds {', '.join(map(str, seeds))}, {episodes} evaluations "
            "each, `jpq search --agent AGENT --seed SEED --episodes 100` (the CLI's default "
            "environment: JPQWeightsActs-v0, digits, 1/128 of FP32 BOPs), then `jpq compare "
            "RUN... --out compare_digits.png`. Accuracies in %, mean ± sd over seeds.\n\n"
            f"{table}\n\n![learning curves]({NAME}.png)"
        )
        print(write_result(NAME, body))


if __name__ == "__main__":
    main()
