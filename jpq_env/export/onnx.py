"""ONNX export: the physically pruned model on integer kernels, run by onnxruntime.

``export_onnx(evaluator, policy, path)`` writes the model compressed by ``policy`` as an ONNX file
(opset 21, dynamic batch: input ``input``, output ``logits``) that onnxruntime runs as it is. The
graph is the physically pruned model's (``jpq_env.export.pruned``): pruned kernels and the input
channels they fed are gone, residual adds take the union of their operands' channels. Two kinds:

**For integer kernels** (``integer=True``, the default; ``jpq export --format onnx``):

- BatchNorm is folded into the weights (``fold_batchnorm``): each kernel's scale takes BatchNorm's
  ``|gamma / sqrt(var + eps)|`` and its levels the sign, the bias takes the rest, so the integer
  levels are the policy's and each convolution's output goes straight to its (ReLU and) quantizer;
- the weights are INT8 initializers feeding a per-channel ``DequantizeLinear`` (axis 0): levels
  of widths up to 8 computed as int8, widened to the int8 range (``_widening``: ``levels * k``
  on the scale ``/ k``, the same weights) because onnxruntime rounds a convolution's bias to the
  unit ``input scale * weight scale``, coarse for narrow kernels;
- every layer's input keeps the compressed model's quantizer (``QuantizeLinear``, a ``Clip`` on
  the integer levels where the width is narrower than the container, ``DequantizeLinear``), and
  an 8-bit quantizer is added where a layer's output would leave the integer domain
  (``quantize_outputs``: before a residual add and on the residual stream, over the largest
  magnitude on the calibration split, or the next layer's own 8-bit grid, which then also clips
  the residual stream at that layer's calibrated range; never on the model's output), so
  onnxruntime fuses
  ``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv`` and the residual adds into
  ``QLinearAdd`` (checked on its optimized graph in ``tests/export/test_onnx_integer.py``).

What does not run on integer kernels: a layer whose input is signed and output unsigned (the
stem, on an image input), 16-bit widths, layers mixing 32-bit kernels, and the final linear layer
(``Gemm`` in float); channel moves of pruned residual streams (``Pad``/``Gather``). Widths below
8 bits run as int8: BOPs below 8 bits are a hardware-agnostic target (bit-serial or custom
accelerators), not a CPU speed-up. The added quantizers and the int32 bias are roundings the
compressed model does not have: test top-1 moves by a few tenths of a point against ``jpq
evaluate`` (``benchmarks/results/export.md``).

**Exact** (``integer=False``, ``jpq export --exact``): the compressed model's own quantizers only,
BatchNorm kept, levels as INT4 (two a byte, widths up to 4), INT8 or INT16 initializers, 32-bit
kernels as float rows. The dequantized weights are bitwise the compressed model's and the
activation quantizers round as ``quantize_activation`` does (half to even); onnxruntime adds up in
another order than torch, so an activation on a rounding boundary may take the neighbouring level
(a few logits move by about a step; top-1 on the digits test split stays ``jpq evaluate``'s within
one image, ``tests/export/test_onnx.py``). onnxruntime runs this graph mostly in float: small,
not fast. Run it with ``load_onnx(path, optimize=False)`` for ``jpq evaluate``'s numbers.

The TorchScript exporter of ``torch.onnx.export(..., dynamo=False)`` writes opset 20, which
``onnx.version_converter`` lifts to 21 (the first with ``INT4`` and ``INT16`` quantization).
Tested with onnx 1.23.2 and onnxruntime 1.32.0: the optional extra ``pip install
jpq-env[onnx]``; this module imports them only when called.
"""

from __future__ import annotations

import copy
import io
import operator
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import Policy
from jpq_env.core.quant import FULL_PRECISION, WeightQuantizer
from jpq_env.errors import ArgumentError, OnnxFormatError
from jpq_env.export.pruned import (
    ActQuant,
    ChannelGather,
    ChannelScatter,
    SplitGroups,
    pruned_module,
)
from jpq_env.proxy.evaluator import LocalEvaluator, iter_batches

