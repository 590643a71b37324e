"""ONNX export: the physically pruned model with integer weights and QDQ activations.

``export_onnx(evaluator, policy, path)`` writes the model compressed by ``policy`` as an ONNX file
that onnxruntime runs as it is:

- the graph is the physically pruned model's (``jpq_env.export.pruned``): pruned kernels and the
  input channels they fed are gone, residual adds take the union of their operands' channels;
- every quantized kernel's weights are stored as **integer levels** in an integer initializer
  feeding a per-channel ``DequantizeLinear`` (axis 0, zero point 0, one float scale per kept
  kernel). The container is ``INT4`` when the layer's widest kernel has at most 4 bits, ``INT8`` up
  to 8 bits and ``INT16`` up to 16; the levels use only the narrowed symmetric range of each
  kernel's width (``[-(2**(b-1) - 1), 2**(b-1) - 1]``, binary kernels ``{-1, 0, 1}``). Kernels at
  32 bits stay float rows (concatenated with the dequantized ones, then put back in order);
- every layer's input is quantized at its activation width with ``QuantizeLinear`` /
  ``DequantizeLinear`` (``UINT8``/``INT8`` up to 8 bits, ``UINT16``/``INT16`` up to 16) over its
  calibrated range, preceded by a ``Clip`` to the width's range where it is narrower than the
  container's (every signed width, unsigned widths below 8 or 16 bits). A signed 1-bit input
  (``sign(x) * span / 2``) is exported as the ``Where`` it is;
- the batch dimension is dynamic (input ``input``, output ``logits``).

Opset 21 (the first with ``INT4`` and ``INT16`` quantization; the TorchScript exporter of
``torch.onnx.export(..., dynamo=False)`` writes opset 20, which ``onnx.version_converter`` lifts to
21). Tested with onnx 1.23.2 and onnxruntime 1.32.0: the optional extra ``pip install
jpq-env[onnx]``; this module imports them only when called.

The dequantized weights are bitwise the compressed model's (the same ``levels * scale`` in
float32) and the activation quantizers round as ``quantize_activation`` does (half to even), but
onnxruntime adds up convolutions in another order than torch (more so with its default graph
optimizations: the NCHWc convolution layout). An activation that sits on a rounding boundary may
then take the neighbouring level, so a few logits move by about one activation step; top-1 on the
digits test split stays ``jpq evaluate``'s within one image for the tested policy
(``tests/test_onnx_export.py``). A policy near chance, whose logits lie close together, moves
more: the best of a 10-evaluation random search scored 49.44% in onnxruntime against 48.33%.
onnxruntime runs this QDQ graph in float (no ``QLinearConv``: BatchNorm sits between each conv
and the next ``QuantizeLinear``), so it is small, not faster than an FP32 export.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import Policy
from jpq_env.core.quant import FULL_PRECISION, WeightQuantizer
from jpq_env.errors import ArgumentError, OnnxFormatError
from jpq_env.export.pruned import ActQuant, SplitGroups, pruned_module
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
        order = np.argsort(np.concatenate([quantized, full]), kind="stable")
        self.reorder = not np.array_equal(order, np.arange(len(bits)))
        self.register_buffer("order", torch.as_tensor(order, dtype=torch.long))

    def payload_bytes(self) -> int:
        """Bytes of the integer levels in the ONNX file (INT4 packs two levels a byte)."""
        levels = cast(torch.Tensor, self.levels)
        return (levels.numel() * self.width + 7) // 8 if self.width else 0

    def forward(self) -> torch.Tensor:
        full = cast(torch.Tensor, self.full)
        if self.width == 0:
            return full
        weight = _Dequantize.apply(self.levels, self.scale)
        if full.shape[0]:
            weight = torch.cat([weight, full])
        if self.reorder:
            weight = weight.index_select(0, cast(torch.Tensor, self.order))
        return cast(torch.Tensor, weight)


class _QuantizedConv(nn.Module):
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


class _QuantizedLinear(nn.Module):
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
        """Whether the width's range is narrower than the container's."""
        if self.signed:
            return True  # symmetric: the container's most negative level is never used
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
    """Fake quantization on ``grid``; in ONNX (Clip,) QuantizeLinear, DequantizeLinear."""

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

        if grid.clip:
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
    return gm.eval()


def _to_opset21(model: Any, int4: set[str]) -> Any:
    """Lift the TorchScript exporter's opset-20 model to 21 and store ``int4`` levels as INT4."""
    from onnx import TensorProto, helper, numpy_helper, version_converter

    model = version_converter.convert_version(model, ONNX_OPSET)
    for init in model.graph.initializer:
        if init.name in int4:
            values = numpy_helper.to_array(init)
            nibbles = (values.reshape(-1).astype(np.int8) & 0x0F).astype(np.uint8)
            if len(nibbles) % 2:
                nibbles = np.append(nibbles, np.uint8(0))
            packed = nibbles[0::2] | (nibbles[1::2] << 4)  # two levels a byte, the first low
            tensor = helper.make_tensor(
                init.name, TensorProto.INT4, values.shape, packed.tobytes(), raw=True
            )
            init.CopyFrom(tensor)
    missing = int4 - {init.name for init in model.graph.initializer}
    if missing:
        raise RuntimeError(f"internal error: the exported graph has no initializers {missing}")
    return model


def write_onnx(
    module: fx.GraphModule, example_input: torch.Tensor, path: str | os.PathLike[str]
) -> int:
    """Export ``qdq_module``'s model to ``path`` (atomically, opset 21); return the file size."""
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
    int4 = {
        f"{name}.levels"
        for name, m in module.named_modules()
        if isinstance(m, _QuantizedWeight) and m.width == 4
    }
    model = _to_opset21(model, int4)
    model.producer_name = "jpq-env"
    del model.graph.value_info[:]  # intermediate shapes: a cache onnxruntime infers again
    onnx.checker.check_model(model, full_check=True)
    with atomic_file(path, "wb") as f:
        f.write(model.SerializeToString())
    return os.path.getsize(path)


def export_onnx(
    evaluator: LocalEvaluator, policy: Policy, path: str | os.PathLike[str]
) -> dict[str, Any]:
    """Write the model compressed by ``policy`` on ``evaluator``'s task to ``path`` as ONNX.

    Returns:
        ``{"format", "opset", "file_bytes", "weight_bytes"}`` (weight bytes: the integer
        initializers' payload; scales, float rows, biases and BatchNorm come on top).
    """
    module = qdq_module(
        pruned_module(evaluator, policy),
        evaluator.graph,
        policy,
        evaluator.compressed.quantizers,
    )
    size = write_onnx(module, evaluator.task.example_input, path)
    weights = [m for m in module.modules() if isinstance(m, _QuantizedWeight)]
    payload = sum(m.payload_bytes() for m in weights)
    return {
        "format": f"onnx (opset {ONNX_OPSET})",
        "opset": ONNX_OPSET,
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
