"""``jpq validate``: replay the policies a run logged and check their scores match the log.

The work is ``jpq_agents.validate.validate``; this module only adds the subcommand.
"""

from __future__ import annotations

import argparse

from jpq_env.errors import ArgumentError

from .parser import Subparsers, add_task_data_args, task_options

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``jpq validate`` and its options to ``subparsers``."""
    parser = subparsers.add_parser(
        "validate", help="replay logged policies and check their scores match the log"
    )
    parser.add_argument("path", help="a run folder (its evaluations.jsonl) or a policy.json")
    parser.add_argument("--task", default=None, help="task (default: the one the run names)")
    parser.add_argument(
        "--device", default=None, help="where to replay: auto, cpu or cuda (default: the run's)"
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="a policy found on a bench (JPQBench-*): score it with the real proxy and print the "
        "bench's prediction beside it",
    )
    add_task_data_args(parser, when="--real: ")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Replay and compare: 0 when every score matches, 1 at the first mismatch."""
    from ..validate import validate, validate_real

    if args.real:
        return validate_real(
            args.path, args.task, task_options(args), args.device, progress=not args.quiet
        )
    if args.data or args.weights or args.task_option:
        raise ArgumentError("--data, --weights and --task-option go with --real")
    return validate(args.path, task=args.task, device=args.device, progress=not args.quiet)