__all__ = [
    "ONNX_OPSET",
    "OnnxFormatError",
    "OnnxModel",
    "export_onnx",
    "load_onnx",
    "qdq_module",
    "write_onnx",
]

ONNX_OPSET = 21
_TORCHSCRIPT_OPSET = 20  # the most the TorchScript exporter writes
_INPUT, _OUTPUT = "input", "logits"


def _require() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "ONNX export needs onnx and onnxruntime: pip install 'jpq-env[onnx]'"
        ) from exc
    return onnx, onnxruntime


# ---- weights ----------------------------------------------------------------------------------
class _Dequantize(torch.autograd.Function):
    """``levels * scale`` per output channel; in ONNX a ``DequantizeLinear`` (axis 0)."""

    @staticmethod
    def forward(ctx: Any, levels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return levels.float() * scale.reshape(-1, *([1] * (levels.dim() - 1)))

    @staticmethod
    def symbolic(g: Any, levels: Any, scale: Any) -> Any:
        return g.op("DequantizeLinear", levels, scale, axis_i=0)


class _QuantizedWeight(nn.Module):
    """A layer's kept kernels: integer levels and scales, float rows for 32-bit kernels.

    Attributes:
        width: The container's bits (4, 8 or 16; 0 when every kernel is full precision).
    """

    def __init__(self, weight: torch.Tensor, bits: np.ndarray, scales: torch.Tensor) -> None:
        super().__init__()
        quantized = np.flatnonzero(bits < FULL_PRECISION)
        full = np.flatnonzero(bits >= FULL_PRECISION)
        widest = int(bits[quantized].max()) if len(quantized) else 0
        self.width = 0 if widest == 0 else 4 if widest <= 4 else 8 if widest <= 8 else 16
        dtype = torch.int16 if self.width == 16 else torch.int8
        w = weight.detach().float()[torch.from_numpy(quantized)]
        scale = scales.detach().float()[torch.from_numpy(quantized)]
        view = (-1,) + (1,) * (w.dim() - 1)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale)).reshape(view)
        levels = torch.where(scale.reshape(view) > 0, torch.round(w / safe), torch.zeros_like(w))
        if not torch.equal(levels * scale.reshape(view), w):
            raise RuntimeError("internal error: the kept weights are not integer levels * scale")
        self.register_buffer("levels", levels.to(dtype).contiguous())
        self.register_buffer("scale", scale.contiguous())
        self.register_buffer("full", weight.detach().float()[torch.from_numpy(full)].contiguous())
        self.rows = (quantized, full)
        order = np.argsort(np.concatenate([quantized, full]), kind="stable")
        self.reorder = not np.array_equal(order, np.arange(len(bits)))
        self.register_buffer("order", torch.as_tensor(order, dtype=torch.long))

    @property
    def integer(self) -> bool:
        """Whether onnxruntime can run this weight in an integer kernel (INT4/INT8 levels only)."""
        return self.width in (4, 8) and not len(self.rows[1])

    @torch.no_grad()
    def fold(self, gain: torch.Tensor) -> None:
        """Multiply every kernel by its ``gain`` (BatchNorm's scale): the levels stay the levels.

        A kernel's scale takes ``|gain|`` and its levels the sign (the symmetric range holds
        ``-level``), so the integer levels are still the policy's; float rows are multiplied.
        A kernel whose folded scale is zero or negligible (``|gain| * scale`` below ``1e-6`` of
        the layer's largest) contributes nothing worth a level: its levels become 0 on its
        unfolded scale, because onnxruntime divides the bias by the scale (a zero or tiny scale
        overflows its int32 bias).
        """
        quantized, full = (torch.from_numpy(rows) for rows in self.rows)
        g = gain.detach().float()
        levels, scale, rows = (self.get_buffer(n) for n in ("levels", "scale", "full"))
        view = (-1,) + (1,) * (levels.dim() - 1)
        negative = (g[quantized] < 0).reshape(view)
        folded = scale * g[quantized].abs()
        negligible = folded <= 1e-6 * folded.max() if len(folded) else folded > 0
        levels = torch.where(negative, -levels, levels)
        levels = torch.where(negligible.reshape(view), torch.zeros_like(levels), levels)
        self.register_buffer("levels", levels.contiguous())
        self.register_buffer("scale", torch.where(negligible, scale, folded).contiguous())
        self.register_buffer("full", (rows * g[full].reshape(view)).contiguous())

    def payload_bytes(self, integer: bool = False) -> int:
        """Bytes of the integer levels in the ONNX file.

        INT4 packs two levels a byte, except in the export for integer kernels (INT8).
        """
        levels = self.get_buffer("levels")
        width = 8 if integer and self.width == 4 else self.width
        return (levels.numel() * width + 7) // 8 if width else 0

    def forward(self) -> torch.Tensor:
        full = self.get_buffer("full")
        if self.width == 0:
            return full
        weight = _Dequantize.apply(self.levels, self.scale)
        if full.shape[0]:
            weight = torch.cat([weight, full])
        if self.reorder:
            weight = weight.index_select(0, cast(torch.Tensor, self.order))
        return cast(torch.Tensor, weight)


