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
  (``scaled_operand``), else opaque;
- ``FLATTEN``: channel ``c`` of an ``(N, C, H, W)`` tensor becomes features ``c*H*W`` to
  ``(c+1)*H*W - 1`` when it flattens every dimension after the batch (``flattened_spatial``);
- ``RESHAPE``: ``view``/``reshape`` to ``(batch, -1)``: such a flatten, else opaque;
- ``MEAN``: keeps positions when it reduces spatial dimensions only (global average pooling
  written as ``x.mean((2, 3))``), else opaque;
- ``CONCAT``: ``torch.cat`` on the channel dimension concatenates positions (``concatenated``);
- ``SIZE``: reads a shape; only the channel count depends on the layout;
- ``OPAQUE``: anything else.

The same tables say which ops carry no multiply-accumulates (``may_carry_macs``): the tracer runs
torch's flop counter on the others only, and ``NO_MAC_MODULES`` lists the modules with parameters
whose zero count is exact.
"""

from __future__ import annotations

import enum
import operator
from typing import Any

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
    "concatenated",
    "flattened_spatial",
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

NO_MAC_FUNCTIONS: frozenset[Any] = frozenset({operator.getitem, getattr, F.pad})
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
        return FUNCTION_OPS.get(node.target, Op.OPAQUE)
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
