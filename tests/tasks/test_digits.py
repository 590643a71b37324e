"""Tests of the built-in digits tasks: splits, models, training determinism, checkpoints."""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import fx, nn
from torch.utils.data import Dataset, TensorDataset

from jpq_env.tasks import Task, TaskError, digits
from jpq_env.tasks.digits import (
    DeepDigitsNet,
    DigitsCNN,
    digits_deep_task,
    digits_split_indices,
    digits_splits,
    digits_task,
)

N_SAMPLES = 1797


EXPECTED_SIZES = {"train": 1149, "val": 288, "calib": 256, "test": 360}


COMPRESSIBLE = (nn.Conv2d, nn.Linear)


@pytest.fixture(scope="module")
def splits8() -> dict[str, TensorDataset]:
    return digits_splits(seed=0, size=8)


@pytest.fixture(scope="module")
def cnn_task() -> Task:
    return digits_task()


@pytest.fixture(scope="module")
def deep_task() -> Task:
    return digits_deep_task()


def _compressible(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, COMPRESSIBLE)]


def test_split_sizes(splits8: dict[str, TensorDataset]) -> None:
    assert {name: len(ds) for name, ds in splits8.items()} == EXPECTED_SIZES
    idx = digits_split_indices(0)
    assert {name: len(i) for name, i in idx.items()} == EXPECTED_SIZES


def test_split_indices_disjoint_and_cover() -> None:
    idx = digits_split_indices(0)
    train, val, test, calib = (set(idx[k].tolist()) for k in ("train", "val", "test", "calib"))
    assert not train & val
    assert not train & test
    assert not val & test
    assert train | val | test == set(range(N_SAMPLES))
    assert calib <= train


def test_splits_match_indices(splits8: dict[str, TensorDataset]) -> None:
    data = load_digits()
    for name, idx in digits_split_indices(0).items():
        x, y = splits8[name].tensors
        expected_x = torch.from_numpy(data.data[idx].astype(np.float32) / 16.0)
        assert torch.equal(x.reshape(len(idx), 64), expected_x)
        assert torch.equal(y, torch.from_numpy(data.target[idx].astype(np.int64)))


def test_splits_disjoint_by_content(splits8: dict[str, TensorDataset]) -> None:
    # load_digits has no duplicate images, so content hashes identify samples.
    def hashes(ds: TensorDataset) -> set[str]:
        return {hashlib.sha256(x.numpy().tobytes()).hexdigest() for x in ds.tensors[0]}

    train, val, test = (hashes(splits8[k]) for k in ("train", "val", "test"))
    assert len(train) + len(val) + len(test) == N_SAMPLES
    assert not train & val
    assert not train & test
    assert not val & test
    assert hashes(splits8["calib"]) <= train


def test_splits_stratified(splits8: dict[str, TensorDataset]) -> None:
    overall = np.bincount(load_digits().target, minlength=10) / N_SAMPLES
    for name, ds in splits8.items():
        labels = ds.tensors[1].numpy()
        proportions = np.bincount(labels, minlength=10) / len(labels)
        assert np.abs(proportions - overall).max() < 0.01, name


def test_splits_dtype_shape_range(splits8: dict[str, TensorDataset]) -> None:
    for size, splits in ((8, splits8), (16, digits_splits(seed=0, size=16))):
        for ds in splits.values():
            x, y = ds.tensors
            assert x.dtype == torch.float32
            assert y.dtype == torch.int64
            assert x.shape[1:] == (1, size, size)
            assert float(x.min()) >= 0.0
            assert float(x.max()) <= 1.0
            assert float(x.max()) > 0.9  # really scaled by 1/16, not by 1/255
            assert int(y.min()) >= 0
            assert int(y.max()) <= 9


def test_upsampled_splits_keep_samples(splits8: dict[str, TensorDataset]) -> None:
    splits16 = digits_splits(seed=0, size=16)
    for name in EXPECTED_SIZES:
        assert torch.equal(splits16[name].tensors[1], splits8[name].tensors[1])
        down = nn.functional.avg_pool2d(splits16[name].tensors[0], 2)
        # Averaging 2x2 blocks of a bilinear 2x upsampling stays close to the original.
        assert (down - splits8[name].tensors[0]).abs().mean() < 0.1


def test_splits_seeded(splits8: dict[str, TensorDataset]) -> None:
    again = digits_splits(seed=0, size=8)
    other = digits_splits(seed=1, size=8)
    for name in EXPECTED_SIZES:
        assert torch.equal(again[name].tensors[0], splits8[name].tensors[0])
        assert torch.equal(again[name].tensors[1], splits8[name].tensors[1])
        assert len(other[name]) == EXPECTED_SIZES[name]
        assert not torch.equal(other[name].tensors[0], splits8[name].tensors[0])


