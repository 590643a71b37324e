"""``jpq compare RUN... [--out curves.png]``: runs grouped by agent, seeds aggregated.

The work is ``jpq_agents.compare``; this module only adds the subcommand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .parser import Subparsers

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``jpq compare`` and its options to ``subparsers``."""
    parser = subparsers.add_parser(
        "compare",
        help="compare runs: a table (mean ± sd over seeds per agent) and learning curves",
    )
    parser.add_argument("runs", nargs="+", help="run folders (of jpq search)")
    parser.add_argument(
        "--out",
        default=None,
        help="PNG file for the learning curves: best-so-far against evaluations and against "
        "held-out images scored (no picture when left out)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the table; draw the curves into ``--out``."""
    from jpq_env.errors import ArgumentError

    from ..compare import compare_figure, compare_table, load_run
    from .policy_file import RUN_FILES

    out = Path(args.out) if args.out else None
    if out is not None:  # checked before the runs are read
        if out.is_dir() or not out.parent.is_dir():
            raise ArgumentError(f"--out '{out}' must name a file in an existing directory")
        if (out.parent / "run.json").exists() and out.name in RUN_FILES:
            raise ArgumentError(f"--out '{out}' is a file of the run in '{out.parent}'")
    runs = [load_run(path) for path in args.runs]
    print(compare_table(runs))
    if out is not None:
        print(f"learning curves: {compare_figure(runs, out)}")
    return 0
