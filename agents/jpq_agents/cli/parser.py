"""Argument helpers every ``jpq`` subcommand shares: the parser class, value types, task options.

Each subcommand module adds its own subparser (``add_parser(subparsers)``) with these helpers, so
an option two commands share (``--task``, ``--seed``, a budget) is spelled and checked in one
place. Nothing here imports torch: ``jpq --help`` builds every subparser.
"""

from __future__ import annotations

import argparse
import os
from typing import TypeAlias

__all__ = [
    "CommandParser",
    "Subparsers",
    "add_task_args",
    "add_task_data_args",
    "fraction",
    "natural",
    "positive",
    "seed",
    "task_option",
    "task_options",
]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``ArgumentParser.add_subparsers`` returns (argparse has no public name for it)."""


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` to an option's help, once.

    Not when the help already says its default, nor when there is none to show (None, an empty
    list, a flag's False).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        none = default is None or default is False or default == [] or default is argparse.SUPPRESS
        if "default" in text.lower() or none:
            return text
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """Every (sub)command's help shows the options' defaults (once)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _check_value(self, action: argparse.Action, value: object) -> None:
        """Check ``choices`` as argparse does, suggesting the closest choice."""
        if action.choices is not None and value not in action.choices:
            from jpq_env.validation import did_you_mean

            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(
                action,
                f"invalid choice: {value!r}{did_you_mean(value, choices)} (choose from "
                f"{', '.join(map(repr, choices))})",
            )


def task_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE``; the value is read as JSON when it parses (numbers, lists), else a string.

    A comma-separated list of numbers (``mean=0.485,0.456,0.406``) is a list, as in JSON.
    """
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        pass
    if "," in value:
        try:
            parts = [json.loads(part) for part in value.split(",")]
        except json.JSONDecodeError:
            return key, value
        if all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in parts):
            return key, parts
    return key, value


def add_task_args(parser: argparse.ArgumentParser, task_default: str | None) -> None:
    """Add the options that choose and build a task: --task, --data, --weights, ... --device."""
    parser.add_argument(
        "--task", default=task_default, help="built-in name or package.module:factory"
    )
    add_task_data_args(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")


def add_task_data_args(parser: argparse.ArgumentParser, when: str = "") -> None:
    """Add --data, --weights and --task-option (``when`` prefixes their help, e.g. "--real: ")."""
    parser.add_argument(
        "--data", default=None, help=f"{when}data folder of the task (vision tasks)"
    )
    parser.add_argument(
        "--weights", default=None, help=f"{when}state_dict file of the task's model"
    )
    parser.add_argument(
        "--task-option",
        type=task_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"{when}another argument of the task factory, e.g. val_size=1000 (repeatable)",
    )


def task_options(args: argparse.Namespace) -> dict[str, object]:
    """The task factory's arguments from --task-option, --data and --weights (paths absolute)."""
    options: dict[str, object] = dict(args.task_option)
    for key in ("data", "weights"):  # absolute, so the run's settings work from any folder
        if getattr(args, key) is not None:
            options[key] = os.path.abspath(os.path.expanduser(getattr(args, key)))
    return options


def fraction(text: str) -> float | None:
    """A budget: a fraction of FP32 in (0, 1], as ``0.015625`` or ``1/64``; ``none`` for none."""
    if text.lower() == "none":
        return None
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"not a fraction: '{text}'") from exc
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a budget must lie in (0, 1], got {text}")
    return value


def _integer(text: str, low: int, high: int | None, rule: str) -> int:
    """An integer option in [low, high) (argparse's error names the option and ``rule``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: '{text}'") from None
    if value < low or (high is not None and value >= high):
        raise argparse.ArgumentTypeError(f"{rule}, got {value}")
    return value


def seed(text: str) -> int:
    """A seed, in [0, 2**32)."""
    return _integer(text, 0, 2**32, "a seed must lie in [0, 2**32)")


def natural(text: str) -> int:
    """A count that may be 0."""
    return _integer(text, 0, None, "must be at least 0")


def positive(text: str) -> int:
    """A count of at least 1."""
    return _integer(text, 1, None, "must be at least 1")
