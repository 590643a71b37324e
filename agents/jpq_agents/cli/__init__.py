"""The ``jpq`` command line: one module per subcommand, each adding its own subparser.

- ``jpq search``: search a policy with an agent (two-level controller by default, SB3 agents,
  baselines), logging every evaluation, keeping the best policy within budget;
- ``jpq evaluate POLICY``: test accuracy, BOPs, size and a per-layer table;
- ``jpq finetune POLICY``: short quantization-aware fine-tuning, accuracy before and after;
- ``jpq export POLICY --out FILE``: a compressed checkpoint that reloads into the model;
- ``jpq report``: the compression core on a task (layers, FP32 accuracy, MACs, BOPs, size);
- ``jpq validate RUN_OR_POLICY``: replay logged policies, check their scores match the log;
- ``jpq compare RUN... [--out curves.png]``: runs grouped by agent, mean ± sd over seeds, and
  learning curves against evaluations and against held-out images scored;
- ``jpq list``: tasks, agents, reward designs and environment ids; ``jpq --version``.

This module parses the command line and handles what every command shares: errors the user can
fix, interruptions, the threads torch may use. The compression core (torch) is imported once a
command runs, not for ``--help``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..catalogue import version
from . import compare, evaluate, export, finetune, list_cmd, report, search, validate
from .interrupts import exit_code, interruption, stop_signals_interrupt
from .parser import CommandParser

__all__ = ["main"]

_COMMANDS = (list_cmd, validate, report, search, compare, evaluate, finetune, export)
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


def _quiet_bars_in_logs() -> None:
    """Progress bars write at most one line every few seconds into a file that is no terminal.

    tqdm redraws up to ten times a second; in a log file (CI, ``nohup``, a cluster's job log)
    each redraw is a line. tqdm reads ``TQDM_MININTERVAL`` when it is first imported, which the
    commands do after this (a user's own setting wins).
    """
    if not sys.stderr.isatty() and "tqdm" not in sys.modules:
        os.environ.setdefault("TQDM_MININTERVAL", "5")


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; a mistyped option is reported with its subcommand's usage.

    argparse reports arguments no parser took from the top-level parser, whose usage lists only
    the subcommands: the subcommand's own usage (and a close option name) helps more.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        from jpq_env.validation import did_you_mean

        sub = _subparser(parser, args.command)
        options = [o for a in sub._actions for o in a.option_strings]
        hints = [did_you_mean(x.split("=")[0], options) for x in extra if x.startswith("-")]
        hint = next((h for h in hints if h), "")
        sub.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jpq`` command.

    Errors the user can fix end with one ``jpq: error:`` line and exit 2; Ctrl-C, SIGTERM and
    SIGHUP stop the work where it is (a search says how to resume) with 130, 143 and 129.
    """
    _quiet_bars_in_logs()
    with stop_signals_interrupt():
        try:
            args = _parse(_parser(), argv)
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
