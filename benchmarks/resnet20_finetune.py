"""Fine-tuning the searched ResNet-20 policies: does the accuracy come back after the search?

``jpq finetune``'s recipe (learned step sizes initialised from the proxy's quantizers,
distillation from the FP32 model, SGD with a cosine schedule) on ResNet-20 / CIFAR-10:

- ``--choose``: the recipe's defaults, chosen on the **held-out** split (never on test): the
  two-level policy at 1/64 of FP32 BOPs fine-tuned with each (lr, distill) of a small grid;
  rows in ``results/resnet20_finetune_choice_runs.jsonl``.
- default: the leaderboard's best policies at 1/64 (``--budget 128``: at 1/128) of two-level,
  greedy, cmaes-warm, two-stage and uniform (each agent's best by the held-out score)
  fine-tuned with one recipe and the same epochs (``--frontier N``: and N more along the 1/64
  frontier of JPQ-Bench's data; the report's Kendall tau says whether the proxy's ranking
  survives the fine-tune); one row each in
  ``results/resnet20_finetune_runs.jsonl`` (``source``, ``budget``, ``epochs``, ``seed``,
  ``test_before``, ``test_after``, ``val_after``, ``fp32_test``, the per-epoch ``history``,
  ``commit``, ``command``).

Every fine-tune writes per-epoch checkpoints under ``benchmarks/runs/resnet20_finetune/``, so a
killed run continues at its last finished epoch and a killed benchmark at its first missing row.

    python -m benchmarks.cifar_workload                          # once: data and checkpoint
    JPQ_THREADS=2 python -m benchmarks.resnet20_finetune --choose --epochs 2
    JPQ_THREADS=2 python -m benchmarks.resnet20_finetune --epochs 5
    JPQ_THREADS=1 python -m benchmarks.resnet20_finetune --epochs 1 --frontier 10  # and tau
    JPQ_THREADS=1 python -m benchmarks.resnet20_finetune --epochs 1 --budget 128
    JPQ_THREADS=1 python -m benchmarks.resnet20_finetune --epochs 3 --sources two-level,uniform
    python -m benchmarks.resnet20_finetune --report
    python -m benchmarks.resnet20_finetune --quick               # digits, 1 epoch, no files
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, commit, configure_threads, load_rows, run_grid, write_result

NAME = "resnet20_finetune"
LOG = RESULTS / f"{NAME}_runs.jsonl"
CHOICE_LOG = RESULTS / f"{NAME}_choice_runs.jsonl"
RUNS = Path(__file__).parent / "runs" / NAME
LEADERBOARD = Path(__file__).parent / "leaderboard" / "resnet20-cifar"
SOURCES = ("two-level", "greedy", "cmaes-warm", "two-stage", "uniform")
CHOICES = [(lr, distill) for lr in (0.01, 0.003) for distill in (0.0, 0.5, 1.0)]


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return (
        row["source"],
        f"{row['budget']:.8f}",
        str(row["epochs"]),
        str(row["seed"]),
        f"{row['lr']:g}",
        f"{row['distill']:g}",
        row.get("task", "resnet20"),
    )


def _evaluator(run: dict[str, Any]) -> Any:
    from jpq_env import LocalEvaluator, load_task

    if run.get("task") == "digits":
        return LocalEvaluator(load_task("digits"), device="cpu")
    from benchmarks.cifar_workload import DATA, task_options

    return LocalEvaluator(load_task("resnet20-cifar", **task_options(DATA)), device="cpu")


def _policy_path(run: dict[str, Any]) -> Path:
    """A row's policy file: the leaderboard's, or a frontier policy written under RUNS."""
    name = run["policy"]
    return RUNS / name if name.startswith("frontier/") else LEADERBOARD / name


def frontier(n: int, budget: float = 1 / 64) -> list[dict[str, Any]]:
    """``n`` policies along the budget's frontier from JPQ-Bench's data, as policy files.

    The complete rows within budget and within 10% of it, sorted by the proxy's held-out score
    and taken evenly from the best to the median (the part of the frontier a search ranks),
    one per distinct score; each is written to ``RUNS/frontier/<id>.policy.json``.
    """
    from benchmarks.jpq_bench import data_path, decode
    from jpq_env.proxy.bench import BenchModel

    names = BenchModel.load("resnet20-cifar").meta["names"]
    rows = [
        r
        for r in load_rows(data_path(False))
        if r["complete"] and budget * 0.9 <= r["bops_ratio"] <= budget * (1 + 1e-9)
    ]
    rows.sort(key=lambda r: (-r["val"], r["id"]))
    top = rows[: max(len(rows) // 2, 1)]
    picks: list[dict[str, Any]] = []
    for i in np.linspace(0, len(top) - 1, min(n, len(top))).round().astype(int):
        if all(p["val"] != top[i]["val"] for p in picks):
            picks.append(top[i])
    folder = RUNS / "frontier"
    folder.mkdir(parents=True, exist_ok=True)
    for r in picks:
        decode(r, names).save(folder / f"{r['id']}.policy.json")
    return picks


def _digest(policy: Any) -> str:
    """16 hex digits naming a policy (equal policies, equal digests)."""
    import hashlib

    h = hashlib.sha256()
    for part in policy.key():
        h.update(part)
    return h.hexdigest()[:16]


def _same_recipe(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in ("budget", "epochs", "seed", "lr", "distill"))


def one(run: dict[str, Any]) -> dict[str, Any]:
    """One fine-tune, its row (resumes from its own checkpoints).

    A policy already fine-tuned with the same recipe (two agents often find the same one) is not
    run again: the row copies that row's numbers and names it in ``same_as``.
    """
    from jpq_env import Policy
    from jpq_env.proxy.finetune import finetune

    digits = run.get("task") == "digits"
    if not digits:
        policy = Policy.load(_policy_path(run))
        digest = _digest(policy)
        for row in load_rows(Path(run["log"])) if "log" in run else []:
            if row.get("policy_digest") == digest and _same_recipe(row, run):
                keep = {k: run[k] for k in ("source", "budget", "epochs", "seed", "lr", "distill")}
                numbers = {k: v for k, v in row.items() if k != "command"}  # this run's own
                return {**numbers, **keep, "policy": run["policy"], "same_as": row["source"],
                        "commit": run["commit"]}  # fmt: skip
    evaluator = _evaluator(run)
    if digits:
        policy = Policy.uniform(evaluator.graph, 4, 4)
        digest = _digest(policy)
    folder = Path(run["out"]) / "-".join(_key(run)[:-1])
    result = finetune(
        evaluator,
        policy,
        epochs=run["epochs"],
        lr=run["lr"],
        seed=run["seed"],
        distill=run["distill"],
        checkpoint_dir=folder,
        progress=True,
    )
    return {
        **{k: run[k] for k in ("source", "budget", "epochs", "seed", "lr", "distill")},
        **({"task": "digits"} if run.get("task") == "digits" else {}),
        **({"policy": run["policy"]} if "policy" in run else {}),
        "val_before": evaluator.accuracy(policy),  # the proxy's score, what the search ranked by
        "test_before": result.accuracy_before,
        "test_after": result.accuracy_after,
        "val_after": result.history[-1]["val"],
        "fp32_test": evaluator.test_accuracy(None),
        "history": result.history,
        "policy_digest": digest,
        "commit": run["commit"],
    }


def report(rows: list[dict[str, Any]], choice: list[dict[str, Any]]) -> str:
    """The fine-tuned policies against FP32, and the held-out choice of the recipe."""
    out = [
        "# Fine-tuning the searched ResNet-20 policies",
        "",
        "`jpq finetune`'s recipe (LSQ steps from the proxy's quantizers, distillation from FP32, "
        "SGD + cosine), the same epochs for every policy. Accuracies in % on the 10,000 test "
        "images; held-out: the task's held-out split. Target (issue 29): at 1/64 the two-level "
        "policy within 1.0 point of FP32 after the fine-tune, and 0.5 points ahead of uniform "
        "and two-stage.",
    ]
    if choice:
        out += [
            "",
            "## The recipe's defaults, chosen on the held-out split (two-level, 1/64)",
            "",
            "| lr | distill | epochs | held-out after | per epoch (held-out) |",
            "|---|---|---|---|---|",
        ]
        for r in sorted(choice, key=lambda r: -r["val_after"]):
            per = ", ".join(f"{h['val']:.2%}" for h in r["history"])
            out.append(
                f"| {r['lr']:g} | {r['distill']:g} | {r['epochs']} | {r['val_after']:.2%} | {per} |"
            )
    if rows:
        out += [
            "",
            "## The best policies, fine-tuned",
            "",
            "Per agent its best policy by the held-out score (over seeds) on the leaderboard.",
            "",
            "| source | budget | epochs | lr | distill | test before | test after | FP32 | "
            "after - FP32 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(rows, key=lambda r: (-r["budget"], -r["test_after"])):
            out.append(
                f"| {r['source']} | 1/{1 / r['budget']:.0f} | {r['epochs']} | {r['lr']:g} | "
                f"{r['distill']:g} | {r['test_before']:.2%} | {r['test_after']:.2%} | "
                f"{r['fp32_test']:.2%} | {(r['test_after'] - r['fp32_test']) * 100:+.2f} |"
            )
    tau = preference(rows)
    if tau:
        out += [
            "",
            "## Does the search's preference survive fine-tuning? (1/64)",
            "",
            "Kendall tau between the proxy's held-out score (what a search ranks by) and the test "
            "accuracy, over the distinct policies fine-tuned with the same recipe and epochs "
            "(the sources above and the JPQ-Bench frontier policies, `--frontier`):",
            "",
            "| epochs | policies | tau, before fine-tuning | tau, after |",
            "|---|---|---|---|",
        ]
        for epochs, (n, before, after) in sorted(tau.items()):
            out.append(f"| {epochs} | {n} | {before:.3f} | {after:.3f} |")
    commits = sorted({r["commit"] for r in [*rows, *choice]})
    out += ["", f"Rows from commits {', '.join(commits)}; each row names its command in the log."]
    return "\n".join(out)


def sources(budget: float) -> list[tuple[str, str]]:
    """Per agent of ``SOURCES`` on the leaderboard at ``budget``: (agent, its policy file).

    An agent's best entry by the **held-out** score (what its search ranked by; never by test),
    the lowest seed among equals. Agents without an entry at that budget are left out.
    """
    entries = [
        r
        for r in load_rows(LEADERBOARD.parent / "entries.jsonl")
        if r["task"] == "resnet20-cifar" and abs(r["budget"] - budget) < 1e-12
    ]
    out = []
    for agent in SOURCES:
        mine = sorted(
            (r for r in entries if r["agent"] == agent), key=lambda r: (-r["val"], r["seed"])
        )
        if mine:
            out.append((agent, f"1_{round(1 / budget)}/{agent}-seed{mine[0]['seed']}.policy.json"))
    return out


def _val_before(row: dict[str, Any]) -> float | None:
    """The proxy's held-out score of a row's policy (older rows: from the leaderboard's file)."""
    if row.get("val_before") is not None:
        return float(row["val_before"])
    if "policy" not in row and row["source"] in SOURCES:
        row = {**row, "policy": f"1_64/{row['source']}-seed0.policy.json"}
    if "policy" not in row or row["policy"].startswith("frontier/"):
        return None
    import json

    value = json.loads((LEADERBOARD / row["policy"]).read_text()).get("accuracy_val")
    return None if value is None else float(value)


def preference(rows: list[dict[str, Any]], budget: float = 1 / 64) -> dict[int, tuple]:
    """Per epochs: (policies, tau of the proxy's score against test before, and after).

    One row per distinct policy (the same policy found by several agents counts once: equal
    proxy scores and test accuracies before), at least three policies.
    """
    from scipy.stats import kendalltau

    out = {}
    for epochs in sorted({r["epochs"] for r in rows}):
        seen, points = set(), []
        for r in rows:
            val = _val_before(r)
            if r["epochs"] != epochs or abs(r["budget"] - budget) > 1e-12 or val is None:
                continue
            key = (round(val, 6), round(r["test_before"], 6))
            if key in seen:
                continue
            seen.add(key)
            points.append((val, r["test_before"], r["test_after"]))
        if len(points) >= 3:
            v, b, a = (np.array(x) for x in zip(*points, strict=True))
            out[epochs] = (
                len(points),
                float(kendalltau(v, b).statistic),
                float(kendalltau(v, a).statistic),
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs of every fine-tune")
    parser.add_argument("--lr", type=float, default=0.01, help="the recipe's learning rate")
    parser.add_argument("--distill", type=float, default=0.5, help="the distillation weight")
    parser.add_argument(
        "--budget",
        type=int,
        default=64,
        metavar="N",
        help="fine-tune the leaderboard's best policy per agent at 1/N of FP32 BOPs",
    )
    parser.add_argument(
        "--sources",
        default=",".join(SOURCES),
        help="comma-separated agents whose best policy is fine-tuned",
    )
    parser.add_argument("--choose", action="store_true", help="the held-out choice of defaults")
    parser.add_argument(
        "--frontier",
        type=int,
        default=0,
        metavar="N",
        help="also fine-tune N policies along the 1/64 frontier of JPQ-Bench's data (Kendall "
        "tau of the proxy against test, before and after)",
    )
    parser.add_argument("--report", action="store_true", help="the report from the rows so far")
    parser.add_argument("--quick", action="store_true", help="digits, 1 epoch; no files")
    args = parser.parse_args()
    configure_threads()
    stamp = commit()  # the code this process runs: its HEAD when it started
    base = {"budget": 1 / 64, "seed": 0, "epochs": args.epochs, "commit": stamp}
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            run = {**base, "source": "uniform", "epochs": 1, "lr": 0.01, "distill": 0.5}
            rows = run_grid(
                [{**run, "task": "digits", "out": tmp}], Path(tmp) / "r.jsonl", one, _key
            )
            print(report(rows, []))
        return
    if args.choose and not args.report:
        runs = [
            {**base, "source": "two-level", "policy": "1_64/two-level-seed0.policy.json",
             "lr": lr, "distill": distill, "out": str(RUNS / "choice")}
            for lr, distill in CHOICES
        ]  # fmt: skip
        run_grid(runs, CHOICE_LOG, one, _key)
    elif not args.report:
        base["budget"] = 1 / args.budget
        runs = [
            {**base, "source": s, "policy": name, "lr": args.lr, "distill": args.distill,
             "out": str(RUNS), "log": str(LOG)}
            for s, name in sources(base["budget"])
            if s in args.sources.split(",")
        ]  # fmt: skip
        if args.frontier and args.budget != 64:
            parser.error("--frontier is the 1/64 frontier: leave --budget at 64")
        for r in frontier(args.frontier) if args.frontier else []:
            name = f"frontier/{r['id']}.policy.json"
            runs.append(
                {**base, "source": f"frontier:{r['id']}", "policy": name, "lr": args.lr,
                 "distill": args.distill, "out": str(RUNS), "log": str(LOG)}
            )  # fmt: skip
        run_grid(runs, LOG, one, _key)
    resnet = [r for r in load_rows(LOG) if r.get("task", "resnet20") == "resnet20"]
    choice = [r for r in load_rows(CHOICE_LOG) if r.get("task", "resnet20") == "resnet20"]
    if resnet or choice:
        print(write_result(NAME, report(resnet, choice)))


if __name__ == "__main__":
    main()
