"""Built-in tasks, user task factories and ``make_task`` for a user's own model and data."""

from jpq_env.tasks.base import Task, TaskError
from jpq_env.tasks.registry import BUILTIN_TASKS, load_task
from jpq_env.tasks.user import make_task

__all__ = ["BUILTIN_TASKS", "Task", "TaskError", "load_task", "make_task"]
