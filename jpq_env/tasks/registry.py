"""Finding a task by name: a built-in name or a user factory ``package.module:function``.

Names are plain strings and options plain values (paths, sizes, seeds) so that environment and
command-line arguments stay JSON-able: ``load_task("resnet18-cifar", data="~/cifar",
weights="r18.pt")`` is what ``JPQEnv(task="resnet18-cifar", task_options={...})`` and
``jpq search --task resnet18-cifar --data ~/cifar --weights r18.pt`` do.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jpq_env.tasks.base import Task, TaskError
from jpq_env.validation import did_you_mean

__all__ = ["BUILTIN_TASKS", "load_task"]

# Built-in tasks, by name: "module:function" inside jpq_env.tasks (imported only when asked for).
BUILTIN_TASKS: dict[str, str] = {
    "digits": "jpq_env.tasks.digits:digits_task",
    "digits-deep": "jpq_env.tasks.digits:digits_deep_task",
    "resnet18-cifar": "jpq_env.tasks.vision:resnet18_cifar_task",
    "mobilenet_v2-cifar": "jpq_env.tasks.vision:mobilenet_v2_cifar_task",
    "resnet20-cifar": "jpq_env.tasks.vision:resnet20_cifar_task",
    "resnet18-imagenet": "jpq_env.tasks.vision:resnet18_imagenet_task",
    "mobilenet_v2-imagenet": "jpq_env.tasks.vision:mobilenet_v2_imagenet_task",
}


def _import(module_name: str) -> Any:
    """Import ``module_name``, from the current directory too if it is found only there.

    ``python -m`` puts the current directory on the import path, the ``jpq`` command does not:
    a user's ``mymodule.py`` next to them is found either way. The directory is appended (last),
    so it never shadows an installed module.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        here = Path.cwd()
        local = (here / f"{top}.py").is_file() or (here / top / "__init__.py").is_file()
        if exc.name != top or not local or str(here) in sys.path:
            raise
        sys.path.append(str(here))
        return importlib.import_module(module_name)


def _resolve(spec: str) -> Callable[..., object]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        hint = did_you_mean(spec, BUILTIN_TASKS)
        raise TaskError(
            f"unknown task '{spec}'{hint}: use a built-in name "
            f"({', '.join(sorted(BUILTIN_TASKS))}) or a factory path 'package.module:function'"
        )
    try:
        module = _import(module_name)
    except ImportError as exc:
        raise TaskError(
            f"cannot import module '{module_name}' of task '{spec}': {exc} (searched the import "
            f"path and the current directory '{Path.cwd()}': put the module there or on "
            "PYTHONPATH)"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"task factory '{spec}': module '{module_name}' has no function '{attr}'")
    return factory


def load_task(spec: str | Task, **options: Any) -> Task:
    """Build a task from a built-in name or a ``package.module:function`` factory.

    Args:
        spec: A built-in name (see ``BUILTIN_TASKS``), a factory path, or a ``Task`` (returned
            as is).
        **options: Keyword arguments of the factory, e.g. ``data`` and ``weights`` paths for the
            vision tasks (``jpq_env.tasks.vision``).

    Raises:
        TaskError: If the name is unknown, the factory cannot be imported, does not take the
            options, raises, or returns something other than a ``Task``.
    """
    if isinstance(spec, Task):
        if options:
            raise TaskError(f"task options {sorted(options)} cannot apply to a Task object")
        return spec
    if not isinstance(spec, str):
        raise TaskError(
            "task must be a built-in name, a factory path 'package.module:function' or a "
            f"jpq_env.Task, got {type(spec).__name__} {spec!r}"
        )
    factory = _resolve(BUILTIN_TASKS.get(spec, spec))
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        try:
            accepted = ", ".join(inspect.signature(factory).parameters) or "none"
        except (TypeError, ValueError):
            accepted = "unknown"
        raise TaskError(
            f"task '{spec}' does not take the options {sorted(options)}: {exc} (it accepts: "
            f"{accepted})"
        ) from exc
    except ValueError:  # no signature (a builtin): let the call decide
        pass
    try:
        task = factory(**options)
    except TaskError:
        raise
    except Exception as exc:  # the user's code failed: say which factory, keep the cause
        raise TaskError(f"task factory '{spec}' failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskError(
            f"task factory '{spec}' returned {type(task).__name__}, expected jpq_env.Task"
        )
    return task
