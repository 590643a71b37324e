"""The ops the layer graph understands: one table of op categories for every walk over fx nodes.

Two passes walk a traced model's fx nodes in execution order and must agree on what each op does
to channels: the graph builder (``jpq_env.core.graph.trace``), which records where every tensor's
channels come from (the cost model's wiring), and the physical pruning
(``jpq_env.export.pruned``), which rewrites the graph so that every tensor holds only its live
channels. Both ask ``op_kind`` for a node's category (``Op``) and handle each category once, so
an op is added here, in one place: an activation with ``f(0) == 0`` added to ``MODULE_OPS``,
``FUNCTION_OPS`` or ``METHOD_OPS`` as ``Op.KEEP`` is then seen through by the cost model and kept
by the pruned export alike. An op in no table is ``Op.OPAQUE``: the channels after it count as
alive whatever was pruned before it (a safe over-count, never a wrong mask), and the pruned model
gives it its input in the full layout, so it computes what it computed in the masked model.

The categories and what each does to the channel positions of its input:

- ``LAYER``: a compressible layer (``nn.Conv2d``, ``nn.Linear``): its output channels are its own
  kernels;
- ``BATCHNORM``: keeps positions; its per-channel parameters follow the kernels that feed it
  (masked by the compressed view, sliced by the pruned model);
- ``KEEP``: keeps positions and maps a zero channel to a zero channel: activations, dropout,
  identity, pooling, ``contiguous``/``clone``/``detach`` (a per-channel ``nn.PReLU`` is sliced by
  the pruned model);
- ``ADD``: a residual add, the union of its two operands' channels when both have the output's
  shape;
- ``SCALE``: a multiplication; keeps positions when one operand is a plain number
  (``scaled_operand``) or a per-channel gate (``gated_operands``: squeeze-and-excitation's
  ``x * s`` with ``s`` of shape ``(N, C, 1, 1)``: a zero channel of ``x`` stays zero), else
  opaque;
- ``FLATTEN``: channel ``c`` of an ``(N, C, H, W)`` tensor becomes features ``c*H*W`` to
  ``(c+1)*H*W - 1`` when it flattens every dimension after the batch (``flattened_spatial``);
- ``RESHAPE``: ``view``/``reshape`` to ``(batch, -1)``: such a flatten, else opaque;
- ``MEAN``: keeps positions when it reduces spatial dimensions only (global average pooling
  written as ``x.mean((2, 3))``), else opaque;
- ``CONCAT``: ``torch.cat`` on the channel dimension concatenates positions (``concatenated``);
- ``PAD``: ``F.pad`` with zeros: channel ``c`` moves to ``c + before`` when it pads the channel
  dimension by ``(before, after)`` (``padded_channels``: ResNet's option-A shortcut), and the
  padded channels are zeros that nothing feeds (dead whatever is pruned); spatial padding keeps
  positions;
- ``KEEP`` also covers indexing that slices spatial dimensions only (``x[:, :, ::2, ::2]``,
  ``sliced_spatially``);
- ``SIZE``: reads a shape; only the channel count depends on the layout;
- ``OPAQUE``: anything else.

The same tables say which ops carry no multiply-accumulates (``may_carry_macs``): the tracer runs
torch's flop counter on the others only, and ``NO_MAC_MODULES`` lists the modules with parameters
whose zero count is exact.
"""

from __future__ import annotations

import enum
import operator
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = [
    "BATCHNORMS",
    "COMPRESSIBLE",
    "FUNCTION_OPS",
    "METHOD_OPS",
    "MODULE_OPS",
    "NO_MAC_FUNCTIONS",
    "NO_MAC_MODULES",
    "PER_CHANNEL_MODULES",
    "Op",
    "analytic_macs",
    "concatenated",
    "flattened_spatial",
    "padded_channels",
    "sliced_spatially",
    "gated_operands",
    "zero_becomes_nonzero",
    "may_carry_macs",
    "mean_keeps_channels",
    "node_shape",
    "op_kind",
    "residual_operands",
    "scaled_operand",
]


class Op(enum.Enum):
    """What an op does to the channel positions of its input (see the module docstring)."""

    LAYER = "layer"
    BATCHNORM = "batchnorm"
    KEEP = "keep"
    ADD = "add"
    SCALE = "scale"
    FLATTEN = "flatten"
    RESHAPE = "reshape"
    MEAN = "mean"
    CONCAT = "concat"
    PAD = "pad"
    SIZE = "size"
    OPAQUE = "opaque"


