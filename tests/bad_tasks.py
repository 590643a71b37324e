"""Task factories that are wrong in one way each (named as ``tests.bad_tasks:NAME``).

``good`` is the control: the same small model and data, nothing wrong, so a failure of any other
factory is caused by its one defect.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
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


class OddSample(Dataset):
    """A map-style split (not tensors) whose sample ``odd`` has another input shape or label."""

    def __init__(self, n: int, odd: int, shape: bool = True) -> None:
        self.base, self.odd, self.shape = _data(n), odd, shape

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.base[i]
        if i == self.odd:
            return (x[:, :4], int(y)) if self.shape else (x, 99)
        return x, int(y)


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


# ---- models that would compress to a wrong result without a word ------------------------------


def _bn_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, CLASSES),
    ).eval()


class _TwoBranches(nn.Module):
    """Two convs on the same input, added: ``a`` and ``b`` can be tied (same weight shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.a(x) + self.b(x), 1))


class _TiedToTransposed(nn.Module):
    """A conv whose weight is also an uncompressed ConvTranspose2d's (an autoencoder's tie)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 3, padding=1)
        self.up.weight = self.conv.weight
        self.fc = nn.Linear(4 * 6 * 6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.up(self.conv(self.stem(x))), 1))


class _ReadsItsWeight(nn.Module):
    """The output layer's weight is also used functionally in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(x), 1)
        return self.fc(x) + F.linear(x, self.fc.weight)


class _CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(self.conv(x)), 1))


def nan_weight() -> Task:
    model = _model()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    return _task(model)


def inf_buffer() -> Task:
    model = _bn_model()
    with torch.no_grad():
        model[1].running_var[2] = float("inf")
    return _task(model)


def shared_weight() -> Task:
    model = _TwoBranches()
    model.b.weight = model.a.weight
    return _task(model.eval())


def tied_to_uncompressed() -> Task:
    return _task(_TiedToTransposed().eval())


def weight_read_in_forward() -> Task:
    return _task(_ReadsItsWeight().eval())


def weight_normed() -> Task:
    model = _model()
    nn.utils.parametrizations.weight_norm(model[0])
    return _task(model)


def old_weight_norm() -> Task:
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of parametrizations
        nn.utils.weight_norm(model[0])
    return _task(model)


def old_spectral_norm() -> Task:
    model = _model()
    nn.utils.spectral_norm(model[0])
    return _task(model)


def called_twice() -> Task:
    return _task(_CalledTwice().eval())


class _SharedBatchNorm(nn.Module):
    """One BatchNorm module applied after two convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.a(x)))
        x = F.relu(self.bn(self.b(x)))
        return self.fc(x.flatten(1))


def batchnorm_applied_twice() -> Task:
    return _task(_SharedBatchNorm().eval())


class _Scaled(nn.Module):
    """Finite weights, outputs that are not finite: ``scale`` overflows float32, or 0 * inf."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.body, self.how = _model(), how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.how == "overflow":
            return out * 1e30 * 1e30
        return torch.log(out - out.abs() - 1.0)  # log of a negative number: NaN


def overflowing_output() -> Task:
    return _task(_Scaled("overflow").eval())


def nan_output() -> Task:
    return _task(_Scaled("log").eval())


class _NanOnSome(nn.Module):
    """Finite on the example input (sample 0), NaN on held-out samples whose first value is high."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.body, self.threshold = _model(), threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        high = x[:, :1, 0, 0] > self.threshold
        return torch.where(high, torch.full_like(out, float("nan")), out)


def nan_on_some_held_out_images() -> Task:
    x = _data().tensors[0]
    first = float(x[0, 0, 0, 0])
    assert (x[1:, 0, 0, 0] > first).any()
    return _task(_NanOnSome(first).eval())


class _Conv3dInside(nn.Module):
    """A 4-D input, a Conv3d (5-D weight) between two compressible layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.volume = nn.Conv3d(1, 1, (1, 3, 3), padding=(0, 1, 1))
        self.fc = nn.Linear(4 * 6 * 6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x)).unsqueeze(1)
        return self.fc(self.volume(x).flatten(1))


def conv3d_inside() -> Task:
    return _task(_Conv3dInside().eval())


def on_meta_device() -> Task:
    with torch.device("meta"):
        model = _model()
    return _task(model)
