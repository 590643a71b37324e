"""Per-layer sensitivity: what each layer's decision, taken alone, does to the network's output.

For every compressible layer and every choice an agent can make for it (a weight width, a share of
pruned kernels, an input activation width), the network is compressed at *that layer only* (the
rest FP32) and scored against the FP32 model's own outputs on a small fixed set of held-out images:
the mean KL divergence ``KL(p_fp32 || p_compressed)``, BatchNorm re-calibrated as the proxy does.
This is the classic sensitivity analysis of mixed-precision quantization (HAQ, HAWQ's Hessian
traces, AMC's per-layer pruning curves) done with the proxy's own pipeline.

Why it helps agents that must learn from a few hundred evaluations:

- **Observation features**: the current layer's sensitivities tell an agent which layers can take
  few bits before it has spent a single evaluation on finding out;
- **A dense, cheap signal per decision**: small per-layer perturbations of the output add up
  roughly independently, so ``contribution(layer, decision)`` (interpolated over the measured
  choices: pruning at its sparsity, each importance group's width weighted by its share of the
  kernels, the activation width) estimates what the decision costs at the network's output. The
  environment exposes it in ``info`` and as an optional potential-based shaping term, without
  running the network on the step path;
- **A prior for surrogate models** of the proxy (the two-level controller's).

Measured once per task on a private ``LocalEvaluator`` (prefix reuse makes a single-layer change
cost only the layers after it) and cached in memory and on disk under ``JPQ_CACHE_DIR`` (default
``~/.cache/jpq-env``), keyed by the model's weights, the graph, the choices and the images used.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Subset, TensorDataset

from jpq_env.atomic import write_atomic
from jpq_env.core.graph import LayerGraph
from jpq_env.core.importance import kernel_ranking
from jpq_env.core.policy import LayerPolicy, Policy
from jpq_env.core.quant import FULL_PRECISION
from jpq_env.tasks.base import Task

if TYPE_CHECKING:
    from jpq_env.proxy.evaluator import LocalEvaluator

__all__ = [
    "CACHE_ENV",
    "Measurement",
    "SensitivityTable",
    "last_measurement",
    "measure_sensitivity",
    "reporting",
]

CACHE_ENV = "JPQ_CACHE_DIR"
SPARSITIES = (0.2, 0.4, 0.6, 0.8)
_MEMORY: dict[str, SensitivityTable] = {}

Progress = Callable[[int, int], None]
"""Called with (layers measured, layers) while a table is measured."""

_PROGRESS: ContextVar[Progress | None] = ContextVar("jpq_sensitivity_progress", default=None)


@dataclass(frozen=True)
class Measurement:
    """How the last table was obtained: measured or read, where it is cached, how long it took.

    Attributes:
        path: The table's file in the disk cache (``JPQ_CACHE_DIR``, default ``~/.cache/jpq-env``).
        source: ``"measured"``, ``"disk"`` (read from ``path``) or ``"memory"``.
        seconds: Wall time of the call.
        evaluations: Single-layer evaluations it took (0 unless measured).
    """

    path: Path
    source: str
    seconds: float
    evaluations: int = 0


_LAST: list[Measurement] = []


def last_measurement() -> Measurement | None:
    """The last ``measure_sensitivity`` call's ``Measurement`` in this process (None: none yet)."""
    return _LAST[-1] if _LAST else None


@contextmanager
def reporting(progress: Progress | None) -> Iterator[None]:
    """Report progress of any table measured inside the block (a progress bar, say).

    The environment measures its table while it is built (``JPQEnv(sensitivity=True)``), so a
    caller that builds one wraps the construction in this block to show the wait.
    """
    token = _PROGRESS.set(progress)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@dataclass(frozen=True)
