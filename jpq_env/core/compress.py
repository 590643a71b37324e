"""The compressed view: a policy applied to a private working copy of the model.

``CompressedModel`` deep-copies the user's model once and keeps the original tensors aside; every
``apply`` rewrites the working copy's weights from those originals (quantized, pruned kernels set to
zero), so applying thousands of policies never drifts and the user's own model is never written.
Pruned kernels also get a zero bias and zero BatchNorm scale and shift downstream, so a masked
channel is exactly zero everywhere, as if it had been physically removed.

Input activations of each compressible layer are fake-quantized by a forward pre-hook at the
policy's activation bits, over ranges calibrated once (``calibrate_ranges``).

Which kernels a policy prunes is decided before it gets here, by the importance ranking of
``jpq_env.core.importance``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import Policy
from jpq_env.core.quant import FULL_PRECISION, ActRange, WeightQuantizer, quantize_activation
from jpq_env.errors import ArgumentError

__all__ = ["CompressedModel", "calibrate_ranges"]


def _layer_inputs(model: nn.Module, graph: LayerGraph) -> list[nn.Conv2d | nn.Linear]:
    return [cast(nn.Conv2d | nn.Linear, model.get_submodule(name)) for name in graph.names]


@torch.no_grad()
def calibrate_ranges(
    model: nn.Module,
    graph: LayerGraph,
    batches: Iterable[torch.Tensor],
    method: str = "max",
    percentile: float = 99.99,
) -> list[ActRange]:
    """Measure each compressible layer's input range on calibration batches (FP32 model).

    Args:
        model: The FP32 model (run in eval mode on a private copy; left untouched).
        graph: Its layer graph.
        batches: Input tensors.
        method: ``"max"`` (observed min and max) or ``"percentile"`` (clip the tails).
        percentile: Upper percentile for ``"percentile"`` (the lower one is symmetric).

    Returns:
        One ``ActRange`` per layer, in graph order.
    """
    if method not in ("max", "percentile"):
        raise ArgumentError(
            f"unknown activation range method '{method}': use 'max' or 'percentile'"
        )
    private = copy.deepcopy(model).eval()
    seen: list[list[torch.Tensor]] = [[] for _ in graph.layers]

    def recorder(i: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().flatten()
            if method == "max":
                seen[i].append(torch.stack([x.min(), x.max()]))
            else:
                # A fixed-stride subsample keeps the quantile cheap and deterministic.
                seen[i].append(x[:: max(1, x.numel() // 100_000)].cpu())

        return hook

    handles = [
        m.register_forward_pre_hook(recorder(i))
        for i, m in enumerate(_layer_inputs(private, graph))
    ]
    try:
        for x in batches:
            private(x)
    finally:
        for h in handles:
            h.remove()
    ranges = []
    for i, values in enumerate(seen):
        if not values:
            raise ArgumentError(f"layer '{graph.names[i]}' saw no input during calibration")
        if method == "max":
            stacked = torch.stack(values)
            ranges.append(ActRange(float(stacked[:, 0].min()), float(stacked[:, 1].max())))
        else:
            v = torch.cat(values).float()
            q = torch.quantile(v, torch.tensor([1 - percentile / 100, percentile / 100]))
            ranges.append(ActRange(min(float(q[0]), 0.0), float(q[1])))
    return ranges


def _tensor(module: nn.Module, key: str) -> torch.Tensor:
    """The live tensor behind a ``state_dict`` key (dotted keys for nested or parametrized)."""
    owner, _, name = key.rpartition(".")
    value = getattr(module.get_submodule(owner) if owner else module, name)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"'{key}' is not a tensor")
    return value


class _ActivationQuantizer:
    """Forward pre-hook quantizing a layer's input at its current width (picklable, no closure)."""

    def __init__(self, owner: CompressedModel, index: int) -> None:
        self.owner = owner
        self.index = index

    def __call__(self, _: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        bits = self.owner._act_bits[self.index]
        ranges = self.owner.act_ranges
        if bits >= FULL_PRECISION or ranges is None:
            return None
        return (quantize_activation(args[0], bits, ranges[self.index]), *args[1:])


class CompressedModel:
    """A working copy of a model on which policies are applied and undone exactly.

    Args:
        model: The user's FP32 model. It is deep-copied; its own tensors are never written.
        graph: The model's layer graph.
        act_ranges: Calibrated input ranges per layer; required to quantize activations below 32
            bits.
        weight_method: ``"max"`` or ``"mse"`` weight scales (see ``quantize_weight``).
        device: Where the working copy lives (default: where the model's parameters are).

    Attributes:
        module: The working copy; run it after ``apply`` to evaluate the compressed network.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: LayerGraph,
        act_ranges: list[ActRange] | None = None,
        weight_method: str = "max",
        device: str | torch.device | None = None,
    ) -> None:
        self.graph = graph
        self.weight_method = weight_method
        self.act_ranges = act_ranges
        self.module = copy.deepcopy(model).eval()
        if device is not None:
            self.module.to(device)
        self.layers = _layer_inputs(self.module, graph)
        # Originals of everything apply() writes: compressible layers and every BatchNorm.
        self._bns = {
            name: cast(_BatchNorm, self.module.get_submodule(name)) for name in graph.bn_sources
        }
        # Originals of everything apply() writes besides the weights: biases and BatchNorm
        # tensors, as (live tensor, copy) pairs. The weights' originals live in the quantizers.
        self.quantizers = [
            WeightQuantizer(m.weight.detach().clone(), weight_method) for m in self.layers
        ]
        # Held as (module, attribute name) rather than tensor aliases, which a pickle round trip
        # would detach from the module.
        self._originals = [
            (m, key, value.detach().clone())
            for m in [*self.layers, *self._bns.values()]
            for key, value in m.state_dict().items()
            if not (key == "weight" and isinstance(m, (nn.Conv2d, nn.Linear)))
        ]
        self._act_bits = [FULL_PRECISION] * len(graph.layers)
        self._hooks = [
            m.register_forward_pre_hook(_ActivationQuantizer(self, i))
            for i, m in enumerate(self.layers)
        ]

    def _restore_others(self) -> None:
        for module, key, original in self._originals:
            _tensor(module, key).copy_(original)

    @torch.no_grad()
    def restore(self) -> None:
        """Put the working copy back to the exact FP32 tensors (bitwise)."""
        self._restore_others()
        for module, quantizer in zip(self.layers, self.quantizers, strict=True):
            module.weight.copy_(quantizer.weight)
        self._act_bits = [FULL_PRECISION] * len(self.graph.layers)

    @torch.no_grad()
    def apply(self, policy: Policy, allowed_bits: Iterable[int] | None = None) -> None:
        """Write ``policy`` into the working copy (replacing whatever was applied before).

        Raises:
            PolicyError: If the policy does not fit this model or uses bits outside
                ``allowed_bits``.
            ValueError: If activations below 32 bits are requested without calibrated ranges.
        """
        policy.validate(self.graph, None if allowed_bits is None else list(allowed_bits))
        act_bits = [int(lp.act_bits) for lp in policy.layers]
        if self.act_ranges is None and min(act_bits) < FULL_PRECISION:
            raise ArgumentError(
                "activation bits below 32 need calibrated ranges: pass act_ranges (see "
                "calibrate_ranges)"
            )
        self._restore_others()
        live = self.graph.liveness(policy.kept())
        layers = zip(self.graph.layers, policy.layers, self.layers, self.quantizers, strict=True)
        for info, lp, module, quantizer in layers:
            alive = torch.tensor(live.alive_out[info.index])
            bits = torch.from_numpy(np.where(live.alive_out[info.index], lp.bits, 0))
            quantizer(bits, out=module.weight)
            if module.bias is not None:
                module.bias.mul_(alive.to(module.bias.device, module.bias.dtype))
        for name, bn in self._bns.items():
            mask = torch.tensor(live.bn_alive[name])
            # A dead channel enters as zero; a zero mean and zero scale/shift keep it zero.
            for t in (bn.running_mean, bn.weight, bn.bias):
                if t is not None:
                    t.mul_(mask.to(t.device, t.dtype))
        self._act_bits = act_bits

    def set_activation_bits(self, bits: list[int]) -> None:
        """Quantize each layer's input at ``bits[i]`` (32 = off) without touching the weights."""
        if len(bits) != len(self.graph.layers):
            raise ArgumentError(
                f"expected {len(self.graph.layers)} activation widths, got {len(bits)}"
            )
        if self.act_ranges is None and min(bits) < FULL_PRECISION:
            raise ArgumentError("activation bits below 32 need calibrated ranges (act_ranges)")
        self._act_bits = [int(b) for b in bits]

    def close(self) -> None:
        """Remove the activation hooks from the working copy."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
