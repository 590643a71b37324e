"""``jpq search``: search a compression policy with an agent, then summarise what it found.

The command turns its flags into the environment's and the agent's arguments, runs
``jpq_agents.run.run_search`` (which logs every evaluation and keeps the best policy within
budget) and prints a summary table. Ctrl-C, SIGTERM or SIGHUP stop it with a hint to
``--resume``: every finished evaluation is already in the log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from jpq_env.errors import ArgumentError

from ..catalogue import AGENT_NAMES
from .interrupts import exit_code, interruption
from .output import one_in, table
from .parser import (
    Subparsers,
    add_task_args,
    fraction,
    natural,
    positive,
    seed,
    task_option,
    task_options,
)

__all__ = ["add_parser", "run"]

# Environment arguments that ``jpq search`` sets from its own flags (an --env-option would
# silently win over the flag).
_ENV_FLAGS = {
    "task": "--task",
    "task_options": "--task-option, --data or --weights",
    "reward": "--reward",
    "budget_bops": "--budget-bops",
    "budget_size": "--budget-size",
    "enforcement": "--enforcement",
    "device": "--device",
}


def add_parser(subparsers: Subparsers) -> None:
    """Add ``jpq search`` and its options to ``subparsers``."""
    parser = subparsers.add_parser("search", help="search a compression policy with an agent")
    parser.add_argument(
        "--agent", default="two-level", choices=sorted(AGENT_NAMES), help="search agent"
    )
    add_task_args(parser, None)  # digits, or a bench environment's own task
    parser._option_string_actions["--task"].help = (
        "built-in name or package.module:factory (default: digits; a JPQBench environment has "
        "its own)"
    )
    _add_env_args(parser)
    _add_run_args(parser)
    _add_option_args(parser)
    parser.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="evaluate on a Ray cluster: 'auto' (the cluster this machine is in) or HOST:PORT",
    )
    parser.add_argument(
        "--workers",
        type=positive,
        default=None,
        help="Ray actors evaluating at once (default: one per GPU, else per CPU); alone, starts "
        "a local Ray",
    )
    parser.set_defaults(func=run)


def _add_env_args(parser: argparse.ArgumentParser) -> None:
    """The environment: its id, budgets, reward design and budget enforcement."""
    parser.add_argument(
        "--env",
        default="jpq_env/JPQWeightsActs-v0",
        help="registered environment id (JPQWeightsActs-v0: weights and activations; "
        "JPQWeights-v0: weights only)",
    )
    parser.add_argument(
        "--budget-bops",
        type=fraction,
        default=argparse.SUPPRESS,
        help="fraction of FP32 BOPs (e.g. 1/128), or none; default: the environment's "
        "(1/128 on JPQWeightsActs-v0, 1/64 on JPQWeights-v0)",
    )
    parser.add_argument(
        "--budget-size", type=fraction, default=None, help="fraction of FP32 weight bits, or none"
    )
    parser.add_argument(
        "--reward",
        default="galen",
        help="reward design name (see jpq list); galen penalises the distance from the budget on "
        "both sides (under it too), galen-r7 only going over",
    )
    parser.add_argument(
        "--enforcement",
        default="wall",
        choices=["wall", "lowering", "none"],
        help="budget enforcement: forward wall (AMC), backward lowering (HAQ), none (penalty only)",
    )


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    """The run: evaluations to spend, seed, output folder, resuming, progress bar."""
    parser.add_argument("--episodes", type=positive, default=300, help="evaluations to spend")
    parser.add_argument("--warmup-episodes", type=natural, default=10, help="DDPG warm-up episodes")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the agent and the env")
    parser.add_argument("--out", default="runs/search", help="output directory")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out (or start one there)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--fidelity",
        choices=("race", "full"),
        default=None,
        help="race: an evaluation that cannot beat the best so far stops early (default for a "
        "new run); full: every evaluation scores the whole held-out split (default: a resumed "
        "run's own)",
    )


def _add_option_args(parser: argparse.ArgumentParser) -> None:
    """Further arguments of the environment and the agent, one KEY=VALUE or a file."""
    parser.add_argument(
        "--env-option",
        type=task_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another argument of the environment, e.g. val_images=1000, metric=kl, "
        "sensitivity=false, channel_groups=8 (repeatable; see the README's env table)",
    )
    parser.add_argument(
        "--agent-option",
        type=task_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a hyperparameter of the agent (repeatable): two-level: a TwoLevelConfig field "
        "(lr=0.001, refine_fraction=0.5, surrogate=false); ddpg/ppo/maskable-ppo: an argument "
        "of the SB3 algorithm (learning_rate=0.001, n_steps=96, noise_std=0.3)",
    )
    parser.add_argument(
        "--hyperparams",
        default=None,
        metavar="FILE.yml",
        help="SB3 agents: hyperparameters in RL Zoo's format (a table keyed by env id, or "
        "'default'); its entry replaces the shipped values it names, --agent-option wins over it",
    )


def run(args: argparse.Namespace) -> int:
    """Run the search and print its summary: 0, or 128 + the signal's number when stopped."""
    from ..run import run_search

    env_kwargs = _env_kwargs(args)
    agent_options = _agent_options(args)
    try:
        summary = run_search(
            args.agent,
            args.out,
            args.episodes,
            seed=args.seed,
            env_id=args.env,
            env_kwargs=env_kwargs,
            resume=args.resume,
            progress=not args.quiet,
            warmup_episodes=args.warmup_episodes,
            ray=args.ray,
            workers=args.workers,
            agent_options=agent_options,
            fidelity=args.fidelity,
        )
    except KeyboardInterrupt as exc:
        return _stopped(args.out, exc)
    _print_summary(summary, args.episodes)
    _print_notes(summary)
    from ..out_dir import listing

    print(f"\nfiles in {args.out}: {listing(Path(args.out))}")
    return 0


