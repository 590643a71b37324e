"""Bring your own model and data: ``make_task`` builds a validated ``Task`` from them.

A search needs four splits (see ``jpq_env.tasks.base``): ``train`` (fine-tuning only), ``val`` (a
held-out part of the training data, scored by the accuracy proxy), ``calib`` (BatchNorm
re-calibration and activation ranges) and ``test`` (final reports only). A user usually has a
training set and a test set; ``make_task`` splits the held-out and calibration parts off the
training set when they are not given, deterministically (a seeded permutation), and checks what
can be checked before any search starts: split sizes, sample shapes against the model's example
input, the model's output against the number of classes, and label ranges.

Datasets are map-style (``len`` and indexing), yielding ``(input, label)`` pairs; a list of such
pairs is stacked into one ``TensorDataset`` (``jpq_env.tasks.samples``). A ``DataLoader``
is accepted for its dataset: jpq-env batches in a fixed order itself (so that the same policy
always gets the same accuracy), so the loader's sampler and batch size are not used, and a custom
``collate_fn`` is refused rather than silently dropped.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from jpq_env import validation as check
from jpq_env.core.graph import LayerGraph
from jpq_env.core.graph.checks import check_model
from jpq_env.tasks.base import Task, TaskError
from jpq_env.tasks.samples import pairs_dataset, run_model

__all__ = ["DataLike", "known_labels", "make_task", "split_indices", "subset"]

DataLike = Dataset | DataLoader | tuple[torch.Tensor, torch.Tensor] | Sequence[tuple[Any, Any]]
"""A split as ``make_task`` takes it: a map-style dataset, a DataLoader, ``(inputs, labels)``, or
a list of ``(input, label)`` samples."""


def split_indices(
    n: int, val_size: int | float, calib_size: int, seed: int
) -> dict[str, np.ndarray]:
    """Split ``range(n)`` into held-out ``val`` and the remaining ``train``; ``calib`` from train.

    Args:
        n: Samples in the training set.
        val_size: Held-out samples: a count, or a fraction of ``n`` in (0, 1).
        calib_size: Calibration samples, drawn from the remaining training samples (all of them
            if fewer remain).
        seed: Seed of the permutation (a ``torch.Generator``, so the split is the same on every
            platform).

    Returns:
        Sorted ``int64`` index arrays keyed ``train``, ``val`` and ``calib``; ``train`` and
        ``val`` are disjoint and cover ``range(n)``, ``calib`` is a subset of ``train``.

    Raises:
        TaskError: If an argument has the wrong type (``val_size=True`` is not one sample) or the
            sizes leave an empty split.
    """
    val_size = _check_val_size(val_size)
    calib_size = check.integer("calib_size", calib_size, low=1, error=TaskError)
    seed = check.seed("seed", seed, error=TaskError)
    n_val = max(1, round(val_size * n)) if isinstance(val_size, float) else val_size
    if n_val >= n:
        raise TaskError(
            f"val_size {val_size} leaves no held-out or no training data: the training set has "
            f"{n} samples; choose a held-out size between 1 and {n - 1}"
        )
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).numpy()
    val, train = perm[:n_val], perm[n_val:]
    calib = train[torch.randperm(len(train), generator=g).numpy()[:calib_size]]
    return {
        k: np.sort(v).astype(np.int64)
        for k, v in (("train", train), ("val", val), ("calib", calib))
    }


def _check_val_size(val_size: Any) -> int | float:
    """A count of held-out samples (an integer >= 1) or a fraction in (0, 1); bools refused."""
    if isinstance(val_size, (int, np.integer)) and not isinstance(val_size, (bool, np.bool_)):
        return check.integer("val_size", val_size, low=1, error=TaskError)
    return check.number(
        "val_size",
        val_size,
        low=0.0,
        high=1.0,
        low_open=True,
        high_open=True,
        allowed="a count of samples (an integer >= 1) or a fraction in (0, 1)",
        error=TaskError,
    )


def subset(dataset: Dataset, indices: np.ndarray) -> Dataset:
    """The samples ``indices`` of ``dataset``.

    A ``TensorDataset`` is sliced (so the evaluator keeps its fast path); anything else becomes a
    ``torch.utils.data.Subset``.
    """
    if isinstance(dataset, TensorDataset):
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return TensorDataset(*(t[idx] for t in dataset.tensors))
    return Subset(dataset, [int(i) for i in indices])


def _as_dataset(data: Any, split: str) -> Dataset:
    if isinstance(data, DataLoader):
        if data.collate_fn is not default_collate:
            raise TaskError(
                f"the {split} DataLoader has a custom collate_fn, which jpq-env does not use (it "
                "batches the loader's dataset itself, in a fixed order): pass a dataset whose "
                "items are (input, label) pairs instead"
            )
        data = data.dataset
    if isinstance(data, (tuple, list)):
        # Samples (a list of (input, label) pairs), or one pair (inputs, labels) of tensors.
        if len(data) != 2 or isinstance(data[0], (tuple, list)):
            return pairs_dataset(data, split)
        x, y = data
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TaskError(
                f"the {split} split as a pair (inputs, labels) must be two tensors, got "
                f"{type(x).__name__} and {type(y).__name__}; as a list, it must hold "
                "(input, label) samples"
            )
        if len(x) != len(y):
            raise TaskError(f"the {split} split has {len(x)} inputs but {len(y)} labels")
        return TensorDataset(x, y)
    if not isinstance(data, Dataset) or not hasattr(data, "__len__"):
        if isinstance(data, Dataset):
            what = "an iterable-style dataset (no __len__): jpq-env reads samples by index"
        elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            what = "not a torch.utils.data.Dataset, tuple or list (subclass Dataset, or list it)"
        else:
            what = "it has no __len__ and __getitem__"
        raise TaskError(
            f"the {split} split must be a map-style Dataset (with __len__ and __getitem__), a "
            "DataLoader over one, a pair of tensors (inputs, labels) or a list of (input, label) "
            f"samples; got {type(data).__name__}: {what}"
        )
    if len(data) == 0:
        raise TaskError(f"the {split} split is empty")
    return data


def known_labels(dataset: Dataset) -> torch.Tensor | None:
    """All labels of a dataset when they can be read without loading inputs, else None.

    Covers ``TensorDataset``, datasets with a ``targets`` attribute (torchvision's) and
    ``Subset`` s of those.
    """
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[1]
    if isinstance(dataset, Subset):
        inner = known_labels(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(list(dataset.indices))]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    try:
        return torch.as_tensor(targets)
    except (TypeError, ValueError):
        return None


def _check_labels(labels: torch.Tensor, num_classes: int, split: str) -> None:
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TaskError(
            f"the {split} split has {labels.dtype} labels: class indices must be integers"
        )
    if labels.dim() != 1:
        raise TaskError(
            f"the {split} split has labels of shape {tuple(labels.shape)}: one per sample"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise TaskError(
            f"the {split} split has labels in [{low}, {high}], outside [0, {num_classes}) for a "
            f"model with {num_classes} outputs"
        )


def _first(dataset: Dataset, split: str) -> tuple[torch.Tensor, Any]:
    try:
        item = dataset[0]
    except Exception as exc:
        raise TaskError(
            f"cannot read sample 0 of the {split} split: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TaskError(
            f"the {split} split must yield (input, label) pairs, got {type(item).__name__}"
        )
    x, y = item
    if not isinstance(x, torch.Tensor):
        raise TaskError(
            f"the {split} split yields inputs of type {type(x).__name__}: they must be tensors "
            "(add a transform such as torchvision.transforms.ToTensor)"
        )
    return x, y


def _warn_val_from_train(n_val: int) -> None:
    warnings.warn(
        f"make_task: no val= given, so the held-out split the search scores ({n_val} sample"
        f"{'s' if n_val != 1 else ''}) "
        "is cut from train: a model trained on all of train (as public checkpoints are) is then "
        "scored on its own training data. Pass val= with data the model was not trained on.",
        UserWarning,
        stacklevel=3,  # the caller of make_task
    )


def make_task(
    model: nn.Module,
    *,
    train: DataLike,
    test: DataLike,
    val: DataLike | None = None,
    calib: DataLike | None = None,
    example_input: torch.Tensor | None = None,
    num_classes: int | None = None,
    name: str = "custom",
    val_size: int | float = 0.1,
    calib_size: int = 256,
    seed: int = 0,
) -> Task:
    """Build a validated task from a trained model and its data.

    Args:
        model: The trained FP32 classifier. It is only read (never written, its train/eval mode
            untouched); it must return logits shaped ``(batch, num_classes)``.
        train: Training data (fine-tuning; the source of ``val`` and ``calib`` when not given).
        test: Test data, read only for final reports.
        val: Held-out data the search scores policies on; default ``val_size`` samples split off
            ``train`` (and removed from it), with a ``UserWarning``: a model trained on all of
            ``train`` would be scored on data it has seen.
        calib: Calibration data (BatchNorm re-calibration, activation ranges); default
            ``calib_size`` samples of the (remaining) training data.
        example_input: One input batch to trace the model with; default the first ``val``
            sample with a batch dimension of 1.
        num_classes: Number of classes; default the model's output width on ``example_input``.
        name: Name used in logs and policy files.
        val_size: Held-out samples split off ``train`` when ``val`` is None: a count or a
            fraction in (0, 1).
        calib_size: Calibration samples drawn from ``train`` when ``calib`` is None.
        seed: Seed of those splits.

    Returns:
        The task, usable as ``JPQEnv(task=task)``, ``LocalEvaluator(task)`` and
        ``jpq_agents.run.run_search(..., env_kwargs={"task": task})``.

    Raises:
        TaskError: Naming the argument, or the split, the sample and the problem: an argument of
            the wrong type or range, an empty split, a sample whose shape or dtype differs from the
            example input, a model that cannot run on it (with what its first layer takes) or
            whose output does not fit ``num_classes``, labels outside ``[0, num_classes)``.
        GraphError: If the model cannot be compressed as it is (``LayerGraph.from_module``
            traces it here): untraceable, a compressible module called twice, shared or
            parametrized weights, NaN or inf in a parameter or buffer.
    """
    num_classes, val_size, calib_size, seed = _check_arguments(
        model, name, num_classes, val_size, calib_size, seed
    )
    splits, origin, cut_from_train = _splits(train, test, val, calib, val_size, calib_size, seed)
    first = {split: _first(ds, split) for split, ds in splits.items()}
    example_input, source = _example_input(example_input, first, origin)
    num_classes = _classes(model, example_input, source, num_classes)
    for split, ds in splits.items():
        _check_labels(_labels_to_check(ds, first[split][1]), num_classes, split)
    # What the environment and the evaluator will do with the model, checked now: it traces,
    # calls each compressible module once, holds numbers, and its layers are its own.
    LayerGraph.from_module(model, example_input)
    if cut_from_train:  # warned from here: its stacklevel names the caller of make_task
        _warn_val_from_train(cut_from_train)
    return Task(
        name, model, example_input, splits["train"], splits["val"], splits["calib"],
        splits["test"], num_classes,
    )  # fmt: skip


def _check_arguments(
    model: Any, name: Any, num_classes: Any, val_size: Any, calib_size: Any, seed: Any
) -> tuple[int | None, int | float, int, int]:
    """``make_task``'s model and scalar arguments, checked before any data is read.

    Returns:
        ``num_classes`` (None: from the model), ``val_size``, ``calib_size`` and ``seed``,
        validated.
    """
    if not isinstance(model, nn.Module):
        raise TaskError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_model(model)  # NaN weights, weight-norm hooks: before the model is copied and run
    if not isinstance(name, str) or not name:
        raise TaskError(f"name must be a non-empty string, got {name!r}")
    return (
        check.integer("num_classes", num_classes, low=1, optional=True, error=TaskError),
        _check_val_size(val_size),
        check.integer("calib_size", calib_size, low=1, error=TaskError),
        check.seed("seed", seed, error=TaskError),
    )


def _splits(
    train: DataLike,
    test: DataLike,
    val: DataLike | None,
    calib: DataLike | None,
    val_size: int | float,
    calib_size: int,
    seed: int,
) -> tuple[dict[str, Dataset], str, int]:
    """The four splits as datasets, with ``val`` and ``calib`` cut from ``train`` when not given.

    Returns:
        The splits keyed ``train``, ``test``, ``val``, ``calib`` (the order they are checked
        in), where val's sample 0 comes from (for errors), and how many held-out samples were
        cut from train (0 when ``val`` is given).
    """
    splits: dict[str, Dataset] = {
        "train": _as_dataset(train, "train"),
        "test": _as_dataset(test, "test"),
    }
    origin = "the val split"
    cut_from_train = 0
    if val is None:
        idx = split_indices(len(splits["train"]), val_size, calib_size, seed)  # type: ignore[arg-type]
        origin = f"the val split (sample {idx['val'][0]} of train, which val is cut from)"
        cut_from_train = len(idx["val"])
        full = splits["train"]
        splits["train"], splits["val"] = subset(full, idx["train"]), subset(full, idx["val"])
        if calib is None:
            splits["calib"] = subset(full, idx["calib"])
    else:
        splits["val"] = _as_dataset(val, "val")
    if calib is not None:
        splits["calib"] = _as_dataset(calib, "calib")
    elif "calib" not in splits:
        splits["calib"] = _calib_from_train(splits["train"], calib_size, seed)
    return splits, origin, cut_from_train


def _calib_from_train(train: Dataset, calib_size: int, seed: int) -> Dataset:
    """``calib_size`` samples of ``train`` (all of them if fewer), by a seeded permutation."""
    n = len(train)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return subset(train, np.sort(order[:calib_size]))


def _example_input(
    example_input: Any, first: dict[str, tuple[torch.Tensor, Any]], origin: str
) -> tuple[torch.Tensor, str]:
    """The batch the model is traced with, checked against every split's sample 0.

    Returns:
        The example input (default: val's sample 0 as a batch of one) and where it comes from,
        as ``run_model`` names it in errors.
    """
    source = "example_input"
    if example_input is None:
        example_input = first["val"][0].unsqueeze(0)
        source = f"sample 0 of {origin} as a batch of one"
    if not isinstance(example_input, torch.Tensor):
        raise TaskError(f"example_input must be a tensor, got {type(example_input).__name__}")
    sample_shape = tuple(example_input.shape[1:])
    for split in ("train", "val", "calib", "test"):
        x = first[split][0]
        if tuple(x.shape) != sample_shape or x.dtype != example_input.dtype:
            raise TaskError(
                f"sample 0 of the {split} split has an input of shape {tuple(x.shape)} and dtype "
                f"{x.dtype}, but the model is traced with samples of shape {sample_shape} and "
                f"dtype {example_input.dtype} (the example input, one batch (batch, ...), is "
                f"{'given' if source == 'example_input' else 'sample 0 of the val split'})"
            )
    return example_input, source


def _classes(
    model: nn.Module, example_input: torch.Tensor, source: str, num_classes: int | None
) -> int:
    """The number of classes: the width of the model's logits on the example input.

    Raises:
        TaskError: If the model does not return logits ``(batch, classes)``, or their width is
            not ``num_classes`` (when given).
    """
    out = run_model(model, example_input, source)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = str(tuple(out.shape)) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TaskError(f"the model must return logits shaped (batch, classes), got {got}")
    width = int(out.shape[1])
    if num_classes is not None and num_classes != width:
        raise TaskError(f"num_classes is {num_classes} but the model outputs {width} logits")
    return width


def _labels_to_check(dataset: Dataset, first_label: Any) -> torch.Tensor:
    """All labels of ``dataset`` when they can be read without loading inputs, else sample 0's.

    The labels ``known_labels`` cannot read are checked batch by batch when read.
    """
    labels = known_labels(dataset)
    if labels is not None:
        return labels
    if isinstance(first_label, torch.Tensor):
        return first_label.reshape(1)
    return torch.as_tensor([first_label])