COMPRESSIBLE: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
"""The module types jpq-env compresses (plain, grouped and depthwise convs; linear layers)."""

BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
"""BatchNorms whose channels follow the layer that feeds them."""

MODULE_OPS: tuple[tuple[tuple[type[nn.Module], ...], Op], ...] = (
    (COMPRESSIBLE, Op.LAYER),
    (BATCHNORMS, Op.BATCHNORM),
    (
        (
            nn.ReLU,
            nn.ReLU6,
            nn.LeakyReLU,
            nn.PReLU,
            nn.ELU,
            nn.GELU,
            nn.SiLU,
            nn.Hardswish,
            nn.Hardtanh,
            nn.Tanh,
            nn.Dropout,
            nn.Dropout2d,
            nn.Identity,
            nn.MaxPool2d,
            nn.AvgPool2d,
            nn.AdaptiveAvgPool2d,
            nn.AdaptiveMaxPool2d,
        ),
        Op.KEEP,
    ),
    ((nn.Flatten,), Op.FLATTEN),
)
"""Module types by category (``isinstance``, first match); any other module is opaque."""

FUNCTION_OPS: dict[Any, Op] = {
    **dict.fromkeys(
        (
            F.relu,
            F.relu6,
            F.leaky_relu,
            F.gelu,
            F.silu,
            F.hardswish,
            F.hardtanh,
            F.dropout,
            F.max_pool2d,
            F.avg_pool2d,
            F.adaptive_avg_pool2d,
            F.adaptive_max_pool2d,
            torch.relu,
            torch.tanh,
            torch.dropout,
        ),
        Op.KEEP,
    ),
    operator.add: Op.ADD,
    operator.iadd: Op.ADD,
    torch.add: Op.ADD,
    operator.mul: Op.SCALE,
    torch.mul: Op.SCALE,
    torch.flatten: Op.FLATTEN,
    torch.cat: Op.CONCAT,
    F.pad: Op.PAD,
}
"""Functions (``call_function`` targets) by category; any other function is opaque."""

METHOD_OPS: dict[str, Op] = {
    **dict.fromkeys(("relu", "relu_", "tanh", "contiguous", "clone", "detach"), Op.KEEP),
    "add": Op.ADD,
    "add_": Op.ADD,
    "flatten": Op.FLATTEN,
    "view": Op.RESHAPE,
    "reshape": Op.RESHAPE,
    "mean": Op.MEAN,
    "size": Op.SIZE,
}
"""Tensor methods (``call_method`` targets) by category; any other method is opaque."""

NO_MAC_FUNCTIONS: frozenset[Any] = frozenset({operator.getitem, getattr})
"""Opaque functions that do no multiply-accumulates (every function in a category does none)."""

PER_CHANNEL_MODULES: tuple[type[nn.Module], ...] = (*BATCHNORMS, nn.PReLU)
"""Modules whose parameters belong to the compressible layers' channels (the compressed view masks
the BatchNorm channels of pruned kernels), so they are not uncompressed layers."""

NO_MAC_MODULES: tuple[type[nn.Module], ...] = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
    nn.PReLU,
)
"""Modules whose computation has no multiply-accumulates: a zero count from the flop counter is
exact for them. For any other module with parameters, zero means "not counted"."""


def op_kind(node: fx.Node, root: nn.Module) -> Op:
    """The category of ``node`` (``root``: the traced module that holds its submodules).

    Nodes that call nothing (placeholders, attributes, the output) are ``Op.OPAQUE``.
    """
    if node.op == "call_module":
        module = root.get_submodule(str(node.target))
        for types, kind in MODULE_OPS:
            if isinstance(module, types):
                return kind
        return Op.OPAQUE
    if node.op == "call_function":
        if node.target is operator.getitem and sliced_spatially(node):
            return Op.KEEP
        kind = FUNCTION_OPS.get(node.target, Op.OPAQUE)
        return kind if kind is not Op.PAD or padded_channels(node) is not None else Op.OPAQUE
    if node.op == "call_method":
        return METHOD_OPS.get(str(node.target), Op.OPAQUE)
    return Op.OPAQUE


