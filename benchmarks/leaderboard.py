"""The leaderboard: the best policies found per task and budget, each one replayable.

Every entry is a run's ``policy.json`` copied to ``benchmarks/leaderboard/<task>/1_<N>/`` and a
line in ``benchmarks/leaderboard/entries.jsonl`` naming the task, budget, agent, seed, the best
policy's held-out and test accuracy, its BOPs and size ratios, the command and the commit that
produced it. ``benchmarks/leaderboard/README.md`` is the table, best test accuracy first.

Anyone submits a result the same way: run a search, add its directory here, and open a pull
request; ``jpq validate`` replays the policy through a fresh proxy and must reproduce its logged
accuracy, BOPs and size exactly (``--check`` does it for every entry whose task is available;
the test suite does it for the built-in digits tasks).

    python -m benchmarks.leaderboard --add RUN_DIR [RUN_DIR ...]   # copy a finished run in
    python -m benchmarks.leaderboard                               # rewrite the table
    python -m benchmarks.leaderboard --check                       # jpq validate every entry
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import commit, load_rows

ROOT = Path(__file__).parent / "leaderboard"
ENTRIES = ROOT / "entries.jsonl"


def _budget(run: dict[str, Any], summary: dict[str, Any]) -> float:
    """The run's BOPs budget as a fraction of FP32 (the env's default when it set none)."""
    given = run.get("env", {}).get("budget_bops")
    if isinstance(given, (int, float)):
        return float(given)
    return float(summary["budget"]["bops"])


def add(run_dir: Path, command: str | None = None) -> dict[str, Any]:
    """Copy a finished run's best policy in and append its entry; the entry.

    ``command``: what produced the run, when it was not a plain ``jpq search`` (a benchmark).
    """
    run = json.loads((run_dir / "run.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary.get("best")
    finished = summary.get("evaluations") == run["episodes"] or "stopped_early" in summary
    if not best or not finished:
        raise SystemExit(f"'{run_dir}' is not a finished run with a best policy")
    task = str(run["env"].get("task", "digits"))
    budget = _budget(run, summary)
    folder = ROOT / task / f"1_{round(1 / budget)}"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{run['agent']}-seed{run['seed']}.policy.json"
    shutil.copyfile(run_dir / "policy.json", folder / name)
    entry = {
        "task": task,
        "budget": budget,
        "env": run["env"].get("id"),
        "agent": run["agent"],
        "seed": run["seed"],
        "evaluations": summary["evaluations"],
        "val": best["accuracy_val"],
        "test": best["accuracy_test"],
        "bops_ratio": best["bops_ratio"],
        "size_ratio": best["size_ratio"],
        "fp32_test": summary["accuracy_fp32_test"],
        "file": str((folder / name).relative_to(ROOT)),
        "command": command
        or (
            f"jpq search --agent {run['agent']} --seed {run['seed']} --episodes "
            f"{run['episodes']} --env {run['env'].get('id')} --task {task}"
            + (f" --budget-bops {budget}" if "budget_bops" in run["env"] else "")
        ),
        "date": summary.get("date"),
        "added_at": commit(),  # the commit this entry was added at (the run's date says when)
    }
    rows = [r for r in load_rows(ENTRIES) if r["file"] != entry["file"]]
    ENTRIES.write_text("".join(json.dumps(r) + "\n" for r in [*rows, entry]))
    return entry


def table(rows: list[dict[str, Any]]) -> str:
    """The README: per task and budget, the entries by test accuracy."""
    out = [
        "# Leaderboard",
        "",
        "The best policies found per task and BOPs budget (fraction of FP32), by test accuracy. "
        "Each `policy.json` here replays with `jpq validate FILE` to its logged held-out accuracy, "
        "BOPs and size exactly (ResNet-20 entries need `python -m benchmarks.cifar_workload` "
        "and `--task` options for the data). To submit: run `jpq search`, then `python -m "
        "benchmarks.leaderboard --add RUN_DIR` and open a pull request with the files it adds; "
        "CI replays the digits entries, maintainers the others (`--check`).",
    ]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["budget"]), []).append(r)
    for (task, budget), entries in sorted(groups.items()):
        out += [
            "",
            f"## {task}, 1/{1 / budget:.0f} of FP32 BOPs",
            "",
            "| rank | agent (seed) | test | held-out | BOPs | size | FP32 test | policy "
            "| command |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        ordered = sorted(entries, key=lambda r: (-r["test"], -r["val"]))
        for i, r in enumerate(ordered, 1):
            out.append(
                f"| {i} | {r['agent']} ({r['seed']}) | {r['test']:.2%} | {r['val']:.2%} | "
                f"1/{1 / r['bops_ratio']:.0f} | 1/{1 / r['size_ratio']:.1f} | "
                f"{r['fp32_test']:.2%} | [{Path(r['file']).name}]({r['file']}) | "
                f"`{r['command']}` ({str(r.get('date', ''))[:10]}) |"
            )
    return "\n".join(out) + "\n"


def check(rows: list[dict[str, Any]], tasks: set[str] | None = None) -> int:
    """``jpq validate`` every entry (of ``tasks``); the number that did not replay exactly."""
    from jpq_agents.validate import validate

    failed = 0
    for r in rows:
        if tasks is not None and r["task"] not in tasks:
            continue
        code = validate(ROOT / r["file"])
        failed += int(code != 0)
        print(f"{r['file']}: {'ok' if code == 0 else 'MISMATCH'}", flush=True)
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--add", nargs="+", type=Path, default=[], metavar="RUN_DIR")
    parser.add_argument("--command", default=None, help="what produced the added runs")
    parser.add_argument("--check", action="store_true", help="jpq validate every entry")
    args = parser.parse_args()
    for run_dir in args.add:
        print(json.dumps(add(run_dir, args.command)))
    rows = load_rows(ENTRIES)
    if args.check:
        sys.exit(1 if check(rows) else 0)
    (ROOT / "README.md").write_text(table(rows))
    print(ROOT / "README.md")


if __name__ == "__main__":
    main()
