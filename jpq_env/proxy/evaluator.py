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

import abc
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from jpq_env import validation as check
from jpq_env.core.compress import CompressedModel, calibrate_ranges
from jpq_env.core.graph import LayerGraph
from jpq_env.core.graph.checks import check_outputs
from jpq_env.core.policy import Policy, PolicyKey
from jpq_env.errors import ArgumentError, TaskError
from jpq_env.proxy.batchnorm import (
    CALIBRATION_MEMORY,
    METHODS,
    Moments,
    Recalibration,
    StreamingMoments,
    batchnorms,
)
from jpq_env.proxy.data import auto_batch_size, iter_batches, private_rng, resolve_device
from jpq_env.proxy.prefix import Checkpoint, Prefix, PrefixCache, SegmentedForward
from jpq_env.proxy.racing import RaceRule
from jpq_env.tasks.base import Task

__all__ = [
    "METRICS",
    "Evaluation",
    "Evaluator",
    "EvaluatorStats",
    "LocalEvaluator",
    "PaddedEvaluator",
    "WrappedEvaluator",
    "as_evaluator",
]

METRICS = ("top1", "agreement", "kl")
_RESULTS_KEPT = 64  # per-image results of recent complete evaluations (racing pairs with them)


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
class EvaluatorStats:
    """What an evaluator has spent, for benchmarks and run summaries.

    Attributes:
        evaluations: Policies scored (memoised answers not included).
        memo: Answers given from memory (a policy scored before).
        complete: Evaluations that scored the whole held-out split (not raced out).
        images: Held-out images scored.
        image_forwards: Images (held-out and calibration) times the share of the network's MACs
            computed for them (prefix reuse computes fewer): the proxy's cost in full passes.
        calibration_forwards: The part of ``image_forwards`` the BatchNorm re-calibration spent.
        seconds: Wall time spent scoring.
    """

    evaluations: int = 0
    memo: int = 0
    complete: int = 0
    images: int = 0
    image_forwards: float = 0.0
    calibration_forwards: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """The fields as a JSON-able dict."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Evaluator(abc.ABC):
    """What the environment and the agents ask of an accuracy proxy (scores are in [0, 1]).

    Implement ``fp32_accuracy`` and ``accuracy``; every other member has a default that describes
    an evaluator without that ability, so callers read the members instead of probing for them:

    - ``supports_racing``: ``accuracy(policy, at_least=x)`` may stop once the score cannot reach
      ``x`` (``last.complete`` is then False); without it, ``at_least`` is ignored;
    - ``set_incumbent(policy)``: the policy racing pairs with (default: nothing to pair);
    - ``workers``, ``accuracy_many``, ``iter_accuracy``: evaluations run at once (a Ray pool's
      actors); a search batches its episodes only when ``workers > 1``;
    - ``last``: how the last ``accuracy`` call was answered (images scored, complete or raced);
    - ``test_accuracy``, ``check_split``: the test split, for final reports only;
    - ``device``: where the proxy runs (sensitivity measurements run there too);
    - ``stats``: what it has spent (``EvaluatorStats``; None: not counted);
    - ``scorer``: the evaluator that scores a single policy outside a batch (itself).

    A wrapper that changes one thing about another evaluator derives from ``WrappedEvaluator``.
    """

    supports_racing: bool = False
    workers: int = 1
    last: Evaluation | None = None
    device: torch.device = torch.device("cpu")
    stats: EvaluatorStats | None = None

    @property
    @abc.abstractmethod
    def fp32_accuracy(self) -> float:
        """Score of the uncompressed model on the same data."""
        ...

    @abc.abstractmethod
    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        """Score of the model compressed by ``policy`` (``at_least``: see ``supports_racing``)."""
        ...

    val_images: int = 0
    """Held-out images a complete evaluation scores (0: unknown, an evaluator of the user's)."""

    @property
    def scorer(self) -> Evaluator:
        """The evaluator that scores one policy outside a batch (this one)."""
        return self

    def set_incumbent(self, policy: Policy | None) -> None:
        """The policy racing pairs with (None: none); evaluators without racing ignore it."""
        return None

    def accuracy_many(self, policies: Sequence[Policy]) -> list[float]:
        """Scores of several policies (one after the other unless the evaluator has workers)."""
        return [self.accuracy(p) for p in policies]

    def iter_accuracy(self, policies: Iterable[Policy]) -> Iterator[float]:
        """Scores of ``policies`` as they become known (default: ``accuracy_many`` of all)."""
        return iter(self.accuracy_many(list(policies)))

    @property
    def has_test_split(self) -> bool:
        """True if ``test_accuracy`` scores a test split (False: it raises)."""
        return type(self).test_accuracy is not Evaluator.test_accuracy

    def test_accuracy(self, policy: Policy | None) -> float:
        """Top-1 on the test split (final reports only); None scores the FP32 model."""
        raise NotImplementedError(f"{type(self).__name__} has no test split")

    def check_split(self, split: str) -> None:
        """Check a split's labels before long work (default: nothing to check)."""
        return None


class WrappedEvaluator(Evaluator):
    """An evaluator that forwards everything to ``inner``; subclasses change what they need."""

    def __init__(self, inner: Evaluator) -> None:
        self.inner = as_evaluator(inner)

    @property
    def supports_racing(self) -> bool:  # type: ignore[override]
        """The inner evaluator's."""
        return self.inner.supports_racing

    @property
    def workers(self) -> int:  # type: ignore[override]
        """The inner evaluator's."""
        return self.inner.workers

    @property
    def fp32_accuracy(self) -> float:
        """The inner evaluator's FP32 score."""
        return float(self.inner.fp32_accuracy)

    @property
    def val_images(self) -> int:  # type: ignore[override]
        """The inner evaluator's."""
        return self.inner.val_images

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        """The inner evaluator's score."""
        return self.inner.accuracy(policy, at_least=at_least)

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        """The inner evaluator's."""
        return self.inner.device

    @property
    def stats(self) -> EvaluatorStats | None:  # type: ignore[override]
        """The inner evaluator's."""
        return self.inner.stats

    def set_incumbent(self, policy: Policy | None) -> None:
        """Forwarded to the inner evaluator."""
        self.inner.set_incumbent(policy)

    @property
    def has_test_split(self) -> bool:
        """The inner evaluator's."""
        return self.inner.has_test_split

    def test_accuracy(self, policy: Policy | None) -> float:
        """The inner evaluator's test accuracy."""
        return float(self.inner.test_accuracy(policy))

    def check_split(self, split: str) -> None:
        """The inner evaluator's check of a split."""
        self.inner.check_split(split)


class _Adapted(WrappedEvaluator):
    """An object with only ``fp32_accuracy`` and ``accuracy(policy)``, as an ``Evaluator``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    supports_racing = False
    workers = 1

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        """The object's score (it cannot race: ``at_least`` is ignored)."""
        return float(self.inner.accuracy(policy))

    device = torch.device("cpu")

    def set_incumbent(self, policy: Policy | None) -> None:
        """Nothing to pair with."""

    @property
    def has_test_split(self) -> bool:
        """True if the object has ``test_accuracy``."""
        return callable(getattr(self.inner, "test_accuracy", None))

    def test_accuracy(self, policy: Policy | None) -> float:
        """The object's ``test_accuracy``, if it has one."""
        if not self.has_test_split:
            raise NotImplementedError(f"{type(self.inner).__name__} has no test_accuracy")
        return float(self.inner.test_accuracy(policy))

    def check_split(self, split: str) -> None:
        """The object's ``check_split``, if it has one."""
        method = getattr(self.inner, "check_split", None)
        if callable(method):
            method(split)


def as_evaluator(obj: Any) -> Evaluator:
    """``obj`` as an ``Evaluator``: itself if it is one, else adapted (the only duck typing).

    Raises:
        ArgumentError: If ``obj`` has no ``accuracy(policy)`` method or no ``fp32_accuracy``.
    """
    if isinstance(obj, Evaluator):
        return obj
    has_fp32 = hasattr(type(obj), "fp32_accuracy") or "fp32_accuracy" in getattr(
        obj, "__dict__", {}
    )
    if not (callable(getattr(obj, "accuracy", None)) and has_fp32):
        raise ArgumentError(
            "evaluator must be a jpq_env.proxy.evaluator.Evaluator or have an accuracy(policy) "
            f"method and an fp32_accuracy attribute, got {type(obj).__name__}"
        )
    return _Adapted(obj)


def _standard_layout_hooks(bn: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that give ``bn`` its input in the standard layout and hand channels-last back."""

    def before(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0].contiguous(), *args[1:])

    def after(_: nn.Module, __: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out

    return [bn.register_forward_pre_hook(before), bn.register_forward_hook(after)]


def _shuffled(data: Dataset, seed: int, limit: int | None = None) -> Dataset:
    """``data`` in a seeded random order (the same for every policy), maybe cut to ``limit``."""
    n = len(data)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if limit is not None:
        order = order[: min(limit, n)]
    if isinstance(data, TensorDataset):
        return TensorDataset(*(t[order] for t in data.tensors))
    return Subset(data, order.tolist())


class LocalEvaluator(Evaluator):
    """The accuracy proxy, run in this process.

    Args:
        task: Model and data splits. The model is copied; it is never written.
        graph: The model's layer graph (built from ``task`` if not given).
        bn_recalibration: Re-estimate BatchNorm statistics on ``task.calib`` after applying a
            policy (default True; ``jpq_env.proxy.batchnorm``).
        bn_method: How: ``"shift"`` (default: the trained statistics moved by the shift that
            compression causes, so FP32 scores as the model scores itself) or ``"replace"``
            (the calibration split's own statistics).
        bn_images: Calibration images the re-calibration reads (the first of the split's seeded
            order; None: all of them). The activation ranges always see the whole split.
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

    stats: EvaluatorStats

    def __init__(
        self,
        task: Task,
        graph: LayerGraph | None = None,
        *,
        bn_recalibration: bool = True,
        bn_method: str = "shift",
        bn_images: int | None = None,
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
            raise ArgumentError(f"task must be a jpq_env.Task, got {type(task).__name__}")
        self.task = task
        self.bn_recalibration = check.flag("bn_recalibration", bn_recalibration)
        self._recal = Recalibration(check.choice("bn_method", bn_method, METHODS))
        bn_images = check.integer("bn_images", bn_images, low=1, optional=True)
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
            try:
                self.compressed.module.to(memory_format=torch.channels_last)
            except RuntimeError:  # a 5-D weight (Conv3d) has no channels-last layout: keep rows
                self._channels_last = False
                self.compressed.module.to(memory_format=torch.contiguous_format)
        # Calibration batches in a seeded order, so that no batch holds one class of a sorted
        # split (the activation ranges see them too; BatchNorm statistics do not depend on it).
        self._calib = _shuffled(task.calib, seed=1)
        self._bn_calib = _shuffled(task.calib, seed=1, limit=bn_images)
        self.calib_images = len(self._bn_calib) if self.bn_recalibration else 0  # type: ignore[arg-type]
        """Calibration images each BatchNorm re-calibration reads (0: none)."""
        with private_rng():  # a random transform of the user's draws the same numbers here too
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
        # The lockstep re-calibration holds every calibration batch's live values at once.
        calib_bytes = 4 * len(self._bn_calib) * self.forward.peak_floats_per_sample  # type: ignore[arg-type]
        self._lockstep = calib_bytes <= CALIBRATION_MEMORY
        self._bn_positions = self._batchnorm_positions()
        self._total_macs = max(self.graph.compressible_macs, 1)
        images = self.val_images + (len(self._bn_calib) if self.bn_recalibration else 0)  # type: ignore[arg-type]
        self._cache = PrefixCache(self.forward, len(self.graph), images, prefix_cache_mb)
        self._pinned_policy: Policy | None = None
        self._results: OrderedDict[PolicyKey, torch.Tensor] = OrderedDict()
        self.stats = EvaluatorStats()
        self.last: Evaluation | None = None
        if self.bn_recalibration and self._recal.needs_reference:
            with private_rng():
                self._measure_reference()

    # ---- data ---------------------------------------------------------------------------------

    def _held_out(self, limit: int | None) -> Dataset:
        """The held-out split in a seeded order (racing reads it from the start), maybe cut.

        The order is the same for every policy, so the first ``n`` images are a fair sample of
        the split whatever order the user's dataset has (ImageFolder sorts by class).
        """
        return _shuffled(self.task.val, seed=0, limit=limit)

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
        data = getattr(self, f"_{split}", None) if split in ("val", "calib", "bn_calib") else None
        data = data if data is not None else getattr(self.task, split)
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

    def _batchnorm_positions(self) -> dict[str, int]:
        """Where the pass calls each BatchNorm (-1: not called by the traced graph)."""
        calls = self.forward.call_positions
        return {name: calls.get(name, -1) for name in batchnorms(self.compressed.module)}

    # ---- scoring ------------------------------------------------------------------------------

    @torch.no_grad()
    def _recalibrate(
        self, start: Checkpoint | None = None, keep: list[Checkpoint] | None = None
    ) -> dict[int, list[dict[Any, Any]]]:
        """Set BatchNorm statistics to the calibration split's (from ``start`` on).

        The batches run in lockstep and each BatchNorm gets the population statistics of its
        input over the whole split (``jpq_env.proxy.batchnorm``). BatchNorms before ``start``
        take the statistics the prefix's policy left (they see the same inputs). Returns the
        live values at the checkpoints ``keep``, per batch (for a new prefix).
        """
        module = self.compressed.module
        pos = 0 if start is None else start.position
        named = dict(module.named_modules())
        if start is not None:
            assert self._cache.prefix is not None
            for name, buffers in self._cache.prefix.bn_state.items():
                if self._bn_positions[name] < pos:
                    for key, value in buffers.items():
                        getattr(named[name], key).copy_(value)
        keep = keep or []
        batches = [x for x, _ in self._calib_iter()]
        if not self._lockstep:
            self._recalibrate_streaming(batches, self._recal.set)
            return {c.position: [] for c in keep}
        after = [name for name, p in self._bn_positions.items() if p >= pos]
        states = None if start is None else self._cache.prefix.calib[pos]  # type: ignore[union-attr]
        _, kept = self.forward.run_many(batches, pos, states, keep, self._recal, after)
        self._count(sum(len(x) for x in batches), pos, calibration=True)
        return {c.position: per_batch for c, per_batch in zip(keep, kept, strict=True)}

    @torch.no_grad()
    def _measure_reference(self) -> None:
        """The FP32 model's BatchNorm input moments on the calibration split (once)."""
        self.compressed.restore()
        batches = [x for x, _ in self._calib_iter()]
        if self._lockstep:
            positioned = [name for name, p in self._bn_positions.items() if p >= 0]
            self.forward.run_many(batches, 0, None, (), self._recal.record, positioned)
        else:
            self._recalibrate_streaming(batches, None)

    def _recalibrate_streaming(
        self,
        batches: list[torch.Tensor],
        then: Callable[[str, nn.Module, Moments], None] | None,
    ) -> None:
        """The memory-bounded pass: exact input moments, each batch normalised by its own.

        ``then(name, bn, moments)`` sets each BatchNorm's statistics afterwards; None records the
        moments as the FP32 reference.
        """
        bns = batchnorms(self.compressed.module)
        # Batch statistics of channels-last activations are reduced in an order that depends on
        # the thread count; in the standard layout they are not.
        hooks = (
            [h for bn in bns.values() for h in _standard_layout_hooks(bn)]
            if self._channels_last
            else []
        )
        streaming = StreamingMoments(bns)
        try:
            with streaming.recording():
                for x in batches:
                    self.forward.run(x)
                    self._count(len(x), 0, calibration=True)
        finally:
            for hook in hooks:
                hook.remove()
        measured = streaming.result()
        if then is None:
            self._recal.reference.update(measured)
            return
        for name, bn in bns.items():
            if name in measured:
                then(name, bn, measured[name])

    @cached_property
    def _calib_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The re-calibration's batches, kept when the split is tensors (read every evaluation)."""
        if not isinstance(self._bn_calib, TensorDataset):
            return None
        return list(self._batches("bn_calib"))

    def _calib_iter(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._calib_batches is not None:
            return iter(self._calib_batches)
        return self._batches("bn_calib")

    def _count(self, images: int, position: int, calibration: bool = False) -> None:
        start = next((c for c in self.forward.checkpoints if c.position == position), None)
        done = 1.0 - (start.macs_before / self._total_macs if start is not None else 0.0)
        self.stats.image_forwards += images * done
        if calibration:
            self.stats.calibration_forwards += images * done

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
        with private_rng(), torch.no_grad():
            self._apply(Policy.uniform(self.graph))
            if self.bn_recalibration:
                self._recalibrate()
            logits = torch.cat([self.forward.run(x)[0] for x, _ in self._val_iter()])
            check_outputs(logits, "the held-out split")
            return logits

    def _apply(self, policy: Policy | None) -> None:
        if policy is None:
            self.compressed.restore()
        else:
            self.compressed.apply(policy)

    @torch.no_grad()
    def _evaluate(
        self, policy: Policy, at_least: float | None, keep_prefix: bool = True, fp32: bool = False
    ) -> Evaluation:
        """Apply, re-calibrate and score ``policy`` on the held-out split (see ``accuracy``).

        ``fp32``: the policy is the uncompressed model, whose outputs must be finite on every
        held-out image (``check_outputs``): a model that gives NaN or inf is refused, whatever
        makes it do so, rather than scoring every policy alike.
        """
        started = time.perf_counter()
        key = policy.key()
        known = self._results.get(key)
        if known is not None:  # scored before in full: the same numbers, and it answers any race
            self._results.move_to_end(key)
            self.stats.memo += 1
            return Evaluation(self._final(known), int(known.numel()), True, 0, 0.0)
        if self.metric != "top1":
            _ = self._fp32_logits  # before the policy is applied (it scores the FP32 policy)
        if self._race_min_images() >= self.val_images:
            at_least = None  # no decision could come before the last image: score it all
        reference = self._reference() if at_least is not None else None  # may evaluate it first
        rule = self._race_rule(at_least, reference)
        start = self._cache.resume_point(key)
        pos = 0 if start is None else start.position
        self._apply(policy)
        recording = keep_prefix and self._cache.records(key)
        keep = [c for c in self._cache.checkpoints if c.position > pos] if recording else []
        calib_states = self._recalibrate(start, keep) if self.bn_recalibration else {}
        val_states: dict[int, list[dict[Any, Any]]] = {c.position: [] for c in keep}
        values: list[torch.Tensor] = []
        seen = 0
        complete = True
        for i, (x, y) in enumerate(self._val_iter()):
            state = None if start is None else self._cache.prefix.val[pos][i]  # type: ignore[union-attr]
            logits, kept = self.forward.run(x, pos, state, keep)
            if fp32:
                check_outputs(logits, f"the held-out images {seen}-{seen + len(y) - 1}")
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
            if recording and self._cache.wants(key, score):
                self._cache.keep(
                    Prefix(key, score, calib_states, val_states, self._bn_state()), start
                )
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
        return RaceRule(needed, self.val_images, self.race_z, self._race_min_images())

    def _race_min_images(self) -> int:
        """No racing decision before this many held-out images (a batch, and a twentieth)."""
        return max(self.batch_size, self.val_images // 20)

    def _reference(self) -> torch.Tensor | None:
        """Per-image values of the pinned incumbent (scored now if they are not known).

        Racing pairs only with the incumbent an agent named: an incumbent read from the
        evaluator's own history would depend on what this process happened to evaluate (a
        resumed run replays its first episodes from the log), and so would the stops.
        """
        pinned = self._cache.pinned
        if pinned is None:
            return None
        values = self._results.get(pinned)
        if values is None:
            assert self._pinned_policy is not None
            self._evaluate(self._pinned_policy, None)
            values = self._results[pinned]
        return values

    def _remember(self, key: PolicyKey, values: torch.Tensor) -> None:
        self._results[key] = values
        self._results.move_to_end(key)
        while len(self._results) > _RESULTS_KEPT:
            self._results.popitem(last=False)

    @property
    def prefix_checkpoints(self) -> list[Checkpoint]:
        """Where prefix reuse keeps activations (chosen within ``prefix_cache_mb``)."""
        return list(self._cache.checkpoints)

    def _bn_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Copies of every BatchNorm's statistics (what a resumed pass starts from)."""
        named = dict(self.compressed.module.named_modules())
        return {
            name: {
                k: getattr(named[name], k).clone()
                for k in ("running_mean", "running_var", "num_batches_tracked")
                if getattr(named[name], k, None) is not None
            }
            for name in self._bn_positions
        }

    def set_incumbent(self, policy: Policy | None) -> None:
        """Race against, and keep activations for, ``policy`` (None: the best score so far).

        Its per-image results are computed at the first racing evaluation that needs them if
        they are not known yet (one more evaluation, not an episode; the same numbers).
        """
        self._cache.pinned = None if policy is None else policy.key()
        self._pinned_policy = policy

    def _score(self, policy: Policy | None, split: str) -> float:
        # Evaluating must not move torch's global random state: agents sample from it, and an
        # evaluation answered from a log (resume) or run on another process (Ray) draws nothing,
        # so any draw here (a DataLoader's base seed, a user's random transform) would make the
        # same seed give different episodes. It also makes random transforms repeat exactly.
        with private_rng():
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

        FP32 gets the treatment of every policy (BatchNorm re-calibrated when the evaluator
        re-calibrates), on every split, so an accuracy drop measures compression alone.

        The returned module is the evaluator's own working copy: read it (export, inspect) before
        the next call, which overwrites it. Always a full pass (no prefix reuse).
        """
        self._apply(Policy.uniform(self.graph) if policy is None else policy)
        if self.bn_recalibration:
            self._recalibrate()
        return self.compressed.module

    @cached_property
    def fp32_accuracy(self) -> float:
        """Score of the all-32-bit policy on the held-out split (computed once).

        Scored through the same pipeline as every policy (BN re-calibration included), so that
        ``accuracy(policy) - fp32_accuracy`` measures compression alone.
        """
        with private_rng():
            return self._evaluate(
                Policy.uniform(self.graph), None, keep_prefix=False, fp32=True
            ).score

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        """Score on the held-out split of the model compressed by ``policy``.

        Args:
            policy: The policy.
            at_least: Racing: stop as soon as the score cannot reach this value (with the
                confidence of ``race_z``) and return the score of the images seen so far;
                ``last.complete`` is then False. None: score every held-out image.
        """
        with private_rng():
            self.last = self._evaluate(policy, at_least)
        return self.last.score

    def test_accuracy(self, policy: Policy | None) -> float:
        """Top-1 on the test split (final reports only); ``None``: FP32, treated as any policy."""
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
        with private_rng():
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


class PaddedEvaluator(WrappedEvaluator):
    """An evaluator whose every ``accuracy`` call takes at least ``seconds`` of wall time.

    Emulates the accuracy proxy of a large model (seconds per evaluation on a GPU) with a small
    task, for scaling benchmarks and tests: the accuracies are the inner evaluator's, only the wall
    time changes. The padding sleeps, so it costs no CPU (like waiting for a GPU). It does not
    race (every padded evaluation is complete).

    Args:
        inner: The evaluator that computes the accuracies.
        seconds: Least wall time of one evaluation, in seconds (>= 0).
    """

    supports_racing = False

    def __init__(self, inner: Evaluator, seconds: float) -> None:
        self.seconds = check.number("seconds", seconds, low=0.0)
        super().__init__(inner)

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        """The inner evaluator's accuracy, returned no sooner than ``seconds`` after the call."""
        start = time.perf_counter()
        value = float(self.inner.accuracy(policy))
        left = self.seconds - (time.perf_counter() - start)
        if left > 0:
            time.sleep(left)
        return value
