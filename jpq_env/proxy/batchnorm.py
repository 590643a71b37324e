"""BatchNorm re-calibration: correct each BatchNorm for the shift compression causes.

Compressing a network moves its activations, and the statistics its BatchNorms were trained with
no longer describe them: re-estimating them on calibration images before scoring lets the proxy
see what a policy can do rather than how far its statistics drifted.

**What is measured.** The calibration batches run through the network in lockstep
(``SegmentedForward.run_many``): when the pass reaches a BatchNorm, every batch's input is at
hand, and its mean and variance are computed over all of them (float64, two passes: the mean,
then the squared deviations). They are the population moments of the whole calibration split,
however it is batched or ordered (up to float64 rounding), and every later layer sees inputs
normalised by the corrected statistics, as it will when the held-out split is scored. (torch's
usual recipe, train mode with ``momentum=None``, averages the batches' moments with equal weights,
so a short last batch counts as much as a full one, and normalises each batch by its own
statistics, so a batch of one class passes different activations to every later layer: both
depend on how the split happens to be ordered and batched.)

**What is set** (``method``):

- ``"shift"`` (default): the trained statistics, moved by the shift compression causes. The
  same moments are measured once for the FP32 model (its own statistics in place), and each
  BatchNorm gets the statistics under which its output on the calibration images has the mean
  and variance the FP32 model's has: ``var = var_trained * var_q / var_fp`` and
  ``mean = mean_q - sqrt(var_q / var_fp) * (mean_fp - mean_trained)``. The FP32 model is scored
  exactly as it scores itself, whatever the calibration images; a model trained with data
  augmentation keeps the statistics it learned with (on the ResNet-20 / CIFAR-10 workload,
  replacing them cost the FP32 model 3.8 test points and compressed policies 2-5, see
  benchmarks/results/proxy.md).
- ``"replace"``: the calibration split's own population statistics (mean and unbiased variance).

The lockstep pass holds every calibration batch's live activations at once (calibration images
x the widest live set). Above ``CALIBRATION_MEMORY`` bytes the evaluator streams the batches
instead (``StreamingMoments``): the moments are still exact over the split, but each batch is
normalised by its own statistics on the way, as in train mode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from jpq_env.errors import ArgumentError

__all__ = [
    "CALIBRATION_MEMORY",
    "METHODS",
    "Moments",
    "Recalibration",
    "StreamingMoments",
    "batchnorms",
    "moments",
]

CALIBRATION_MEMORY = 2**31
"""Bytes the lockstep calibration pass may hold (2 GiB); above it the batches are streamed."""

METHODS = ("shift", "replace")

Moments = tuple[torch.Tensor, torch.Tensor]
"""Per channel, the mean and the unbiased variance of a BatchNorm's input (float64)."""


def batchnorms(module: nn.Module) -> dict[str, _BatchNorm]:
    """Every BatchNorm of ``module`` (1d, 2d, 3d, sync) by qualified name, in module order."""
    return {n: m for n, m in module.named_modules() if isinstance(m, _BatchNorm)}