def may_carry_macs(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` may do multiply-accumulates that only a flop counter can count.

    False for compressible layers (counted from their shapes), every op in a category, the opaque
    functions in ``NO_MAC_FUNCTIONS`` and nodes that call nothing.
    """
    if node.op not in ("call_module", "call_function", "call_method"):
        return False
    return op_kind(node, root) is Op.OPAQUE and node.target not in NO_MAC_FUNCTIONS


def _arg_shape(node: fx.Node, index: int, name: str) -> tuple[int, ...] | None:
    arg = node.args[index] if len(node.args) > index else node.kwargs.get(name)
    return node_shape(arg)


def analytic_macs(module: nn.Module, node: fx.Node) -> int | None:
    """MACs of a whole call (every sample of the batch) of a module the flop counter cannot see.

    Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``: gates x hidden x (input + hidden) per
    step, layer and direction, plus the projection of an LSTM with ``proj_size``), attention
    (``nn.MultiheadAttention``: the four projections and the two products ``QK^T`` and ``AV``)
    and ``nn.Bilinear`` are counted from their sizes and the traced input shapes; None for any
    other module, or where the shapes are unknown.
    """
    if isinstance(module, nn.RNNBase):
        shape = _arg_shape(node, 0, "input")
        if shape is None or len(shape) not in (2, 3):
            return None
        if len(shape) == 2:
            batch, steps = 1, shape[0]
        else:
            batch, steps = (shape[0], shape[1]) if module.batch_first else (shape[1], shape[0])
        gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
        hidden, proj = module.hidden_size, getattr(module, "proj_size", 0)
        out = proj or hidden
        dirs = 2 if module.bidirectional else 1
        per_step, width = 0, module.input_size
        for _ in range(module.num_layers):
            per_step += dirs * (gates * hidden * (width + out) + hidden * proj)
            width = out * dirs
        return batch * steps * per_step
    if isinstance(module, nn.MultiheadAttention):
        q, k = _arg_shape(node, 0, "query"), _arg_shape(node, 1, "key")
        if q is None or k is None or len(q) != len(k) or len(q) not in (2, 3):
            return None
        if len(q) == 2:
            batch, tq, tk = 1, q[0], k[0]
        else:
            batch = q[0] if module.batch_first else q[1]
            tq, tk = (q[1], k[1]) if module.batch_first else (q[0], k[0])
        e = module.embed_dim
        projections = tq * e * e + tk * e * (module.kdim + module.vdim) + tq * e * e
        return batch * (projections + 2 * tq * tk * e)
    if isinstance(module, nn.Bilinear):
        x = _arg_shape(node, 0, "input1")
        if x is None:
            return None
        rows = int(np.prod(x[:-1], dtype=np.int64)) if len(x) > 1 else 1
        return rows * module.out_features * module.in1_features * module.in2_features
    return None


def node_shape(node: Any) -> tuple[int, ...] | None:
    """The shape ``ShapeProp`` recorded for ``node``'s tensor; None if not a tensor or unknown."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def flattened_spatial(node: fx.Node, root: nn.Module) -> int | None:
    """For a ``FLATTEN`` or ``RESHAPE`` node: the positions each channel becomes, if it flattens.

    That is the product of the spatial sizes when the op turns ``(N, C, *spatial)`` into
    ``(N, C * prod(spatial))`` (``flatten(x, 1)``, ``nn.Flatten()``, ``x.view(x.size(0), -1)``);
    None for any other flatten or reshape.

    Args:
        node: The node.
        root: The traced module that holds its submodules.
    """
    x = node.args[0] if node.args else None
    in_shape, out_shape = node_shape(x), node_shape(node)
    if in_shape is None or out_shape is None or len(out_shape) != 2:
        return None
    module = root.get_submodule(str(node.target)) if node.op == "call_module" else None
    start: Any
    end: Any
    if isinstance(module, nn.Flatten):
        start, end = module.start_dim, module.end_dim
    elif node.op == "call_method" and node.target in ("view", "reshape"):
        if not in_shape or out_shape[0] != in_shape[0]:
            return None
        start, end = 1, -1
    else:
        args = node.args
        start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
        end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
    if not isinstance(start, int) or not isinstance(end, int):
        return None
    if start != 1 or end not in (-1, len(in_shape) - 1):
        return None
    return int(np.prod(in_shape[2:], dtype=np.int64))


def scaled_operand(node: fx.Node) -> fx.Node | None:
    """For a ``SCALE`` node: the tensor it multiplies by a plain number; None for a product."""
    if len(node.args) != 2:
        return None
    a, b = node.args
    if isinstance(b, (int, float)):
        return a if isinstance(a, fx.Node) else None
    if isinstance(a, (int, float)):
        return b if isinstance(b, fx.Node) else None
    return None


NONZERO_AT_ZERO_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.Softmax,
    nn.Softplus,
)
NONZERO_AT_ZERO_FUNCTIONS: frozenset[Any] = frozenset(
    {torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.exp, torch.softmax, F.softmax, F.softplus}
)


def zero_becomes_nonzero(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` turns a zero channel into a non-zero one (``sigmoid(0) = 0.5``).

    After such an op a pruned channel is alive indeed: counting it alive is exact, not a blind
    spot of the layer graph.
    """
    if node.op == "call_module":
        return isinstance(root.get_submodule(str(node.target)), NONZERO_AT_ZERO_MODULES)
    if node.op == "call_method":
        return node.target in ("sigmoid", "exp", "softmax")
    return node.op == "call_function" and node.target in NONZERO_AT_ZERO_FUNCTIONS


def sliced_spatially(node: fx.Node) -> bool:
    """Whether a ``getitem`` node slices only dimensions after the channels (``x[:, :, ::2]``).

    Every batch element and every channel is kept, so a zero channel stays a zero channel at the
    same position.
    """
    index = node.args[1] if len(node.args) > 1 else None
    shape = node_shape(node.args[0]) if node.args else None
    if not isinstance(index, tuple) or shape is None or len(shape) < 3 or len(index) < 2:
        return False
    whole = slice(None, None, None)
    return (
        index[0] == whole
        and index[1] == whole
        and all(isinstance(i, slice) or i is Ellipsis for i in index[2:])
    )


def padded_channels(node: fx.Node) -> tuple[int, int] | None:
    """For an ``F.pad`` node: ``(before, after)`` zeros added to the channel dimension, else None.

    None (the op is opaque) unless it pads with the constant zero, by non-negative amounts, a
    tensor of known rank of at least 3 (``(0, 0)`` when only spatial dimensions are padded).
    """
    shape = node_shape(node.args[0]) if node.args else None
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
    if shape is None or len(shape) < 3 or not isinstance(pad, (tuple, list)) or len(pad) % 2:
        return None
    if mode != "constant" or value not in (None, 0, 0.0):
        return None
    if not all(isinstance(p, int) and p >= 0 for p in pad):
        return None
    channel = len(shape) - 2  # dimension 1, counted from the last (pad's pairs run backwards)
    if len(pad) < 2 * (channel + 1):
        return (0, 0)
    return int(pad[2 * channel]), int(pad[2 * channel + 1])


def gated_operands(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """For a ``SCALE`` node: ``(x, gate)`` when it multiplies ``x`` by a per-channel gate.

    The gate has ``x``'s batch and channel sizes and 1 everywhere else (``(N, C, 1, 1)``), and
    ``x`` has the output's shape with more than one position per channel: channel ``c`` of the
    product is zero wherever channel ``c`` of ``x`` is. None for any other product.
    """
    if len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        return None
    out = node_shape(node)
    if out is None or len(out) < 3 or int(np.prod(out[2:])) <= 1:
        return None
    for x, gate in (node.args, node.args[::-1]):
        xs, gs = node_shape(x), node_shape(gate)
        per_channel = gs is not None and len(gs) == len(out) and gs[:2] == out[:2]
        if xs == out and per_channel and all(d == 1 for d in cast(tuple, gs)[2:]):
            return cast(fx.Node, x), cast(fx.Node, gate)
    return None


def residual_operands(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """For an ``ADD`` node: its two tensor operands if both have the output's shape, else None."""
    if len(node.args) != 2:
        return None
    a, b = node.args
    if not isinstance(a, fx.Node) or not isinstance(b, fx.Node):
        return None
    out_shape = node_shape(node)
    if node_shape(a) != out_shape or node_shape(b) != out_shape:
        return None
    return a, b


def concatenated(node: fx.Node) -> list[Any] | None:
    """For a ``CONCAT`` node: the tensors it concatenates on the channel dimension, else None."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out_shape = node_shape(node)
    if not isinstance(tensors, (list, tuple)) or not tensors or out_shape is None:
        return None
    if not isinstance(dim, int) or dim % len(out_shape) != 1:
        return None
    return list(tensors)


def mean_keeps_channels(node: fx.Node) -> bool:
    """For a ``MEAN`` node: whether it keeps the batch and channel dimensions as they are."""
    in_shape = node_shape(node.args[0]) if node.args else None
    out_shape = node_shape(node)
    return bool(in_shape and out_shape and len(out_shape) >= 2 and out_shape[:2] == in_shape[:2])