def _env_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """The environment's arguments: from the flags, then the --env-option ones (never a flag's)."""
    for key, _ in args.env_option:
        if key in _ENV_FLAGS:
            raise ArgumentError(f"--env-option {key}=...: set it with {_ENV_FLAGS[key]}")
    env_kwargs: dict[str, object] = {
        "reward": args.reward,
        "budget_size": args.budget_size,
        "enforcement": args.enforcement,
    }
    if args.task is not None or "JPQBench" not in args.env:  # a bench has its own task
        env_kwargs["task"] = args.task or "digits"
    if hasattr(args, "budget_bops"):  # else the environment's own (1/128 or 1/64)
        env_kwargs["budget_bops"] = args.budget_bops
    options = task_options(args)
    if options:
        env_kwargs["task_options"] = options
    if args.device != "auto":
        env_kwargs["device"] = args.device
    env_kwargs.update(dict(args.env_option))
    return env_kwargs


def _agent_options(args: argparse.Namespace) -> dict[str, object]:
    """The agent's hyperparameters: --hyperparams (SB3 agents only), then --agent-option."""
    agent_options: dict[str, object] = {}
    if args.hyperparams is not None:
        from ..agent_options import read_hyperparams
        from ..sb3 import ALGOS

        if args.agent not in ALGOS:
            raise ArgumentError(
                f"--hyperparams is for the SB3 agents ({', '.join(sorted(ALGOS))}); the "
                f"{args.agent} agent takes --agent-option"
            )
        agent_options.update(read_hyperparams(args.hyperparams, args.env))
    agent_options.update(dict(args.agent_option))
    return agent_options


def _stopped(out: str, exc: KeyboardInterrupt) -> int:
    """Say what stopped the search and how to resume it; the exit status."""
    # Every finished evaluation is already in the log (one fsynced line each).
    if (Path(out) / "evaluations.jsonl").exists():
        hint = (
            f"; the evaluations so far are in '{out}'. Run the same command with --resume "
            "to continue from them."
        )
    else:
        hint = " before the first evaluation: nothing to resume."
    print(f"\njpq: {interruption(exc)}{hint}", file=sys.stderr)
    return exit_code(exc)


def _print_summary(summary: dict[str, Any], episodes: int) -> None:
    """The summary table: agent, evaluations, time, FP32 accuracy, the best policy found."""
    best = summary["best"]
    bench = summary.get("bench")  # a JPQ-Bench search: its accuracies are predicted
    rows: list[tuple[str, object]] = [
        ("agent", summary["agent"]),
        ("evaluations", summary["evaluations"]),
        (
            "wall time",
            f"{summary['seconds']:.1f} s (+{summary.get('setup_seconds', 0):.1f} s set-up)",
        ),
        (
            "FP32 accuracy (val / test)",
            f"{summary['accuracy_fp32_val']:.2%} / {summary['accuracy_fp32_test']:.2%}",
        ),
        ("episodes over budget", summary["budget_violations"]),
    ]
    stopped = summary.get("stopped_early")  # e.g. greedy converged: nothing left to try
    if stopped:
        rows[1] = ("evaluations", f"{summary['evaluations']} of {episodes} (stopped early)")
    if best is None:
        rows.append(("best within budget", "none found"))
    else:
        rows += [
            ("best episode", best["episode"]),
            (
                # On JPQ-Bench the scores are the surrogate's (`jpq validate --real` measures).
                f"best accuracy (val / test){', predicted' if bench else ''}",
                f"{best['accuracy_val']:.2%} / {best['accuracy_test']:.2%}",
            ),
            # The best policy's costs as shares of the FP32 model's (not the FP32 model's own).
            ("best BOPs / FP32 BOPs", f"{best['bops_ratio']:.5f} ({one_in(best['bops_ratio'])})"),
            ("best size / FP32 size", f"{best['size_ratio']:.4f} ({one_in(best['size_ratio'])})"),
        ]
    print(table(("summary", ""), rows))
    if stopped:
        print(f"stopped early, after {summary['evaluations']} of {episodes} evaluations: {stopped}")


def _print_notes(summary: dict[str, Any]) -> None:
    """What else the user should know: a cut-short or resumed run, a reference policy as best."""
    measured = summary.get("sensitivity")
    if measured:
        how = {"measured": "measured in", "disk": "read from the cache in"}.get(
            measured["source"], "already in memory:"
        )
        print(f"layer sensitivities: {how} {measured['seconds']:.1f} s ({measured['cache']})")
    if summary.get("cut_short_by_budget"):
        print(f"cut short by the evaluation budget: {summary['cut_short_by_budget']}")
    replayed = summary.get("replayed_from_log", 0)
    if summary.get("already_finished"):
        print("the run had already finished: its summary.json, nothing was run again")
    elif replayed:
        new = summary["evaluations"] - replayed
        print(
            f"resumed: {replayed} evaluations replayed from the log (not re-scored), {new} new"
            + (" (the run had already finished: this is its summary again)" if not new else "")
        )
    best = summary["best"]
    if best is not None and best.get("same_as"):
        print(
            f"the best policy is the reference policy '{best['same_as']}' (prune-then-quantize):"
            " the search found nothing better within budget"
        )