def test_bad_size_rejected() -> None:
    with pytest.raises(TaskError, match="size"):
        digits_splits(seed=0, size=4)


@pytest.mark.parametrize(
    ("cls", "size", "min_layers"), [(DigitsCNN, 8, 5), (DeepDigitsNet, 16, 10)]
)
def test_model_structure_and_trace(cls: type[nn.Module], size: int, min_layers: int) -> None:
    model = cls().eval()
    layers = _compressible(model)
    assert len(layers) >= min_layers
    gm = fx.symbolic_trace(model)
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    named = dict(model.named_modules())
    compressible_calls = [t for t in calls if isinstance(named[str(t)], COMPRESSIBLE)]
    # Every compressible layer is called exactly once.
    assert sorted(map(str, compressible_calls)) == sorted(
        name for name, m in named.items() if isinstance(m, COMPRESSIBLE)
    )
    x = torch.rand(3, 1, size, size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 10)
        assert torch.allclose(gm(x), out)
    assert sum(p.numel() for p in model.parameters()) < 150_000


def test_deep_net_has_depthwise_pair_and_residuals() -> None:
    model = DeepDigitsNet()
    depthwise = [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
    ]
    assert len(depthwise) == 1
    gm = fx.symbolic_trace(model)
    nodes = list(gm.graph.nodes)
    named = dict(model.named_modules())
    (dw_node,) = [
        n for n in nodes if n.op == "call_module" and named[str(n.target)] is depthwise[0]
    ]
    # depthwise conv -> BN -> ReLU -> 1x1 conv
    chain = [dw_node]
    for _ in range(3):
        (user,) = chain[-1].users
        chain.append(user)
    kinds = [type(named[str(n.target)]) for n in chain]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    pointwise = named[str(chain[-1].target)]
    assert isinstance(pointwise, nn.Conv2d) and pointwise.kernel_size == (1, 1)
    adds = [n for n in nodes if n.op == "call_function" and n.target is operator.add]
    assert len(adds) == 3
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())


def _plain_accuracy(model: nn.Module, dataset: Dataset[Any]) -> float:
    assert isinstance(dataset, TensorDataset)
    correct = 0
    with torch.no_grad():
        for i in range(len(dataset)):
            x, y = dataset[i]
            correct += int(model(x.unsqueeze(0)).argmax(dim=1).item() == int(y))
    return correct / len(dataset)


@pytest.mark.parametrize(
    ("fixture", "name", "cls", "size"),
    [("cnn_task", "digits", DigitsCNN, 8), ("deep_task", "digits-deep", DeepDigitsNet, 16)],
)
def test_shipped_task(
    request: pytest.FixtureRequest, fixture: str, name: str, cls: type[nn.Module], size: int
) -> None:
    task: Task = request.getfixturevalue(fixture)
    assert task.name == name
    assert task.num_classes == 10
    assert isinstance(task.model, cls)
    assert not task.model.training
    assert task.example_input.shape == (1, 1, size, size)
    splits = digits_splits(seed=digits.CHECKPOINT_SEED, size=size)
    for split in EXPECTED_SIZES:
        ds = getattr(task, split)
        assert torch.equal(ds.tensors[0], splits[split].tensors[0])
    acc = _plain_accuracy(task.model, task.test)
    assert acc >= 0.98, f"{name} test accuracy {acc:.4f}"


def test_shipped_files_small_and_metadata_consistent(cnn_task: Task, deep_task: Task) -> None:
    weights = Path(digits.__file__).parent / "weights"
    meta = json.loads((weights / "metadata.json").read_text())
    for task in (cnn_task, deep_task):
        entry = meta[task.name]
        path = weights / entry["file"]
        assert path.stat().st_size < 1_000_000
        assert entry["seed"] == digits.CHECKPOINT_SEED
        assert entry["params"] == sum(p.numel() for p in task.model.parameters())
        assert entry["test_accuracy"] >= 0.98
        # Recomputed accuracy may differ by a sample across machines, not more.
        assert abs(_plain_accuracy(task.model, task.val) - entry["val_accuracy"]) <= 1.5 / 288


@pytest.mark.parametrize(
    ("factory", "filename"),
    [(digits_task, digits.CNN_CHECKPOINT), (digits_deep_task, digits.DEEP_CHECKPOINT)],
)
def test_missing_checkpoint_raises(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, factory: Callable[[], Task], filename: str
) -> None:
    monkeypatch.setattr(digits, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(TaskError) as info:
        factory()
    message = str(info.value)
    assert str(tmp_path / filename) in message
    assert "python -m jpq_env.tasks.train_digits" in message


def test_mismatched_checkpoint_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch.save(DigitsCNN().state_dict(), tmp_path / digits.DEEP_CHECKPOINT)
    monkeypatch.setattr(digits, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(TaskError, match="does not match DeepDigitsNet"):
        digits_deep_task()