class _QuantizedLayer(nn.Module):
    """A conv or linear layer on ``_QuantizedWeight``; BatchNorm after it can fold into it."""

    weight: _QuantizedWeight
    bias: nn.Parameter | None

    @torch.no_grad()
    def fold(self, bn: _BatchNorm) -> None:
        """Fold the eval-mode ``bn`` that reads this layer's output into its weights and bias.

        ``bn(y) = g * (y - mean) + beta`` with ``g = gamma / sqrt(var + eps)`` per channel:
        the kernels are multiplied by ``g`` (``_QuantizedWeight.fold``) and the bias becomes
        ``g * (bias - mean) + beta`` (computed in float64).
        """
        mean = cast(torch.Tensor, bn.running_mean).double()
        var = cast(torch.Tensor, bn.running_var).double()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
        gain = gamma / torch.sqrt(var + bn.eps)
        bias = self.bias.double() if self.bias is not None else torch.zeros_like(mean)
        self.weight.fold(gain.float())
        self.bias = nn.Parameter((gain * (bias - mean) + beta).float())


class _QuantizedConv(_QuantizedLayer):
    def __init__(self, conv: nn.Conv2d, bits: np.ndarray, scales: torch.Tensor) -> None:
        super().__init__()
        self.weight = _QuantizedWeight(conv.weight, bits, scales)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        if conv.padding_mode != "zeros":
            raise ArgumentError(
                f"ONNX export supports zero padding only, not {conv.padding_mode!r}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x,
            self.weight(),
            self.bias,
            self.stride,
            cast(Any, self.padding),
            self.dilation,
            self.groups,
        )


class _QuantizedLinear(_QuantizedLayer):
    def __init__(self, linear: nn.Linear, bits: np.ndarray, scales: torch.Tensor) -> None:
        super().__init__()
        self.weight = _QuantizedWeight(linear.weight, bits, scales)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


def _quantized(layer: nn.Module, bits: np.ndarray, scales: torch.Tensor) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        return _QuantizedConv(layer, bits, scales)
    if isinstance(layer, nn.Linear):
        return _QuantizedLinear(layer, bits, scales)
    raise RuntimeError(f"internal error: a pruned layer of type {type(layer).__name__}")


# ---- activations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ActGrid:
    """An activation quantizer's grid: scale, integer range, ONNX container."""

    scale: float
    lo: int
    hi: int
    signed: bool
    container: int  # 8 or 16

    @property
    def clip(self) -> bool:
        """Whether the levels' range is narrower than the container's."""
        if self.signed:
            return self.lo != -(2 ** (self.container - 1))  # symmetric: no -2**(n-1) level
        return self.hi != 2**self.container - 1  # unsigned: 2**bits - 1 levels


def _grid(module: ActQuant) -> _ActGrid | None:
    """The QDQ grid of ``module``, or None where it is not a uniform grid (kept as it is)."""
    bits, lo, hi = module.bits, module.lo, module.hi
    signed = lo < 0.0
    if signed and bits == 1:
        return None  # binary sign(x) * span / 2: no zero level
    span = max(abs(lo), abs(hi)) if signed else hi
    if span <= 0.0:
        return None  # the quantizer outputs zeros
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return _ActGrid(span / qmax, -qmax if signed else 0, qmax, signed, 8 if bits <= 8 else 16)


