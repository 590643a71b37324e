"""The accuracy proxy, behind an evaluator interface.

An ``Evaluator`` answers one question: what top-1 accuracy does a policy reach on the held-out
split? ``LocalEvaluator`` answers it in this process: it applies the policy to a working copy of the
model (``CompressedModel``), optionally re-calibrates BatchNorm statistics on the calibration split
(the compressed network's activations differ from the FP32 ones, and stale statistics understate
what a policy can do), then evaluates on ``task.val``, a held-out part of the *training* data. The
test split is read only by ``test_accuracy``, for final reports, never by a search.

The interface is the seam for other evaluators (a pool of remote workers, say): anything with
``fp32_accuracy`` and ``accuracy(policy)`` can stand in for the local one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import cached_property
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from jpq_env import validation as check
from jpq_env.compress import CompressedModel, calibrate_ranges
from jpq_env.graph import LayerGraph
from jpq_env.policy import Policy
from jpq_env.tasks.base import Task, TaskError

__all__ = [
    "Evaluator",
    "LocalEvaluator",
    "PaddedEvaluator",
    "auto_batch_size",
    "iter_batches",
    "resolve_device",
    "top1",
]

ACTIVATION_BUDGET = 2**25
"""Elements (128 MB in float32) the widest activation of one evaluation batch may hold."""

MAX_BATCH = 512


class Evaluator(Protocol):
    """Scores compression policies by accuracy on held-out data (fractions in [0, 1])."""

    @property
    def fp32_accuracy(self) -> float:
        """Accuracy of the uncompressed model on the same data."""
        ...

    def accuracy(self, policy: Policy) -> float:
        """Accuracy of the model compressed by ``policy``."""
        ...


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
    for batch in loader:
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise TaskError(f"the {split} split must yield (input, label) pairs")
        yield batch[0], batch[1]


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
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device '{device}': use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' asked for, but CUDA is not available here")
    return resolved


def auto_batch_size(graph: LayerGraph, example_input: torch.Tensor) -> int:
    """The largest batch (at most ``MAX_BATCH``) whose widest activation fits the budget.

    The widest tensor an evaluation holds is a layer's input or output; keeping it under
    ``ACTIVATION_BUDGET`` elements bounds the proxy's memory whatever the input size (resnet18 at
    224x224: 41 images per batch, about 130 MB per activation; the digits tasks: 512).
    """
    widest = max(
        [int(example_input[:1].numel())]
        + [x.out_channels * x.out_hw[0] * x.out_hw[1] for x in graph.layers]
        + [x.in_channels * x.in_hw[0] * x.in_hw[1] for x in graph.layers]
    )
    return max(1, min(MAX_BATCH, ACTIVATION_BUDGET // widest))


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class LocalEvaluator:
    """The accuracy proxy, run in this process.

    Args:
        task: Model and data splits. The model is copied; it is never written.
        graph: The model's layer graph (built from ``task`` if not given).
        bn_recalibration: Re-estimate BatchNorm statistics on ``task.calib`` after applying a
            policy (default True).
        act_range: How activation ranges are calibrated: ``"max"`` or ``"percentile"``.
        weight_method: ``"max"`` or ``"mse"`` weight scales.
        batch_size: Evaluation batch size; None picks the largest batch whose widest
            activation stays under ``ACTIVATION_BUDGET`` elements (``auto_batch_size``), which
            bounds memory on large inputs.
        device: ``"auto"`` (default; CUDA when available, else CPU), ``"cpu"``, ``"cuda"``.
            On the CPU, the same policy always gets bitwise the same accuracy.
    """

    def __init__(
        self,
        task: Task,
        graph: LayerGraph | None = None,
        *,
        bn_recalibration: bool = True,
        act_range: str = "max",
        weight_method: str = "max",
        batch_size: int | None = None,
        device: str | torch.device | None = "auto",
    ) -> None:
        self.device = resolve_device(device)
        if not isinstance(task, Task):
            raise ValueError(f"task must be a jpq_env.Task, got {type(task).__name__}")
        self.task = task
        self.bn_recalibration = check.flag("bn_recalibration", bn_recalibration)
        check.choice("act_range", act_range, ("max", "percentile"))
        check.choice("weight_method", weight_method, ("max", "mse"))
        batch_size = check.integer("batch_size", batch_size, low=1, optional=True)
        self.graph = (
            graph if graph is not None else LayerGraph.from_module(task.model, task.example_input)
        )
        self.batch_size = batch_size or auto_batch_size(self.graph, task.example_input)
        self.compressed = CompressedModel(
            task.model, self.graph, weight_method=weight_method, device=self.device
        )
        for split in ("calib", "val"):  # the test split waits for the final report
            self._check_split(split)
        ranges = calibrate_ranges(
            self.compressed.module, self.graph, (x for x, _ in self._batches("calib")), act_range
        )
        self.compressed.act_ranges = ranges

    @torch.no_grad()
    def _check_split(self, split: str) -> None:
        """Fail early, naming the split, on data the model cannot score (first batch only)."""
        n = self.task.num_classes
        x, y = next(iter(self._batches(split)))
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TaskError(
                f"the {split} split has {y.dtype} labels: class indices must be integers"
            )
        try:
            logits = self.compressed.module(x)
        except Exception as exc:
            raise TaskError(
                f"the model cannot run on the {split} split (inputs of shape {tuple(x.shape)}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if logits.dim() != 2 or logits.shape[1] != n:
            raise TaskError(
                f"the model outputs shape {tuple(logits.shape)} on the {split} split, expected "
                f"(batch, {n}) for {n} classes"
            )
        if isinstance(getattr(self.task, split), TensorDataset):
            labels = getattr(self.task, split).tensors[1]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n):
                raise TaskError(f"the {split} split has labels outside [0, {n})")

    def _batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in iter_batches(getattr(self.task, split), self.batch_size, split):
            yield x.to(self.device), y.to(self.device)

    @torch.no_grad()
    def _top1(self, split: str) -> float:
        model = self.compressed.module
        correct = total = 0
        n = self.task.num_classes
        for x, y in self._batches(split):
            if y.dim() != 1 or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= n)):
                raise TaskError(
                    f"the {split} split has labels outside [0, {n}) or not one label per sample"
                )
            logits = model(x)
            correct += int((logits.argmax(dim=1) == y).sum())
            total += int(y.numel())
        return correct / total

    @torch.no_grad()
    def _recalibrate(self) -> None:
        bns = _batchnorms(self.compressed.module)
        if not bns:
            return
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration split
            bn.train()
        try:
            for x, _ in self._batches("calib"):
                self.compressed.module(x)
        finally:
            for bn, momentum in zip(bns, momenta, strict=True):
                bn.momentum = momentum
                bn.eval()

    def prepare(self, policy: Policy | None) -> nn.Module:
        """Apply ``policy`` (None: FP32) to the working copy, re-calibrate BN, return the copy.

        The returned module is the evaluator's own working copy: read it (export, inspect) before
        the next call, which overwrites it.
        """
        if policy is None:
            self.compressed.restore()
        else:
            self.compressed.apply(policy)
            if self.bn_recalibration:
                self._recalibrate()
        return self.compressed.module

    def _score(self, policy: Policy | None, split: str) -> float:
        # Evaluating must not move torch's global random state: agents sample from it, and an
        # evaluation answered from a log (resume) or run on another process (Ray) draws nothing,
        # so any draw here (a DataLoader's base seed, a user's random transform) would make the
        # same seed give different episodes. It also makes random transforms repeat exactly.
        with torch.random.fork_rng(devices=[]):
            self.prepare(policy)
            return self._top1(split)

    @cached_property
    def fp32_accuracy(self) -> float:
        """Top-1 of the all-32-bit policy on the held-out split (computed once).

        Scored through the same pipeline as every policy (BN re-calibration included), so that
        ``accuracy(policy) - fp32_accuracy`` measures compression alone.
        """
        return self._score(Policy.uniform(self.graph), "val")

    def accuracy(self, policy: Policy) -> float:
        """Top-1 on the held-out split of the model compressed by ``policy``."""
        return self._score(policy, "val")

    def test_accuracy(self, policy: Policy | None) -> float:
        """Top-1 on the test split (final reports only); ``None`` scores the FP32 model as is."""
        return self._score(policy, "test")


class PaddedEvaluator:
    """An evaluator whose every ``accuracy`` call takes at least ``seconds`` of wall time.

    Emulates the accuracy proxy of a large model (seconds per evaluation on a GPU) with a small
    task, for scaling benchmarks and tests: the accuracies are the inner evaluator's, only the wall
    time changes. The padding sleeps, so it costs no CPU (like waiting for a GPU).

    Args:
        inner: The evaluator that computes the accuracies.
        seconds: Least wall time of one evaluation, in seconds (>= 0).
    """

    def __init__(self, inner: Any, seconds: float) -> None:
        self.inner = inner
        self.seconds = check.number("seconds", seconds, low=0.0)

    @property
    def fp32_accuracy(self) -> float:
        """The inner evaluator's FP32 accuracy (not padded: it is computed once)."""
        return float(self.inner.fp32_accuracy)

    def accuracy(self, policy: Policy) -> float:
        """The inner evaluator's accuracy, returned no sooner than ``seconds`` after the call."""
        start = time.perf_counter()
        value = float(self.inner.accuracy(policy))
        left = self.seconds - (time.perf_counter() - start)
        if left > 0:
            time.sleep(left)
        return value

    def test_accuracy(self, policy: Policy | None) -> float:
        """The inner evaluator's test accuracy (final reports; not padded)."""
        return float(self.inner.test_accuracy(policy))
