"""Task factories that are wrong in one way each (named as ``tests.bad_tasks:NAME``).

``good`` is the control: the same small model and data, nothing wrong, so a failure of any other
factory is caused by its one defect.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from jpq_env.tasks import Task

CLASSES = 4


def _data(n: int = 8, shape: tuple[int, ...] = (3, 8, 8), labels: torch.Tensor | None = None):
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, torch.arange(n) % CLASSES if labels is None else labels)


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, CLASSES)
    ).eval()


def _task(model: nn.Module | None = None, **splits: Dataset) -> Task:
    d = _data()
    parts: dict[str, Dataset] = {"train": d, "val": d, "calib": d, "test": d, **splits}
    return Task(
        "bad",
        model or _model(),
        d.tensors[0][:1],
        parts["train"],
        parts["val"],
        parts["calib"],
        parts["test"],
        CLASSES,
    )


class _Branchy(nn.Module):
    """Data-dependent control flow in forward: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x.mean((2, 3)))


def good() -> Task:
    return _task()


def returns_a_tuple() -> tuple[nn.Module, Dataset]:
    return _model(), _data()


def raises() -> Task:
    raise RuntimeError("the dataset server is down")


def no_compressible_layers() -> Task:
    return _task(nn.Sequential(nn.Flatten(), nn.ReLU()))


def untraceable() -> Task:
    return _task(_Branchy().eval())


def wrong_input_shape() -> Task:
    return _task(val=_data(shape=(1, 8, 8)))


def labels_out_of_range() -> Task:
    return _task(val=_data(labels=torch.full((8,), CLASSES + 5)))


def float_labels() -> Task:
    return _task(calib=_data(labels=torch.zeros(8)))


def empty_val() -> Task:
    return _task(val=TensorDataset(torch.empty(0, 3, 8, 8), torch.empty(0, dtype=torch.long)))


def inputs_only() -> Task:
    return _task(calib=TensorDataset(torch.randn(8, 3, 8, 8)))


def wrong_num_classes() -> Task:
    task = _task()
    task.num_classes = 10
    return task
