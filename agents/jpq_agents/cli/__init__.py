"""The ``jpq`` command line: one module per subcommand, each adding its own subparser.

- ``jpq search``: search a policy with an agent (two-level controller by default, SB3 agents,
  baselines), logging every evaluation, keeping the best policy within budget;
- ``jpq evaluate POLICY``: test accuracy, BOPs, size and a per-layer table;
- ``jpq finetune POLICY``: short quantization-aware fine-tuning, accuracy before and after;
- ``jpq export POLICY --out FILE``: a compressed checkpoint that reloads into the model;
- ``jpq report``: the compression core on a task (layers, FP32 accuracy, MACs, BOPs, size);
- ``jpq validate RUN_OR_POLICY``: replay logged policies, check their scores match the log;
- ``jpq list``: tasks, agents, reward designs and environment ids; ``jpq --version``.

This module parses the command line and handles what every command shares: errors the user can
fix, interruptions, the threads torch may use. The compression core (torch) is imported once a
command runs, not for ``--help``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..catalogue import version
from . import evaluate, export, finetune, list_cmd, report, search, validate
from .interrupts import exit_code, interruption, stop_signals_interrupt
from .parser import CommandParser

__all__ = ["main"]

_COMMANDS = (list_cmd, validate, report, search, evaluate, finetune, export)
"""The subcommand modules, in the order ``jpq --help`` lists them."""


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="jpq", description="Joint pruning and quantization of PyTorch networks."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jpq`` command.

    Errors the user can fix end with one ``jpq: error:`` line and exit 2; Ctrl-C, SIGTERM and
    SIGHUP stop the work where it is (a search says how to resume) with 130, 143 and 129.
    """
    with stop_signals_interrupt():
        try:
            args = _parser().parse_args(argv)
            # The core, torch included, only once a command runs (a fast --help).
            from jpq_env.errors import JPQError
            from jpq_env.threads import configure_threads

            try:
                configure_threads()  # the cores this process may use (JPQ_THREADS overrides)
                return int(args.func(args))
            except (JPQError, OSError) as exc:  # anything else is a bug: its traceback shows
                print(f"jpq: error: {exc}", file=sys.stderr)
                return 2
        except KeyboardInterrupt as exc:  # during start-up, or in a command other than search
            print(f"\njpq: {interruption(exc)}", file=sys.stderr)
            return exit_code(exc)
