"""A policy file in, a file out: what ``jpq evaluate``, ``finetune`` and ``export`` share.

``load_policy`` reads a ``policy.json`` and builds the task and accuracy proxy it was searched
on, without ever letting the file choose code to import; ``check_output_file`` refuses an
output path that would fail or destroy an input, before any (long) work starts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jpq_env.errors import ArgumentError

from .parser import task_options

if TYPE_CHECKING:
    from jpq_env import LocalEvaluator, Policy

__all__ = ["RUN_FILES", "check_output_file", "file_task", "load_policy"]

RUN_FILES = frozenset(
    {
        "run.json",
        "evaluations.jsonl",
        "monitor.csv",
        "policy.json",
        "summary.json",
        "reference.jsonl",
        "pareto.png",
        "model.zip",
    }
)
"""Files a search writes in its run folder (never an output of another command there)."""


def file_task(data: dict[str, Any], path: str, cli_task: str | None) -> tuple[str, dict[str, Any]]:
    """The task a policy file may be evaluated on, and the options it brings.

    A policy file is data a user may have downloaded: it never chooses code to import. A built-in
    task name in it is used as is; a factory path (``module:function``) only if the user names
    the same factory with ``--task``. Its options must be a JSON object of plain values.
    """
    from jpq_env.errors import PolicyError
    from jpq_env.tasks import BUILTIN_TASKS

    env = data.get("env", {})
    if not isinstance(env, dict):
        raise PolicyError(f"policy file '{path}': 'env' must be an object, got {env!r}")
    named = data.get("task", env.get("task", "digits"))
    if not isinstance(named, str):
        raise PolicyError(f"policy file '{path}': 'task' must be a string, got {named!r}")
    if "task" in env and env["task"] != named:
        raise PolicyError(
            f"policy file '{path}': 'task' is {named!r} but 'env.task' is {env['task']!r}"
        )
    options = env.get("task_options") or {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise PolicyError(
            f"policy file '{path}': 'env.task_options' must be an object of named options, "
            f"got {options!r}"
        )
    if cli_task is not None:  # the user chose the code; the file's options only for that task
        return cli_task, dict(options) if cli_task == named else {}
    if named not in BUILTIN_TASKS:
        raise PolicyError(
            f"policy file '{path}' names the task factory '{named}': a policy file never chooses "
            f"code to import. If you trust that code, name it yourself: --task {named}"
        )
    return named, dict(options)


def load_policy(args: argparse.Namespace) -> tuple[Policy, LocalEvaluator, dict[str, Any]]:
    """The policy in ``args.policy``, checked against the evaluator of its task, and the file."""
    from jpq_env import LocalEvaluator, Policy, load_task
    from jpq_env import validation as check
    from jpq_env.errors import PolicyError
    from jpq_env.jsonfile import read_json

    path = args.policy
    data = read_json(path, "policy file", error=PolicyError)
    policy = Policy.from_json(data)
    task_name, options = file_task(data, path, args.task)
    options.update(task_options(args))  # the command line's options win
    env = data.get("env") or {}
    recalibrate = check.flag(
        f"policy file '{path}': env.bn_recalibration",
        env.get("bn_recalibration", True),
        error=PolicyError,
    )
    task = load_task(task_name, **options)
    evaluator = LocalEvaluator(task, bn_recalibration=recalibrate, device=args.device)
    policy.validate(evaluator.graph)
    _note_conventions(policy, evaluator, env, path)
    return policy, evaluator, data


def _note_conventions(policy: Policy, evaluator: Any, env: dict[str, Any], path: str) -> None:
    """Say so when a policy file departs from the conventions its search imposes.

    A search pins, for example, the layers reading the network input at 8-bit inputs; a file
    edited to 2 bits there describes a policy the search could never produce. It is evaluated as
    written, with a note, instead of silently scoring something else than the search did.
    """
    from jpq_env.core.policy import Conventions

    with contextlib.suppress(ValueError, TypeError):  # odd values: the env's own checks name them
        conventions = Conventions(
            input_bits=env.get("input_bits", 8), first_last_bits=env.get("first_last_bits")
        )
        imposed = conventions.apply(evaluator.graph, policy)
        changed = [
            a.name
            for a, b in zip(policy.layers, imposed.layers, strict=True)
            if a.act_bits != b.act_bits or not (a.bits == b.bits).all()
        ]
        if changed:
            print(
                f"jpq: note: policy file '{path}' departs from its search's conventions in "
                f"{', '.join(changed)} (e.g. the network input at {conventions.input_bits} bits); "
                "evaluated as written",
                file=sys.stderr,
            )


def check_output_file(path: Path, args: argparse.Namespace) -> None:
    """Refuse an output path that cannot take a file or would destroy one, before any work.

    Never the policy file itself, the task's weights or data named in it or on the command line,
    or a run's own files; an existing file only with ``--force``.
    """
    if path.is_dir():
        raise ArgumentError(f"--out '{path}' is a directory: name a file in it")
    if not path.parent.is_dir():
        raise ArgumentError(f"--out '{path}': directory '{path.parent}' does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ArgumentError(f"--out '{path}': directory '{path.parent}' is not writable")
    target = path.resolve()
    for given in _input_paths(args):
        same = False
        with contextlib.suppress(OSError, ValueError):  # not a path: not an input file
            same = Path(given).expanduser().resolve() == target
        if same:
            raise ArgumentError(
                f"--out '{path}' is an input of this command ('{given}'): it would be "
                "overwritten. Choose another file"
            )
    if (path.parent / "run.json").exists() and path.name in RUN_FILES:
        raise ArgumentError(
            f"--out '{path}' is a file of the run in '{path.parent}': choose another"
        )
    if path.exists() and not args.force:
        raise ArgumentError(f"--out '{path}' exists: pass --force to replace it")


def _input_paths(args: argparse.Namespace) -> list[str]:
    """The policy file and every task option, from the command line and from the file."""
    from jpq_env.errors import PolicyError
    from jpq_env.jsonfile import read_json

    inputs = [args.policy, *(str(v) for v in task_options(args).values())]
    with contextlib.suppress(PolicyError, ValueError, AttributeError):  # named later if bad
        env = read_json(args.policy, "policy file", error=PolicyError).get("env", {})
        inputs += [str(v) for v in (env.get("task_options") or {}).values()]
    return inputs
