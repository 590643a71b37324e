"""Built-in tasks and user task factories."""

from jpq_env.tasks.base import Task, TaskError
from jpq_env.tasks.registry import BUILTIN_TASKS, load_task

__all__ = ["BUILTIN_TASKS", "Task", "TaskError", "load_task"]