def _sums(inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per channel (dimension 1): mean, sum of squared deviations and count.

    Two passes over the inputs, both accumulated in float64: the mean, then the squared
    deviations from it (computed in the inputs' precision, so nothing is copied to float64).
    """
    dims = [d for d in range(inputs[0].dim()) if d != 1]
    count = sum(x.numel() // x.shape[1] for x in inputs)
    total = torch.stack([x.sum(dim=dims, dtype=torch.float64) for x in inputs]).sum(dim=0)
    mean = total / count
    shape = [1, -1] + [1] * (inputs[0].dim() - 2)
    centre = mean.to(inputs[0].dtype).view(shape)
    centred = torch.stack(
        [(x - centre).square_().sum(dim=dims, dtype=torch.float64) for x in inputs]
    ).sum(dim=0)
    return mean, centred, count


def moments(inputs: Sequence[torch.Tensor]) -> Moments:
    """Per channel, the mean and unbiased variance of all ``inputs`` together (float64)."""
    mean, centred, count = _sums(inputs)
    return mean, centred / max(count - 1, 1)


class Recalibration:
    """Sets BatchNorm statistics from measured input moments (see the module docstring).

    Args:
        method: ``"shift"`` or ``"replace"``.
    """

    def __init__(self, method: str = "shift") -> None:
        if method not in METHODS:
            raise ArgumentError(f"unknown re-calibration method '{method}': use one of {METHODS}")
        self.method = method
        self.reference: dict[str, Moments] = {}
        """The FP32 model's moments per BatchNorm, by its qualified name in the model."""

    @property
    def needs_reference(self) -> bool:
        """True until the FP32 moments are recorded (``"shift"`` only)."""
        return self.method == "shift" and not self.reference

    def record(self, name: str, bn: nn.Module, inputs: list[torch.Tensor]) -> None:
        """Keep the FP32 model's input moments of BatchNorm ``name`` (a synchronize callback)."""
        self.reference[name] = moments(inputs)

    def __call__(self, name: str, bn: nn.Module, inputs: list[torch.Tensor]) -> None:
        """Set ``bn``'s statistics from the moments of ``inputs`` (a synchronize callback)."""
        self.set(name, bn, moments(inputs))

    @torch.no_grad()
    def set(self, name: str, bn: nn.Module, measured: Moments) -> None:
        """Set ``bn``'s running statistics from its measured input moments.

        A BatchNorm without running statistics (``track_running_stats=False``) is left alone.
        """
        if not isinstance(bn, _BatchNorm) or bn.running_mean is None or bn.running_var is None:
            return
        mean_q, var_q = measured
        if self.method == "replace":
            mean, var = mean_q, var_q
        else:
            mean_fp, var_fp = self.reference[name]
            # A channel constant in the FP32 model (variance 0) keeps its trained scale.
            ratio = torch.where(var_fp > 0, var_q / var_fp.clamp_min(1e-300), 1.0)
            var = bn.running_var.double() * ratio
            mean = mean_q - ratio.sqrt() * (mean_fp - bn.running_mean.double())
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))


class StreamingMoments:
    """Exact input moments of each BatchNorm while batches stream through in train mode.

    The memory-bounded fallback of the lockstep pass (see the module docstring): Chan's parallel
    update merges each batch's count, mean and squared deviations (float64), so the moments do
    not depend on the batch sizes, only on what each batch fed the layer.

    Args:
        bns: The BatchNorms to measure, by qualified name.
    """

    def __init__(self, bns: dict[str, _BatchNorm]) -> None:
        self.names = {id(bn): name for name, bn in bns.items()}
        self.bns = list(bns.values())
        self._totals: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}

    def _record(self, bn: nn.Module, args: tuple[Any, ...]) -> None:
        mean_b, m2_b, n_b = _sums([args[0].detach()])
        key = id(bn)
        if key not in self._totals:
            self._totals[key] = (n_b, mean_b, m2_b)
            return
        n_a, mean_a, m2_a = self._totals[key]
        n = n_a + n_b
        delta = mean_b - mean_a
        self._totals[key] = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n)

    def result(self) -> dict[str, Moments]:
        """Per BatchNorm (by name), the moments recorded."""
        return {
            self.names[k]: (mean, m2 / max(n - 1, 1)) for k, (n, mean, m2) in self._totals.items()
        }

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record inputs with the BatchNorms in train mode (put back in eval mode after)."""
        handles = [bn.register_forward_pre_hook(self._record) for bn in self.bns]
        momenta = [bn.momentum for bn in self.bns]
        for bn in self.bns:
            bn.momentum = 0.0  # normalise with batch statistics, leave the running ones alone
            bn.train()
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for bn, momentum in zip(self.bns, momenta, strict=True):
                bn.momentum = momentum
                bn.eval()
