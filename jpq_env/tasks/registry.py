"""Finding a task by name: a built-in name or a user factory ``package.module:function``.

Names are plain strings so that environment and command-line arguments stay JSON-able.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from jpq_env.tasks.base import Task, TaskError

__all__ = ["BUILTIN_TASKS", "load_task"]

# Built-in tasks, by name: "module:function" inside jpq_env.tasks (imported only when asked for).
BUILTIN_TASKS: dict[str, str] = {
    "digits": "jpq_env.tasks.digits:digits_task",
    "digits-deep": "jpq_env.tasks.digits:digits_deep_task",
}


def _resolve(spec: str) -> Callable[[], object]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise TaskError(
            f"unknown task '{spec}': use a built-in name ({', '.join(sorted(BUILTIN_TASKS))}) "
            "or a factory path 'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskError(f"cannot import module '{module_name}' of task '{spec}': {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"task factory '{spec}': module '{module_name}' has no function '{attr}'")
    return factory


def load_task(spec: str | Task) -> Task:
    """Build a task from a built-in name or a ``package.module:function`` factory.

    The factory takes no arguments and returns a ``Task``.

    Raises:
        TaskError: If the name is unknown, the factory cannot be imported, or it returns
            something other than a ``Task``.
    """
    if isinstance(spec, Task):
        return spec
    factory = _resolve(BUILTIN_TASKS.get(spec, spec))
    task = factory()
    if not isinstance(task, Task):
        raise TaskError(
            f"task factory '{spec}' returned {type(task).__name__}, expected jpq_env.Task"
        )
    return task
