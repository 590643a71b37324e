"""The accuracy proxy, behind an evaluator interface.

An ``Evaluator`` answers one question: how good is the model compressed by a policy, on held-out
data? ``LocalEvaluator`` answers it in this process: it applies the policy to a working copy of the
model (``CompressedModel``), optionally re-calibrates BatchNorm statistics on the calibration split
(the compressed network's activations differ from the FP32 ones, and stale statistics understate
what a policy can do), then scores ``task.val``, a held-out part of the *training* data. The test
split is read only by ``test_accuracy``, for final reports, never by a search.

What it scores (``metric``), per held-out image, averaged:

- ``"top1"`` (default): the prediction is the label;
- ``"agreement"``: the prediction is the FP32 model's prediction (1.0 for the FP32 model);
- ``"kl"``: reported as ``exp(-mean KL(p_fp32 || p_compressed))``, a fidelity in (0, 1] (1.0 for
  the FP32 model) that moves with every logit, not only with the images whose top-1 flips.

The last two measure the degradation against the FP32 model's own outputs, which does not depend
on whether the held-out images were part of what the model was trained on (the public CIFAR
checkpoints saw every training image).

Speed, without changing a single number:

- **prefix reuse**: the forward passes run through ``jpq_env.proxy.prefix.SegmentedForward``, which
  keeps, at a few checkpoints chosen within ``prefix_cache_mb``, the activations of the best policy
  scored so far (or the one ``set_incumbent`` names). A policy that agrees with it on the layers
  before a checkpoint resumes there, BatchNorm statistics of those layers included: bitwise the
  result of a full pass (tested);
- **fidelity**: ``val_images`` scores only the first images of the held-out split (a seeded order,
  the same for every policy);
- **racing**: ``accuracy(policy, at_least=x)`` stops once the score cannot reach ``x`` with the
  confidence of ``jpq_env.proxy.racing.RaceRule`` (paired with the incumbent's per-image results
  when known) and returns the score of the images it saw; ``last`` says how many that was.

``stats`` counts images and *image-forwards* (images times the share of the network's MACs that
was computed) for the benchmarks. The interface is the seam for other evaluators (a pool of remote
workers, say): anything with ``fp32_accuracy`` and ``accuracy(policy)`` can stand in.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from jpq_env import validation as check
from jpq_env.core.compress import CompressedModel, calibrate_ranges
from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import Policy
from jpq_env.proxy.prefix import Checkpoint, SegmentedForward
from jpq_env.proxy.racing import RaceRule
from jpq_env.tasks.base import Task, TaskError

__all__ = [
    "METRICS",
    "Evaluation",
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
CPU_BATCH_ELEMENTS = 2**20
"""Elements (4 MB) of the widest activation a CPU batch aims at (see ``auto_batch_size``)."""
MIN_CPU_BATCH = 16
METRICS = ("top1", "agreement", "kl")
_RESULTS_KEPT = 64  # per-image results of recent complete evaluations (racing pairs with them)


class Evaluator(Protocol):
    """Scores compression policies on held-out data (fractions in [0, 1])."""

    @property
    def fp32_accuracy(self) -> float:
        """Score of the uncompressed model on the same data."""
        ...

    def accuracy(self, policy: Policy) -> float:
        """Score of the model compressed by ``policy``."""
        ...


@dataclass(frozen=True)
class Evaluation:
    """How the last ``accuracy`` call was answered.

    Attributes:
        score: The value returned.
        images: Held-out images scored.
        complete: False if racing stopped the evaluation early (``score`` covers ``images``).
        resumed_at: The compressible layer the pass resumed at (0: a full pass).
        seconds: Wall time of the call.
    """

    score: float
    images: int
    complete: bool
    resumed_at: int = 0
    seconds: float = 0.0


@dataclass
class _Stats:
    evaluations: int = 0
    memo: int = 0
    complete: int = 0
    images: int = 0
    image_forwards: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


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
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device '{device}': use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' asked for, but CUDA is not available here")
    if resolved.type == "mps" and torch.backends.mps.is_available():
        return resolved
    if resolved.type not in ("cpu", "cuda"):  # meta, xpu, hpu, ...: not devices the proxy runs on
        raise ValueError(f"unsupported device '{device}': use 'auto', 'cpu' or 'cuda[:N]'")
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


def _standard_layout_hooks(bn: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that give ``bn`` its input in the standard layout and hand channels-last back."""

    def before(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0].contiguous(), *args[1:])

    def after(_: nn.Module, __: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out

    return [bn.register_forward_pre_hook(before), bn.register_forward_hook(after)]


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def _private_rng() -> Iterator[None]:
    """Evaluate with torch's global RNG forked and seeded.

    The global state is left as it was, and a user's random transform draws the same numbers at
    every evaluation, whatever the agents drew in between.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _policy_key(policy: Policy) -> tuple[bytes, ...]:
    """Per layer, its decision as bytes: equal keys, equal compressed layers."""
    return tuple(
        np.int64(lp.act_bits).tobytes() + lp.bits.astype(np.int64).tobytes() for lp in policy.layers
    )


@dataclass
class _Prefix:
    """The activations a reference policy left at the chosen checkpoints (see module doc)."""

    key: tuple[bytes, ...]
    score: float
    calib: dict[int, list[dict[Any, Any]]] = field(default_factory=dict)
    val: dict[int, list[dict[Any, Any]]] = field(default_factory=dict)
    bn_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


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
        metric: ``"top1"`` (default), ``"agreement"`` or ``"kl"`` (see the module doc).
        val_images: Score only the first this many held-out images (None: all of them).
        prefix_cache_mb: Memory for the activations kept for prefix reuse (0: no reuse).
        race_z: Confidence of racing's early stops, in standard errors.
    """

    supports_racing = True
    """``accuracy`` takes ``at_least`` (the environment's ``race`` uses it)."""

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
        metric: str = "top1",
        val_images: int | None = None,
        prefix_cache_mb: float = 1024,
        race_z: float = 2.0,
    ) -> None:
        metric = check.choice("metric", metric, METRICS)
        val_images = check.integer("val_images", val_images, low=1, optional=True)
        prefix_cache_mb = check.number("prefix_cache_mb", prefix_cache_mb, low=0.0)
        race_z = check.number("race_z", race_z, low=0.0, low_open=True)
        self.device = resolve_device(device)
        if not isinstance(task, Task):
            raise ValueError(f"task must be a jpq_env.Task, got {type(task).__name__}")
        self.task = task
        self.bn_recalibration = check.flag("bn_recalibration", bn_recalibration)
        check.choice("act_range", act_range, ("max", "percentile"))
        check.choice("weight_method", weight_method, ("max", "mse"))
        batch_size = check.integer("batch_size", batch_size, low=1, optional=True)
        self.metric = metric
        self.race_z = float(race_z)
        self.graph = (
            graph if graph is not None else LayerGraph.from_module(task.model, task.example_input)
        )
        self.batch_size = batch_size or auto_batch_size(self.graph, task.example_input, self.device)
        self.compressed = CompressedModel(
            task.model, self.graph, weight_method=weight_method, device=self.device
        )
        # Channels-last convolutions are faster on the CPU (1.4x on ResNet-20); the working copy
        # and the batches take that layout (same values; the user's model is not touched).
        self._channels_last = self.device.type == "cpu" and task.example_input.dim() == 4
        if self._channels_last:
            self.compressed.module.to(memory_format=torch.channels_last)
        with _private_rng():  # a random transform of the user's draws the same numbers here too
            for split in ("calib", "val"):  # the test split waits for the final report
                self._check_split(split)
            ranges = calibrate_ranges(
                self.compressed.module,
                self.graph,
                (x for x, _ in self._batches("calib")),
                act_range,
            )
        self.compressed.act_ranges = ranges
        self._val = self._held_out(val_images)
        self.val_images = len(self._val)  # type: ignore[arg-type]
        self.forward = SegmentedForward(
            self.compressed.module,
            self.graph.names,
            task.example_input.to(self.device),
            [x.macs for x in self.graph.layers],
        )
        self._total_macs = max(self.graph.compressible_macs, 1)
        self._checkpoints = self._choose_checkpoints(prefix_cache_mb)
        self._bn_positions = self._batchnorm_positions()
        self._prefix: _Prefix | None = None
        self._pinned: tuple[bytes, ...] | None = None
        self._pinned_policy: Policy | None = None
        self._results: OrderedDict[tuple[bytes, ...], torch.Tensor] = OrderedDict()
        self.stats = _Stats()
        self.last: Evaluation | None = None

    # ---- data ---------------------------------------------------------------------------------

    def _held_out(self, limit: int | None) -> Dataset:
        """The held-out split in a seeded order (racing reads it from the start), maybe cut.

        The order is the same for every policy, so the first ``n`` images are a fair sample of
        the split whatever order the user's dataset has (ImageFolder sorts by class).
        """
        val = self.task.val
        n = len(val)  # type: ignore[arg-type]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        if limit is not None:
            order = order[: min(limit, n)]
        if isinstance(val, TensorDataset):
            return TensorDataset(*(t[order] for t in val.tensors))
        return Subset(val, order.tolist())

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
        data = self._val if split == "val" and hasattr(self, "_val") else getattr(self.task, split)
        n = self.task.num_classes
        for x, y in iter_batches(data, self.batch_size, split):
            if y.dim() != 1 or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= n)):
                raise TaskError(
                    f"the {split} split has labels outside [0, {n}) or not one label per sample"
                )
            x = x.to(self.device)
            if self._channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device)

    @cached_property
    def _val_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The held-out batches, kept when the split is tensors (read every evaluation)."""
        if not isinstance(self._val, TensorDataset):
            return None
        return list(self._batches("val"))

    def _val_iter(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._val_batches) if self._val_batches is not None else self._batches("val")

    # ---- prefix reuse -------------------------------------------------------------------------

    def _choose_checkpoints(self, budget_mb: float) -> list[Checkpoint]:
        """Checkpoints to keep activations at, the most MACs saved per byte first, within budget.

        The value of a set is the MACs it saves when the changed layer is drawn uniformly (what a
        local search that moves one layer at a time does on average).
        """
        fwd = self.forward
        if not fwd.resumable or budget_mb <= 0:
            return []
        images = self.val_images + (len(self.task.calib) if self.bn_recalibration else 0)  # type: ignore[arg-type]
        budget = budget_mb * 2**20
        candidates = [c for c in fwd.checkpoints if c.layer > 0 and c.floats_per_sample > 0]
        chosen: list[Checkpoint] = []
        used = 0.0
        layers = len(self.graph)

        def saved(points: list[Checkpoint]) -> float:
            best = 0.0
            total = 0.0
            by_layer = {c.layer: c for c in points}
            for k in range(layers):
                if k in by_layer:
                    best = max(best, by_layer[k].macs_before)
                total += best
            return total

        while True:
            base = saved(chosen)
            options = []
            for c in candidates:
                if c in chosen:
                    continue
                cost = c.floats_per_sample * 4.0 * images
                if used + cost > budget:
                    continue
                gain = saved([*chosen, c]) - base
                if gain > 0:
                    options.append((gain / cost, -c.layer, c))
            if not options:
                break
            _, _, pick = max(options, key=lambda t: (t[0], t[1]))
            chosen.append(pick)
            used += pick.floats_per_sample * 4.0 * images
        return sorted(chosen, key=lambda c: c.position)

    def _batchnorm_positions(self) -> dict[str, int]:
        names = {id(m): name for name, m in self.compressed.module.named_modules()}
        out = {}
        for bn in _batchnorms(self.compressed.module):
            name = names[id(bn)]
            out[name] = self.forward.call_positions.get(name, -1)
        return out

    def _resume_point(self, key: tuple[bytes, ...]) -> Checkpoint | None:
        """The last kept checkpoint before the first layer where ``key`` differs from the prefix."""
        prefix = self._prefix
        if prefix is None:
            return None
        pairs = enumerate(zip(key, prefix.key, strict=True))
        first = next((i for i, (a, b) in pairs if a != b), len(key))
        usable = [c for c in self._checkpoints if c.layer <= first and c.position in prefix.val]
        return usable[-1] if usable else None

    # ---- scoring ------------------------------------------------------------------------------

    @torch.no_grad()
    def _recalibrate(
        self, start: Checkpoint | None = None, keep: list[Checkpoint] | None = None
    ) -> dict[int, list[dict[Any, Any]]]:
        """Re-estimate BatchNorm statistics on the calibration split (from ``start`` on).

        BatchNorms before ``start`` take the statistics the prefix's policy left (they see the
        same inputs); the others average over the calibration batches. Returns the live values at
        the checkpoints ``keep`` (for a new prefix).
        """
        module = self.compressed.module
        pos = 0 if start is None else start.position
        named = dict(module.named_modules())
        after = [name for name, p in self._bn_positions.items() if p >= pos or p < 0]
        if start is not None:
            assert self._prefix is not None
            for name, buffers in self._prefix.bn_state.items():
                if self._bn_positions[name] < pos:
                    for key, value in buffers.items():
                        getattr(named[name], key).copy_(value)
        bns = [named[name] for name in after]
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration split
            bn.train()
        # Batch statistics of channels-last activations are reduced in an order that depends on
        # the thread count (a Ray actor's one thread and a 2-thread process then disagree by an
        # image); in the standard layout they are not. BatchNorms see standard-layout inputs here.
        hooks = [h for bn in bns for h in _standard_layout_hooks(bn)] if self._channels_last else []
        keep = keep or []
        states: dict[int, list[dict[Any, Any]]] = {c.position: [] for c in keep}
        try:
            for i, (x, _) in enumerate(self._calib_iter()):
                state = None if start is None else self._prefix.calib[pos][i]  # type: ignore[union-attr]
                _, kept = self.forward.run(x, pos, state, keep)
                for c, s in zip(keep, kept, strict=True):
                    states[c.position].append(s)
                self._count(len(x), pos)
        finally:
            for hook in hooks:
                hook.remove()
            for bn, momentum in zip(bns, momenta, strict=True):
                bn.momentum = momentum
                bn.eval()
        return states

    @cached_property
    def _calib_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if not isinstance(self.task.calib, TensorDataset):
            return None
        return list(self._batches("calib"))

    def _calib_iter(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (
            iter(self._calib_batches) if self._calib_batches is not None else self._batches("calib")
        )

    def _count(self, images: int, position: int) -> None:
        start = next((c for c in self.forward.checkpoints if c.position == position), None)
        done = 1.0 - (start.macs_before / self._total_macs if start is not None else 0.0)
        self.stats.image_forwards += images * done

    def _values(self, logits: torch.Tensor, y: torch.Tensor, first: int) -> torch.Tensor:
        """Per-image values whose mean is the score (log-fidelity for ``kl``)."""
        if self.metric == "top1":
            return (logits.argmax(dim=1) == y).double()
        reference = self._fp32_logits[first : first + len(y)]
        if self.metric == "agreement":
            return (logits.argmax(dim=1) == reference.argmax(dim=1)).double()
        p = torch.log_softmax(reference.double(), dim=1)
        q = torch.log_softmax(logits.double(), dim=1)
        return -(p.exp() * (p - q)).sum(dim=1)  # -KL(p_fp32 || p_compressed), <= 0

    def _final(self, values: torch.Tensor) -> float:
        mean = float(values.mean())
        return math.exp(mean) if self.metric == "kl" else mean

    def _needed(self, score: float) -> float:
        """The mean per-image value a score corresponds to (the inverse of ``_final``)."""
        if self.metric == "kl":
            return math.log(score) if score > 0 else -math.inf
        return score

    @cached_property
    def _fp32_logits(self) -> torch.Tensor:
        """The FP32 model's logits on the held-out batches (BN re-calibrated like any policy)."""
        with _private_rng(), torch.no_grad():
            self._apply(Policy.uniform(self.graph))
            if self.bn_recalibration:
                self._recalibrate()
            return torch.cat([self.forward.run(x)[0] for x, _ in self._val_iter()])

    def _apply(self, policy: Policy | None) -> None:
        if policy is None:
            self.compressed.restore()
        else:
            self.compressed.apply(policy)

    @torch.no_grad()
    def _evaluate(
        self, policy: Policy, at_least: float | None, keep_prefix: bool = True
    ) -> Evaluation:
        """Apply, re-calibrate and score ``policy`` on the held-out split (see ``accuracy``)."""
        started = time.perf_counter()
        key = _policy_key(policy)
        known = self._results.get(key)
        if known is not None and at_least is None:  # a policy scored before: the same numbers
            self._results.move_to_end(key)
            self.stats.memo += 1
            return Evaluation(self._final(known), int(known.numel()), True, 0, 0.0)
        if self.metric != "top1":
            _ = self._fp32_logits  # before the policy is applied (it scores the FP32 policy)
        reference = self._reference() if at_least is not None else None  # may evaluate it first
        rule = self._race_rule(at_least, reference)
        start = self._resume_point(key)
        pos = 0 if start is None else start.position
        self._apply(policy)
        recording = keep_prefix and (self._pinned is None or self._pinned == key)
        keep = [c for c in self._checkpoints if c.position > pos] if recording else []
        calib_states = self._recalibrate(start, keep) if self.bn_recalibration else {}
        val_states: dict[int, list[dict[Any, Any]]] = {c.position: [] for c in keep}
        values: list[torch.Tensor] = []
        seen = 0
        complete = True
        for i, (x, y) in enumerate(self._val_iter()):
            state = None if start is None else self._prefix.val[pos][i]  # type: ignore[union-attr]
            logits, kept = self.forward.run(x, pos, state, keep)
            for c, s in zip(keep, kept, strict=True):
                val_states[c.position].append(s)
            values.append(self._values(logits, y, seen))
            seen += len(y)
            self._count(len(y), pos)
            if rule is not None and seen < self.val_images:
                so_far = torch.cat(values)
                paired = so_far - reference[:seen] if reference is not None else so_far
                if rule.lost(paired):
                    complete = False
                    break
        per_image = torch.cat(values)
        score = self._final(per_image)
        if complete:
            self._remember(key, per_image)
            if recording:
                self._keep_prefix(key, score, start, calib_states, val_states)
        self.stats.evaluations += 1
        self.stats.complete += int(complete)
        self.stats.images += seen
        seconds = time.perf_counter() - started
        self.stats.seconds += seconds
        layer = 0 if start is None else start.layer
        return Evaluation(score, seen, complete, layer, seconds)

    def _race_rule(self, at_least: float | None, reference: torch.Tensor | None) -> RaceRule | None:
        if at_least is None:
            return None
        needed = self._needed(at_least)
        if reference is not None:
            needed -= float(reference.mean())  # the margin over the incumbent, per image
        if not math.isfinite(needed):  # -inf: any score reaches it
            return None
        min_images = max(self.batch_size, self.val_images // 10)
        return RaceRule(needed, self.val_images, self.race_z, min_images)

    def _reference(self) -> torch.Tensor | None:
        """Per-image values of the pinned incumbent (scored now if they are not known).

        Racing pairs only with the incumbent an agent named: an incumbent read from the
        evaluator's own history would depend on what this process happened to evaluate (a
        resumed run replays its first episodes from the log), and so would the stops.
        """
        if self._pinned is None:
            return None
        values = self._results.get(self._pinned)
        if values is None:
            assert self._pinned_policy is not None
            self._evaluate(self._pinned_policy, None)
            values = self._results[self._pinned]
        return values

    def _remember(self, key: tuple[bytes, ...], values: torch.Tensor) -> None:
        self._results[key] = values
        self._results.move_to_end(key)
        while len(self._results) > _RESULTS_KEPT:
            self._results.popitem(last=False)

    def _keep_prefix(
        self,
        key: tuple[bytes, ...],
        score: float,
        start: Checkpoint | None,
        calib: dict[int, list[dict[Any, Any]]],
        val: dict[int, list[dict[Any, Any]]],
    ) -> None:
        """Keep this evaluation's activations if it is the incumbent (pinned, or best so far)."""
        if not self._checkpoints:
            return
        old = self._prefix
        if self._pinned is not None:
            if key != self._pinned:
                return
        elif old is not None and score < old.score:
            return
        prefix = _Prefix(key, score)
        if start is not None and old is not None:  # the shared part: the same tensors
            for c in self._checkpoints:
                if c.position <= start.position:
                    prefix.val[c.position] = old.val[c.position]
                    if self.bn_recalibration:
                        prefix.calib[c.position] = old.calib[c.position]
        prefix.val.update(val)
        prefix.calib.update(calib)
        named = dict(self.compressed.module.named_modules())
        for name in self._bn_positions:
            bn = named[name]
            prefix.bn_state[name] = {
                k: getattr(bn, k).clone()
                for k in ("running_mean", "running_var", "num_batches_tracked")
                if getattr(bn, k, None) is not None
            }
        self._prefix = prefix

    def set_incumbent(self, policy: Policy | None) -> None:
        """Race against, and keep activations for, ``policy`` (None: the best score so far).

        Its per-image results are computed at the first racing evaluation that needs them if
        they are not known yet (one more evaluation, not an episode; the same numbers).
        """
        self._pinned = None if policy is None else _policy_key(policy)
        self._pinned_policy = policy

    def _score(self, policy: Policy | None, split: str) -> float:
        # Evaluating must not move torch's global random state: agents sample from it, and an
        # evaluation answered from a log (resume) or run on another process (Ray) draws nothing,
        # so any draw here (a DataLoader's base seed, a user's random transform) would make the
        # same seed give different episodes. It also makes random transforms repeat exactly.
        with _private_rng():
            self.prepare(policy)
            return self._top1(split)

    @torch.no_grad()
    def _top1(self, split: str) -> float:
        model = self.compressed.module
        correct = total = 0
        for x, y in self._batches(split):
            logits = model(x)
            correct += int((logits.argmax(dim=1) == y).sum())
            total += int(y.numel())
        return correct / total

    def prepare(self, policy: Policy | None) -> nn.Module:
        """Apply ``policy`` (None: FP32) to the working copy, re-calibrate BN, return the copy.

        The returned module is the evaluator's own working copy: read it (export, inspect) before
        the next call, which overwrites it. Always a full pass (no prefix reuse).
        """
        self._apply(policy)
        if policy is not None and self.bn_recalibration:
            self._recalibrate()
        return self.compressed.module

    @cached_property
    def fp32_accuracy(self) -> float:
        """Score of the all-32-bit policy on the held-out split (computed once).

        Scored through the same pipeline as every policy (BN re-calibration included), so that
        ``accuracy(policy) - fp32_accuracy`` measures compression alone.
        """
        with _private_rng():
            return self._evaluate(Policy.uniform(self.graph), None, keep_prefix=False).score

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        """Score on the held-out split of the model compressed by ``policy``.

        Args:
            policy: The policy.
            at_least: Racing: stop as soon as the score cannot reach this value (with the
                confidence of ``race_z``) and return the score of the images seen so far;
                ``last.complete`` is then False. None: score every held-out image.
        """
        with _private_rng():
            self.last = self._evaluate(policy, at_least)
        return self.last.score

    def test_accuracy(self, policy: Policy | None) -> float:
        """Top-1 on the test split (final reports only); ``None`` scores the FP32 model as is."""
        return self._score(policy, "test")

    def check_split(self, split: str) -> None:
        """Check every label of ``split`` (and that the model runs on it) before long work.

        The test split is only scored at the end of a search; a bad label there would otherwise
        fail after the whole search. Labels are read from a ``targets`` attribute (torchvision's
        datasets) when there is one, else by a pass over the split.

        Raises:
            TaskError: Naming the split, if a label is not a class index or a sample cannot be
                batched.
        """
        with _private_rng():
            self._check_split(split)
            data = getattr(self.task, split)
            if isinstance(data, TensorDataset):
                return  # all its labels were checked above
            targets = getattr(data, "targets", None)
            if targets is not None and len(targets) == len(data):
                labels = torch.as_tensor(targets)
                n = self.task.num_classes
                if labels.is_floating_point() or int(labels.min()) < 0 or int(labels.max()) >= n:
                    raise TaskError(f"the {split} split has labels outside [0, {n})")
                return
            for _ in self._batches(split):
                pass


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

    def check_split(self, split: str) -> None:
        """The inner evaluator's check of a split (see ``LocalEvaluator.check_split``)."""
        self.inner.check_split(split)
