"""``jpq list``: the tasks, agents, reward designs and environment ids the other commands take.

Named ``list_cmd`` rather than ``list`` so that the module does not shadow the built-in.
"""

from __future__ import annotations

import argparse

from ..catalogue import listing
from .parser import Subparsers

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``jpq list`` to ``subparsers``."""
    parser = subparsers.add_parser("list", help="tasks, agents, reward designs and environment ids")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the listing; always 0."""
    print(listing())
    return 0