class SensitivityTable:
    """Mean KL to the FP32 outputs when one layer alone is compressed.

    Attributes:
        names: The compressible layers, in execution order.
        bits: Weight widths measured (every kernel at that width, no pruning).
        weight: ``(layers, len(bits))``: KL with the layer's weights at each width.
        sparsities: Shares of pruned kernels measured (the least important first, weights FP32).
        prune: ``(layers, len(sparsities))``: KL with that share pruned (inf where not allowed).
        act_bits: Input activation widths measured.
        act: ``(layers, len(act_bits))``: KL with the layer's input at each width (0 where the
            width is fixed by a convention, e.g. the network input).
        images: Held-out images the KL is averaged over.
    """

    names: tuple[str, ...]
    bits: tuple[int, ...]
    weight: np.ndarray
    sparsities: tuple[float, ...]
    prune: np.ndarray
    act_bits: tuple[int, ...]
    act: np.ndarray
    images: int

    def weight_kl(self, layer: int, width: int) -> float:
        """KL of the layer's weights at ``width`` (interpolated in the width; 0 at 32 bits)."""
        if width >= FULL_PRECISION:
            return 0.0
        xs, ys = self._log_weight
        return float(np.exp(np.interp(width, xs, ys[layer])))

    @cached_property
    def _log_weight(self) -> tuple[np.ndarray, np.ndarray]:
        """The widths and the log of every layer's weight KL, for ``weight_kl`` (per step)."""
        return np.asarray(self.bits, dtype=np.float64), np.log(np.maximum(self.weight, 1e-12))

    def prune_kl(self, layer: int, sparsity: float) -> float:
        """KL of pruning a share ``sparsity`` of the layer's kernels (linear in between)."""
        if sparsity <= 0:
            return 0.0
        xs = np.array([0.0, *self.sparsities])
        ys = np.concatenate([[0.0], np.nan_to_num(self.prune[layer], posinf=1e3)])
        return float(np.interp(sparsity, xs, ys))

    def act_kl(self, layer: int, width: int) -> float:
        """KL of the layer's input activations at ``width`` (interpolated; 0 at 32 bits).

        0 when activation widths were not measured (they are not a decision: the same for every
        policy).
        """
        if width >= FULL_PRECISION or not self.act_bits:
            return 0.0
        xs = np.asarray(self.act_bits, dtype=np.float64)
        ys = np.log(np.maximum(self.act[layer], 1e-12))
        return float(np.exp(np.interp(width, xs, ys)))

    def contribution(self, layer: int, bits: np.ndarray, act_bits: int) -> float:
        """Estimated KL a layer decision adds at the output (per-kernel widths, 0 = pruned).

        The pruning term at the layer's sparsity, plus each width's term weighted by the share
        of the layer's kernels that have it, plus the activation term.
        """
        bits = np.asarray(bits)
        n = max(bits.size, 1)
        widths, counts = np.unique(bits, return_counts=True)
        pruned = int(counts[0]) if widths.size and widths[0] == 0 else 0
        total = self.prune_kl(layer, pruned / n)
        for width, count in zip(widths.tolist(), counts.tolist(), strict=True):
            if width > 0:  # widths in increasing order, each weighted by its share of kernels
                total += count / n * self.weight_kl(layer, int(width))
        return total + self.act_kl(layer, int(act_bits)) * (bits.size - pruned) / n

    def features(self, layer: int) -> np.ndarray:
        """The layer's sensitivities squashed into [0, 1): ``k / (k + median)`` per entry.

        Widths, then sparsities, then activation widths; the median is over the whole table,
        so the entries compare layers with one another.
        """
        return self._features[layer]

    @cached_property
    def _features(self) -> np.ndarray:
        """Every layer's ``features`` (computed once: the observation reads them every step)."""
        rows = np.concatenate([self.weight, self.prune, self.act], axis=1)
        rows = np.nan_to_num(rows, posinf=1e3)
        out = (rows / (rows + self.scale)).astype(np.float32)
        out.flags.writeable = False
        return out

    @cached_property
    def scale(self) -> float:
        """Median of the finite, non-zero entries of the table (the squashing's midpoint)."""
        every = np.concatenate([self.weight.ravel(), self.prune.ravel(), self.act.ravel()])
        every = every[np.isfinite(every) & (every > 0)]
        return float(np.median(every)) if every.size else 1.0

    @property
    def size(self) -> int:
        """Entries per layer (the length of ``features``)."""
        return len(self.bits) + len(self.sparsities) + len(self.act_bits)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (``inf`` written as null)."""

        def rows(a: np.ndarray) -> list[list[float | None]]:
            return [[None if not np.isfinite(v) else float(v) for v in r] for r in a]

        return {
            "names": list(self.names),
            "bits": list(self.bits),
            "weight": rows(self.weight),
            "sparsities": list(self.sparsities),
            "prune": rows(self.prune),
            "act_bits": list(self.act_bits),
            "act": rows(self.act),
            "images": self.images,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SensitivityTable:
        """Read what ``to_json`` wrote."""

        def arr(rows: list[list[float | None]]) -> np.ndarray:
            return np.array([[np.inf if v is None else v for v in r] for r in rows], dtype=float)

        return cls(
            tuple(data["names"]),
            tuple(int(b) for b in data["bits"]),
            arr(data["weight"]),
            tuple(float(s) for s in data["sparsities"]),
            arr(data["prune"]),
            tuple(int(b) for b in data["act_bits"]),
            arr(data["act"]),
            int(data["images"]),
        )


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "jpq-env") / "sensitivity"


def _key(task: Task, graph: LayerGraph, settings: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(task.model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(graph.fingerprint.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    for split in ("val", "calib"):  # the images: their count and a digest of the first batch
        data = getattr(task, split)
        h.update(str(len(data)).encode())
        first = data[0][0]
        if isinstance(first, torch.Tensor):
            h.update(first.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _subset(data: Any, n: int) -> Any:
    size = len(data)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(1))[: min(n, size)]
    if isinstance(data, TensorDataset):
        return TensorDataset(*(t[order] for t in data.tensors))
    return Subset(data, order.tolist())


def measure_sensitivity(
    task: Task,
    graph: LayerGraph,
    bits: Sequence[int],
    act_bits: Sequence[int],
    *,
    importance: str = "l1",
    fixed_act: dict[int, int] | None = None,
    unprunable: Sequence[int] = (),
    images: int = 256,
    calib_images: int = 128,
    bn_recalibration: bool = True,
    device: str | torch.device | None = "cpu",
    cache: bool = True,
) -> SensitivityTable:
    """Measure (or read from the cache) the sensitivity table of a task (see the module doc).

    Args:
        task: The task (its model is only read).
        graph: Its layer graph.
        bits: Weight widths to measure.
        act_bits: Activation widths to measure (empty: activations are not decided).
        importance: Kernel ranking criterion deciding which kernels a sparsity prunes.
        fixed_act: Layers whose input width is fixed (the network input), by layer index.
        unprunable: Layers that may not be pruned (pinned layers; the layers producing the
            output are never pruned).
        images: Held-out images to average the KL over (a seeded subset of ``task.val``).
        calib_images: Calibration images for the BatchNorm re-calibration of each measurement.
        bn_recalibration: Re-calibrate BatchNorm, as the proxy does.
        device: Where to run.
        cache: Read and write the memory and disk caches.
    """
    fixed_act = dict(fixed_act or {})
    unprunable = sorted({*(int(i) for i in unprunable), *graph.output_layers})
    settings = _settings(
        bits, act_bits, importance, fixed_act, unprunable, images, calib_images, bn_recalibration
    )
    started = time.perf_counter()
    key = _key(task, graph, settings) if cache else ""
    path = _cache_dir() / f"{key}.json"
    if cache and key in _MEMORY:
        _LAST[:] = [Measurement(path, "memory", time.perf_counter() - started)]
        return _MEMORY[key]
    stored = _read_cached(path, graph) if cache else None
    if stored is not None:
        _MEMORY[key] = stored
        _LAST[:] = [Measurement(path, "disk", time.perf_counter() - started)]
        return stored
    ev = _evaluator(task, graph, images, calib_images, bn_recalibration, device)
    table = _measure(ev, task, graph, bits, act_bits, importance, fixed_act, unprunable)
    if cache:
        _MEMORY[key] = table
        _write_cached(path, table)
    evaluations = int(ev.stats.evaluations)
    _LAST[:] = [Measurement(path, "measured", time.perf_counter() - started, evaluations)]
    return table


def _settings(
    bits: Sequence[int],
    act_bits: Sequence[int],
    importance: str,
    fixed_act: dict[int, int],
    unprunable: Sequence[int],
    images: int,
    calib_images: int,
    bn_recalibration: bool,
) -> dict[str, Any]:
    """What a table depends on besides the model, graph and images: part of the cache key.

    Any change to these fields (or to how they are written) changes every key, so the tables
    already cached on users' disks would be measured again: bump ``version`` deliberately.
    """
    return {
        "bits": sorted(int(b) for b in bits),
        "act_bits": sorted(int(b) for b in act_bits),
        "importance": importance,
        "fixed_act": {str(k): v for k, v in sorted(fixed_act.items())},
        "unprunable": sorted(int(i) for i in unprunable),
        "images": images,
        "calib_images": calib_images,
        "bn_recalibration": bn_recalibration,
        "sparsities": list(SPARSITIES),
        "version": 2,  # 2: BatchNorm re-calibrated by the measured shift (proxy/batchnorm.py)
    }


def _read_cached(path: Path, graph: LayerGraph) -> SensitivityTable | None:
    """The table cached on disk at ``path``, or None if missing, damaged or of another graph."""
    if path.is_file():
        try:
            table = SensitivityTable.from_json(json.loads(path.read_text()))
            if table.names == graph.names:
                return table
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is measured again
    return None


def _write_cached(path: Path, table: SensitivityTable) -> None:
    """Write the table to the disk cache at ``path``, atomically."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(table.to_json()))
    except OSError:
        pass  # a read-only home: measured again next time


