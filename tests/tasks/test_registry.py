"""Task names (``jpq_env.tasks.registry``): built-in names, user factories by path, task objects."""

import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from jpq_env.tasks import BUILTIN_TASKS, Task, TaskError, load_task


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            from torch.utils.data import TensorDataset
            from jpq_env.tasks import Task

            def small():
                x = torch.zeros(4, 2)
                data = TensorDataset(x, torch.zeros(4, dtype=torch.long))
                model = nn.Sequential(nn.Linear(2, 3))
                return Task("mine", model, x[:1], data, data, data, data, 3)

            def not_a_task():
                return nn.Linear(2, 2)

            value = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_tasks"
    sys.modules.pop("my_tasks", None)


def test_builtin_names_load():
    assert set(BUILTIN_TASKS) >= {"digits", "digits-deep"}
    task = load_task("digits")
    assert task.name == "digits" and task.num_classes == 10


def test_user_factory_by_path(user_module):
    task = load_task(f"{user_module}:small")
    assert task.name == "mine" and isinstance(task.model, nn.Sequential)


def test_task_objects_pass_through():
    x = torch.zeros(1, 2)
    data = TensorDataset(x, torch.zeros(1, dtype=torch.long))
    task = Task("t", nn.Linear(2, 2), x, data, data, data, data, 2)
    assert load_task(task) is task


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("imagenet", r"unknown task 'imagenet' \(did you mean 'resnet18-imagenet'\?\): use a"),
        ("no_such_module_xyz:factory", "cannot import module 'no_such_module_xyz'"),
        ("my_tasks:missing", "module 'my_tasks' has no function 'missing'"),
        ("my_tasks:value", "module 'my_tasks' has no function 'value'"),
        ("my_tasks:not_a_task", "returned Linear, expected jpq_env.Task"),
    ],
)
def test_bad_task_specs_are_named(user_module, spec, message):
    with pytest.raises(TaskError, match=message):
        load_task(spec)


def test_a_factory_module_in_the_current_directory_is_found(tmp_path, monkeypatch):
    """As ``python -m`` does, and as the ``jpq`` command (whose sys.path[0] is its own folder)
    did not: the current directory is searched too, after everything installed."""
    (tmp_path / "jpq_cwd_factory.py").write_text(
        "from jpq_env import load_task\n\ndef task():\n    return load_task('digits')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert load_task("jpq_cwd_factory:task").name == "digits"
    assert sys.path[-1] == str(tmp_path)  # appended: never shadows an installed module
    with pytest.raises(
        TaskError, match=r"cannot import module 'not_here_at_all'.*current directory"
    ):
        load_task("not_here_at_all:task")
