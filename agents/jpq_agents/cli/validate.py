"""``jpq validate``: replay the policies a run logged and check their scores match the log.

The work is ``jpq_agents.validate.validate``; this module only adds the subcommand.
"""

from __future__ import annotations

import argparse

from .parser import Subparsers

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
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Replay and compare: 0 when every score matches, 1 at the first mismatch."""
    from ..validate import validate

    return validate(args.path, task=args.task, device=args.device, progress=not args.quiet)