def _evaluator(
    task: Task,
    graph: LayerGraph,
    images: int,
    calib_images: int,
    bn_recalibration: bool,
    device: str | torch.device | None,
) -> LocalEvaluator:
    """A private KL evaluator on seeded subsets of the task's held-out and calibration images."""
    from jpq_env.proxy.evaluator import (
        LocalEvaluator,  # the evaluator builds on this module's users
    )

    small = Task(
        task.name,
        task.model,
        task.example_input,
        task.train,
        _subset(task.val, images),
        _subset(task.calib, calib_images),
        task.test,
        task.num_classes,
    )
    return LocalEvaluator(
        small, graph, metric="kl", bn_recalibration=bn_recalibration, device=device
    )


def _measure(
    ev: LocalEvaluator,
    task: Task,
    graph: LayerGraph,
    bits: Sequence[int],
    act_bits: Sequence[int],
    importance: str,
    fixed_act: dict[int, int],
    unprunable: Sequence[int],
) -> SensitivityTable:
    """Measure the table: every layer's every choice, the rest of the network FP32."""
    fp32 = Policy.uniform(graph)
    ev.set_incumbent(fp32)  # its activations are kept: each measurement resumes at its layer
    ev.accuracy(fp32)
    modules = [task.model.get_submodule(name) for name in graph.names]
    orders = [kernel_ranking(m.weight, importance) for m in modules]  # type: ignore[arg-type]
    widths = sorted(int(b) for b in bits)
    acts = sorted(int(b) for b in act_bits)

    def kl(layer: int, layer_bits: np.ndarray, act: int) -> float:
        layers = list(fp32.layers)
        layers[layer] = LayerPolicy(graph.names[layer], layer_bits, act)
        score = ev.accuracy(Policy(tuple(layers), fp32.fingerprint))
        return float(-np.log(max(score, 1e-300)))

    weight, prune, act = _measure_layers(kl, graph, orders, widths, acts, fixed_act, unprunable)
    return SensitivityTable(
        graph.names,
        tuple(widths),
        weight,
        SPARSITIES,
        prune,
        tuple(acts),
        act,
        ev.val_images,
    )