_ONNX_INT = {(8, False): torch.uint8, (8, True): torch.int8, (16, True): torch.int16}


class _QDQ(torch.autograd.Function):
    """Fake quantization on ``grid``; in ONNX QuantizeLinear, (Clip,) DequantizeLinear.

    An 8-bit grid narrower than its container is clipped on the integer levels, between the
    QuantizeLinear and the DequantizeLinear (the same numbers as clipping before), so that
    onnxruntime still sees ``DequantizeLinear -> Conv -> QuantizeLinear`` around each layer and
    fuses it into an integer convolution; a 16-bit grid is clipped before (no integer kernels).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, grid: _ActGrid) -> torch.Tensor:
        q = torch.div(x, grid.scale)
        q.round_()
        q.clamp_(grid.lo, grid.hi)
        return q.mul_(grid.scale)

    @staticmethod
    def symbolic(g: Any, x: Any, grid: _ActGrid) -> Any:
        def const(value: float | int, dtype: torch.dtype) -> Any:
            return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

        if grid.clip and grid.container == 16:
            lo, hi = grid.lo * grid.scale, grid.hi * grid.scale
            x = g.op("Clip", x, const(lo, torch.float32), const(hi, torch.float32))
        scale = const(grid.scale, torch.float32)
        if grid.container == 16 and not grid.signed:
            # unsigned 16-bit levels in an INT16 container: zero point -32768 (the exporter writes
            # no UINT16 constant); the levels and the dequantized values are the same
            zero = const(-(2**15), torch.int16)
        else:
            zero = const(0, _ONNX_INT[(grid.container, grid.signed)])
        q = g.op("QuantizeLinear", x, scale, zero)
        if grid.clip and grid.container == 8:
            dtype = _ONNX_INT[(8, grid.signed)]
            q = g.op("Clip", q, const(grid.lo, dtype), const(grid.hi, dtype))
        return g.op("DequantizeLinear", q, scale, zero)


class _QDQActivation(nn.Module):
    def __init__(self, grid: _ActGrid) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, _QDQ.apply(x, self.grid))


# ---- the model --------------------------------------------------------------------------------
def qdq_module(
    pruned: fx.GraphModule,
    graph: LayerGraph,
    policy: Policy,
    quantizers: list[WeightQuantizer],
    fold: bool = False,
) -> fx.GraphModule:
    """The physically pruned model with integer weights and QDQ activation quantizers.

    Computes the same logits as ``pruned`` (its weights bitwise, its activations up to float
    rounding at quantization boundaries) with modules that export to ONNX as ``DequantizeLinear``
    on integer initializers and ``QuantizeLinear``/``DequantizeLinear`` pairs.

    Args:
        pruned: ``prune_physically``'s (or ``pruned_module``'s) model of ``policy``; not modified.
        graph: The model's layer graph.
        policy: The policy.
        quantizers: The compressed model's weight quantizers (``CompressedModel.quantizers``),
            which give each kernel's scale.
        fold: Fold BatchNorm into the weights (``fold_batchnorm``): the integer-kernel graph.
    """
    gm = copy.deepcopy(pruned)
    live = graph.liveness(policy.kept())
    for info, lp, quantizer in zip(graph.layers, policy.layers, quantizers, strict=True):
        bits = np.where(live.alive_out[info.index], lp.bits, 0)
        _, scales = quantizer.codes(torch.from_numpy(bits))
        alive = np.flatnonzero(live.alive_out[info.index])
        if not len(alive):
            continue  # _NoChannels: nothing to store
        kept_bits, kept_scales = bits[alive], scales[torch.tensor(alive)]
        layer = gm.get_submodule(info.name)
        if isinstance(layer, SplitGroups):
            start = 0
            for k, conv in enumerate(layer.convs):
                n = cast(nn.Conv2d, conv).out_channels
                end = start + n
                layer.convs[k] = _quantized(conv, kept_bits[start:end], kept_scales[start:end])
                start = end
        else:
            gm.add_submodule(info.name, _quantized(layer, kept_bits, kept_scales))
    for name, module in list(gm.named_modules()):
        if isinstance(module, ActQuant):
            grid = _grid(module)
            if grid is not None:
                gm.add_submodule(name, _QDQActivation(grid))
    if fold:
        fold_batchnorm(gm)
    return gm.eval()


def _single_caller(gm: fx.GraphModule, node: fx.Node) -> bool:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target) == 1


def _module(gm: fx.GraphModule, node: Any) -> nn.Module | None:
    if not isinstance(node, fx.Node) or node.op != "call_module":
        return None
    return gm.get_submodule(cast(str, node.target))


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold each eval-mode BatchNorm that alone reads a quantized layer's output into the layer.

    After folding, a convolution's output goes straight to its ReLU and the next layer's
    quantizer, the pattern onnxruntime fuses into an integer kernel, and the exported file keeps
    no BatchNorm tensors. The integer levels are unchanged (``_QuantizedLayer.fold``); the logits
    move by float rounding only. Returns the number of BatchNorms folded.
    """
    folded = 0
    for node in list(gm.graph.nodes):
        layer = _module(gm, node)
        if not isinstance(layer, _QuantizedLayer) or len(node.users) != 1:
            continue
        (user,) = node.users
        bn = _module(gm, user)
        if (
            not isinstance(bn, _BatchNorm)
            or user.args != (node,)
            or user.kwargs
            or bn.training
            or bn.running_mean is None
            or bn.num_features != layer.weight.rows[0].size + layer.weight.rows[1].size
            or not _single_caller(gm, node)
        ):
            continue
        layer.fold(bn)
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded


_RELU = (F.relu, torch.relu)


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _RELU
    return isinstance(_module(gm, node), nn.ReLU)


def _integer_grid(gm: fx.GraphModule, node: Any) -> _ActGrid | None:
    """The 8-bit grid of the ``_QDQActivation`` node ``node``, else None."""
    module = _module(gm, node)
    if isinstance(module, _QDQActivation) and module.grid.container == 8:
        return module.grid
    return None


def _float_output(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """Where an integer layer's output leaves the integer domain (None: it never does).

    A layer runs on onnxruntime's integer kernels when its input is an 8-bit QDQ and its output
    goes, through at most a ReLU, to one 8-bit QuantizeLinear only. Returns the node whose float
    value other consumers read (the layer, or its ReLU), or None when the layer is already fused
    or cannot be (float rows, 16-bit levels, a float input).
    """
    layer = _module(gm, node)
    if not isinstance(layer, _QuantizedLayer) or not layer.weight.integer:
        return None
    if not node.args or _integer_grid(gm, node.args[0]) is None:
        return None
    return _exit(gm, node)


def _is_add(node: fx.Node) -> bool:
    return (
        node.op == "call_function"
        and node.target in (operator.add, torch.add)
        and len(node.args) == 2
        and all(isinstance(a, fx.Node) for a in node.args)
        and not node.kwargs
    )


def _integer_root(gm: fx.GraphModule, node: Any) -> fx.Node | None:
    """The 8-bit QDQ (or observer that becomes one) that ``node`` moves channels of, or None."""
    while isinstance(node, fx.Node):
        if isinstance(_module(gm, node), _Observer) or _integer_grid(gm, node) is not None:
            return node
        if not (_moves_channels(gm, node) and node.args):
            return None
        node = node.args[0]
    return None


def _moves_channels(gm: fx.GraphModule, node: fx.Node) -> bool:
    """An op that only moves, drops or zero-pads values (so it keeps levels as levels)."""
    if isinstance(_module(gm, node), (ChannelScatter, ChannelGather, nn.Identity)):
        return True
    return node.op == "call_function" and node.target in (operator.getitem, F.pad)


def _exit(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """Where ``node``'s (ReLU'd) output leaves the integer domain (None: one 8-bit QDQ reads it)."""
    tail = node
    if len(node.users) == 1 and _is_relu(gm, next(iter(node.users))):
        tail = next(iter(node.users))
    users = list(tail.users)
    if len(users) == 1 and _integer_grid(gm, users[0]) is not None:
        return None
    if any(user.op == "output" for user in users):
        return None  # the model's output stays float: no rounding of the logits
    return tail


class _Observer(nn.Module):
    """Records the largest magnitude of what passes (calibration of an output quantizer)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel():
            self.peak = max(self.peak, float(x.detach().abs().max()))
        return x


@torch.no_grad()
def quantize_outputs(gm: fx.GraphModule, batches: Iterable[torch.Tensor]) -> int:
    """Put an 8-bit quantizer on each integer layer's output that leaves the integer domain.

    A convolution whose output feeds a residual add (or a ReLU that feeds both a layer and a
    residual add) would otherwise run in float in onnxruntime. Its output is quantized to 8 bits
    over the largest magnitude seen on ``batches`` (signed symmetric, or after a ReLU unsigned;
    where one of the consumers is an 8-bit quantizer that fills its container, that quantizer's
    own grid: one quantization instead of two, which also clips the other consumers, the
    residual stream, at that layer's calibrated range), so onnxruntime runs the layer as an
    integer convolution. The model's output is never quantized. This adds roundings (and that
    clipping) the compressed model does not have: the export's accuracy is measured against
    ``jpq evaluate``'s (``benchmarks/export.py``). Returns the number of quantizers added.
    """
    observers: list[tuple[str, fx.Node, fx.Node]] = []
    adds = []

    def observe(tap: fx.Node) -> None:
        name = f"_jpq_out{len(observers)}"
        gm.add_submodule(name, _Observer())
        with gm.graph.inserting_after(tap):
            obs = gm.graph.call_module(name, (tap,))
        tap.replace_all_uses_with(obs, delete_user_cb=lambda user: user is not obs)
        observers.append((name, obs, tap))

    for node in list(gm.graph.nodes):
        if not _is_add(node):
            tap = _float_output(gm, node)
            if tap is not None:
                observe(tap)
            continue
        roots = [_integer_root(gm, a) for a in node.args]
        if all(root is None for root in roots):
            continue  # a float add of float operands
        for arg, root in zip(node.args, roots, strict=True):
            if root is None:
                observe(cast(fx.Node, arg))  # the other operand: quantized too
        adds.append(node)
        tap = _exit(gm, node)
        if tap is not None:
            observe(tap)
    gm.recompile()
    for x in batches:
        gm(x)
    added = 0
    for name, obs, tap in observers:
        peak = cast(_Observer, gm.get_submodule(name)).peak
        unsigned = _is_relu(gm, tap)
        grids = [g for g in (_integer_grid(gm, u) for u in obs.users) if g is not None]
        full = [g for g in grids if not g.signed and not g.clip] if unsigned else []
        if full:
            grid = max(full, key=lambda g: g.scale)
        elif peak > 0.0:
            grid = (
                _ActGrid(peak / 255, 0, 255, False, 8)
                if unsigned
                else _ActGrid(peak / 127, -128, 127, True, 8)
            )
        else:
            obs.replace_all_uses_with(tap)
            gm.graph.erase_node(obs)
            continue
        gm.add_submodule(name, _QDQActivation(grid))
        added += 1
    _requantize_moves(gm, adds)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return added


def _requantize_moves(gm: fx.GraphModule, adds: list[fx.Node]) -> None:
    """Quantize each add operand that moved channels again, on its source's grid.

    Exact (moves keep levels, zeros are level 0): the add then reads DequantizeLinear outputs
    only, which onnxruntime runs as an integer add.
    """
    for add in adds:
        args = list(add.args)
        for i, arg in enumerate(args):
            root = _integer_root(gm, arg)
            grid = _integer_grid(gm, root)
            if root is None or root is arg or grid is None:
                continue
            name = f"_jpq_keep_{add.name}_{i}"
            gm.add_submodule(name, _QDQActivation(grid))
            with gm.graph.inserting_before(add):
                args[i] = gm.graph.call_module(name, (arg,))
        add.args = tuple(args)


def _widening(levels: np.ndarray) -> np.ndarray:
    """Per kernel, the factor ``k`` that widens its levels to int8: ``|k * levels| <= 127``.

    onnxruntime quantizes a convolution's bias to the unit ``input scale * weight scale``, which
    is coarse for narrow weights (a 2-bit kernel's scale is its largest weight); ``levels * k``
    on the scale ``/ k`` is the same weight with a ``k`` times finer unit.
    """
    peak = np.abs(levels.reshape(len(levels), -1).astype(np.int64)).max(axis=1, initial=0)
    return (127 // np.maximum(peak, 1)).astype(np.int64)


def _to_opset21(model: Any, levels: dict[str, tuple[str, int]], integer: bool) -> Any:
    """Lift the TorchScript exporter's opset-20 model to 21 and store the weight levels.

    ``levels``: per levels initializer, its scale initializer and container (4 or 8). For
    integer kernels (``integer``) every kernel's levels are widened to the int8 range
    (``_widening``, the scale divided to match) and stored as INT8, the weights onnxruntime's
    integer convolutions read; else levels in an INT4 container are stored as INT4, two a byte.
    """
    from onnx import TensorProto, helper, numpy_helper, version_converter

    model = version_converter.convert_version(model, ONNX_OPSET)
    inits = {init.name: init for init in model.graph.initializer}
    missing = {n for name, (scale, _) in levels.items() for n in (name, scale)} - set(inits)
    if missing:
        raise RuntimeError(f"internal error: the exported graph has no initializers {missing}")
    for name, (scale_name, width) in levels.items():
        values = numpy_helper.to_array(inits[name]).astype(np.int64)
        if integer:
            k = _widening(values)
            view = (-1,) + (1,) * (values.ndim - 1)
            scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32)
            widened_scale = scale / k.astype(np.float32)
            inits[scale_name].CopyFrom(numpy_helper.from_array(widened_scale, scale_name))
            widened = (values * k.reshape(view)).astype(np.int8)
            inits[name].CopyFrom(numpy_helper.from_array(widened, name))
        elif width == 4:
            nibbles = (values.reshape(-1).astype(np.int8) & 0x0F).astype(np.uint8)
            if len(nibbles) % 2:
                nibbles = np.append(nibbles, np.uint8(0))
            packed = nibbles[0::2] | (nibbles[1::2] << 4)  # two levels a byte, the first low
            tensor = helper.make_tensor(
                name, TensorProto.INT4, values.shape, packed.tobytes(), raw=True
            )
            inits[name].CopyFrom(tensor)
    return model


def write_onnx(
    module: fx.GraphModule,
    example_input: torch.Tensor,
    path: str | os.PathLike[str],
    integer: bool = False,
) -> int:
    """Export ``qdq_module``'s model to ``path`` (atomically, opset 21); return the file size.

    ``integer``: store the levels as ``_to_opset21`` does for integer kernels (INT8, widened).
    """
    onnx, _ = _require()
    from jpq_env.atomic import atomic_file

    example = example_input.detach().cpu().float().contiguous()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (example,),
            cast(Any, buffer),  # the TorchScript exporter writes to a file object too
            dynamo=False,
            opset_version=_TORCHSCRIPT_OPSET,
            input_names=[_INPUT],
            output_names=[_OUTPUT],
            dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buffer.getvalue())
    widths = {
        f"{name}.levels": (f"{name}.scale", m.width)
        for name, m in module.named_modules()
        if isinstance(m, _QuantizedWeight) and m.width in (4, 8)
    }
    model = _to_opset21(model, widths, integer)
    model.producer_name = "jpq-env"
    del model.graph.value_info[:]  # intermediate shapes: a cache onnxruntime infers again
    onnx.checker.check_model(model, full_check=True)
    with atomic_file(path, "wb") as f:
        f.write(model.SerializeToString())
    return os.path.getsize(path)


def export_onnx(
    evaluator: LocalEvaluator,
    policy: Policy,
    path: str | os.PathLike[str],
    integer: bool = True,
) -> dict[str, Any]:
    """Write the model compressed by ``policy`` on ``evaluator``'s task to ``path`` as ONNX.

    ``integer=True`` (default): a graph onnxruntime runs on its integer kernels — BatchNorm
    folded into the weights (``fold_batchnorm``), the levels widened to INT8, and 8-bit
    quantizers on the outputs that would leave the integer domain (``quantize_outputs``,
    calibrated on the task's calibration split): faster than the FP32 export, within a few
    tenths of a point of ``jpq evaluate``. ``integer=False``: the compressed model's own
    quantizers only (BatchNorm kept, INT4 levels packed two a byte), which onnxruntime runs
    mostly in float; with its graph optimizations off (``load_onnx(..., optimize=False)``) it
    reproduces ``jpq evaluate`` up to float rounding.

    Returns:
        ``{"format", "opset", "integer", "file_bytes", "weight_bytes"}`` (weight bytes: the
        integer initializers' payload; scales, float rows and biases come on top).
    """
    module = qdq_module(
        pruned_module(evaluator, policy),
        evaluator.graph,
        policy,
        evaluator.compressed.quantizers,
        fold=integer,
    )
    if integer:
        quantize_outputs(module, (x for x, _ in iter_batches(evaluator.task.calib, 256)))
    size = write_onnx(module, evaluator.task.example_input, path, integer=integer)
    weights = [m for m in module.modules() if isinstance(m, _QuantizedWeight)]
    payload = sum(m.payload_bytes(integer) for m in weights)
    return {
        "format": f"onnx (opset {ONNX_OPSET})",
        "opset": ONNX_OPSET,
        "integer": integer,
        "file_bytes": size,
        "weight_bytes": payload,
    }


class OnnxModel:
    """An exported ONNX model run by onnxruntime on the CPU, called like a module on tensors."""

    def __init__(self, session: Any, path: str | os.PathLike[str]) -> None:
        self.session = session
        self.path = path
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(session.get_outputs()) != 1:
            raise OnnxFormatError(
                f"'{path}' is not a jpq-env ONNX export: it has {len(inputs)} inputs and "
                f"{len(session.get_outputs())} outputs, not one each"
            )
        self.input = inputs[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a batch ``x`` (float32, as the model's input)."""
        feed = {self.input: x.detach().cpu().float().contiguous().numpy()}
        try:
            (out,) = self.session.run(None, feed)
        except Exception as exc:
            raise OnnxFormatError(f"'{self.path}' failed to run on this input: {exc}") from exc
        return torch.from_numpy(np.asarray(out))


def load_onnx(
    path: str | os.PathLike[str], threads: int | None = None, optimize: bool = True
) -> OnnxModel:
    """An onnxruntime session on ``path`` (CPU; ``threads``: intra-op threads, None: default).

    ``optimize=True``: onnxruntime's default graph optimizations (as a deployment runs it);
    ``optimize=False`` runs the graph as it is written (``ORT_DISABLE_ALL``), whose float sums are
    closer to torch's. Either may put an activation on a rounding boundary on the neighbouring
    level (see the module docstring).

    Raises:
        OnnxFormatError: (a ``ValueError``) If the file is missing, is not an ONNX model, or is
            one onnxruntime cannot load; the message names the file.
    """
    _, ort = _require()
    if not os.path.isfile(path):
        raise OnnxFormatError(f"no ONNX model at '{path}'")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(
            os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise OnnxFormatError(f"'{path}' is not a loadable ONNX model: {exc}") from exc
    return OnnxModel(session, path)


def onnx_top1(model: OnnxModel, dataset: Any, batch_size: int = 512) -> float:
    """Top-1 accuracy of an ONNX model on ``dataset``."""
    correct = total = 0
    for x, y in iter_batches(dataset, batch_size):
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += int(y.numel())
    return correct / total


def latency(
    path: str | os.PathLike[str],
    input_shape: tuple[int, ...],
    batch: int,
    threads: int = 1,
    seconds: float = 0.5,
) -> float:
    """Median seconds of one onnxruntime call on a batch of ``batch`` random inputs.

    Runs for at least ``seconds`` (and at least 5 calls) after 3 warm-up calls, with
    ``threads`` intra-op threads and the default graph optimizations (as deployed).
    """
    import time

    model = load_onnx(path, threads=threads)
    x = torch.randn(batch, *input_shape)
    for _ in range(3):
        model(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))
