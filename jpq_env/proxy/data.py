"""The proxy's data: batches of a split in a fixed order, the device, and a batch size.

Every pass over data in the proxy (scoring, BatchNorm re-calibration, activation ranges,
sensitivity, fine-tuning) reads its batches through ``iter_batches``, so a split that cannot be
batched fails in one place with a message naming the split and the sample; and every pass runs
under ``private_rng``, so evaluating never moves the global random state the agents draw from.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from jpq_env.core.graph import LayerGraph
from jpq_env.errors import ArgumentError, TaskError

__all__ = [
    "ACTIVATION_BUDGET",
    "CPU_BATCH_ELEMENTS",
    "MAX_BATCH",
    "MIN_CPU_BATCH",
    "auto_batch_size",
    "iter_batches",
    "private_rng",
    "resolve_device",
    "top1",
]

ACTIVATION_BUDGET = 2**25
"""Elements (128 MB in float32) the widest activation of one evaluation batch may hold."""

MAX_BATCH = 512
CPU_BATCH_ELEMENTS = 2**20
"""Elements (4 MB) of the widest activation a CPU batch aims at (see ``auto_batch_size``)."""
MIN_CPU_BATCH = 16


def iter_batches(
    dataset: Dataset, batch_size: int, split: str = "data"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(inputs, labels)`` batches in a fixed order.

    A ``TensorDataset`` is sliced directly (no per-sample collation); any other map-style dataset
    goes through a ``DataLoader`` without shuffling.

    Raises:
        TaskError: If the split is empty or does not yield ``(input, label)`` pairs.
    """
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) != 2:
            raise TaskError(
                f"the {split} split must hold (inputs, labels), got {len(dataset.tensors)} tensors"
            )
        x, y = dataset.tensors
        if len(x) == 0:
            raise TaskError(f"the {split} split is empty")
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        size = None
    if size == 0:
        raise TaskError(f"the {split} split is empty")
    # A private generator: a DataLoader draws its base seed from torch's global RNG otherwise.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    batches = iter(loader)
    for start in itertools.count(0, batch_size):
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (RuntimeError, TypeError, ValueError) as exc:  # collate: samples that do not stack
            raise TaskError(_unstackable(dataset, split, start, batch_size, exc)) from exc
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise TaskError(f"the {split} split must yield (input, label) pairs")
        yield batch[0], batch[1]


def _unstackable(dataset: Dataset, split: str, start: int, size: int, exc: Exception) -> str:
    """Why samples ``start`` to ``start + size - 1`` of a split cannot form one batch."""

    def form(i: int) -> str:
        sample = dataset[i]
        x = sample[0] if isinstance(sample, (list, tuple)) else sample
        if isinstance(x, torch.Tensor):
            return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
        return f"a {type(x).__name__}"

    try:
        first = form(start)
        for i in range(start + 1, start + size):
            try:
                other = form(i)
            except IndexError:
                break
            if other != first:
                return (
                    f"the {split} split: sample {i} is {other} but sample {start} is {first}; "
                    "every sample's input must have the same shape and type"
                )
    except Exception:  # the dataset itself failed: report the batching error as it was
        pass
    return (
        f"the {split} split: samples {start} to {start + size - 1} cannot be batched: "
        f"{type(exc).__name__}: {exc}"
    )


@torch.no_grad()
def top1(
    model: nn.Module, dataset: Dataset, batch_size: int = 512, device: str | torch.device = "cpu"
) -> float:
    """Top-1 accuracy of ``model`` (as it is, no re-calibration) on ``dataset``."""
    correct = total = 0
    for x, y in iter_batches(dataset, batch_size):
        correct += int((model(x.to(device)).argmax(dim=1) == y.to(device)).sum())
        total += int(y.numel())
    return correct / total


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` (or None): CUDA when available, else the CPU; anything else as given.

    Raises:
        ValueError: If the name is not a device, or CUDA is asked for but not available.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise ArgumentError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ArgumentError(f"unknown device '{device}': use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"device '{device}' asked for, but CUDA is not available here")
    if resolved.type == "mps" and torch.backends.mps.is_available():
        return resolved
    if resolved.type not in ("cpu", "cuda"):  # meta, xpu, hpu, ...: not devices the proxy runs on
        raise ArgumentError(f"unsupported device '{device}': use 'auto', 'cpu' or 'cuda[:N]'")
    return resolved


def auto_batch_size(
    graph: LayerGraph, example_input: torch.Tensor, device: str | torch.device | None = None
) -> int:
    """A batch size for the proxy: bounded memory everywhere, cache-sized batches on the CPU.

    The widest tensor an evaluation holds is a layer's input or output; keeping it under
    ``ACTIVATION_BUDGET`` elements bounds the proxy's memory whatever the input size (at most
    ``MAX_BATCH`` images). On the CPU (``device``), batches are also kept near
    ``CPU_BATCH_ELEMENTS`` elements of the widest activation (at least ``MIN_CPU_BATCH`` images):
    measured on ResNet-20 at 32x32, channels-last convolutions ran 2.5x faster per image in
    batches of 64 than in batches of 512 (the activations stay in the caches).
    """
    widest = max(
        [int(example_input[:1].numel())]
        + [x.out_channels * x.out_hw[0] * x.out_hw[1] for x in graph.layers]
        + [x.in_channels * x.in_hw[0] * x.in_hw[1] for x in graph.layers]
    )
    size = min(MAX_BATCH, ACTIVATION_BUDGET // widest)
    if device is not None and torch.device(device).type == "cpu":
        size = min(size, max(MIN_CPU_BATCH, CPU_BATCH_ELEMENTS // widest))
    return max(1, size)


@contextmanager
def private_rng() -> Iterator[None]:
    """Evaluate with torch's global RNG forked and seeded.

    The global state is left as it was, and a user's random transform draws the same numbers at
    every evaluation, whatever the agents drew in between.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