def _measure_layers(
    kl: Callable[[int, np.ndarray, int], float],
    graph: LayerGraph,
    orders: Sequence[Any],
    widths: Sequence[int],
    acts: Sequence[int],
    fixed_act: dict[int, int],
    unprunable: Sequence[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``weight``, ``prune`` and ``act`` arrays of the table, layer by layer.

    ``kl(layer, per-kernel widths (0 = pruned), input width)`` scores one layer's decision;
    ``orders[layer]`` ranks its kernels, the least important last (pruned first).
    """
    n = len(graph)
    weight = np.zeros((n, len(widths)))
    prune = np.zeros((n, len(SPARSITIES)))
    act = np.zeros((n, len(acts)))
    progress = _PROGRESS.get()
    for layer, info in enumerate(graph.layers):
        if progress is not None:
            progress(layer, n)
        k = info.out_channels
        for j, width in enumerate(widths):
            weight[layer, j] = kl(layer, np.full(k, width), FULL_PRECISION)
        for j, share in enumerate(SPARSITIES):
            pruned = round(share * k)
            if layer in unprunable or pruned >= k:
                prune[layer, j] = np.inf
                continue
            layer_bits = np.full(k, FULL_PRECISION)
            layer_bits[orders[layer][k - pruned :]] = 0
            prune[layer, j] = kl(layer, layer_bits, FULL_PRECISION)
        for j, width in enumerate(acts):
            if layer not in fixed_act:
                act[layer, j] = kl(layer, np.full(k, FULL_PRECISION), width)
    if progress is not None:
        progress(n, n)
    return weight, prune, act
