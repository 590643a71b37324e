"""A physically pruned model: pruned kernels removed, consumers' inputs with them (torch.fx).

``pruned_module(evaluator, policy)`` returns a plain ``nn.Module`` (a ``torch.fx.GraphModule``)
that computes the compressed model's logits with smaller layers: every compressible layer keeps
only its live output kernels and reads only its live input channels (``LayerGraph.liveness``), so
its weight count is exactly the cost model's (kept kernel, kept input) pairs times the kernel area,
and its MACs are the cost model's MACs. The weights are the compressed view's (fake-quantized
floats) and each layer's input is fake-quantized at its activation width as in evaluation.

How the graph is rewritten. The model is traced with torch.fx; walking it in execution order, each
tensor carries the original channel positions it still holds (the live ones; the removed ones are
exactly zero in the masked model). Each op is handled by its category in the op table the layer
graph is built from (``jpq_env.core.graph.ops``), so the rewrite follows the cost model's wiring:

- a conv or linear layer is rebuilt with its live kernels and the input positions it reads; a
  depthwise conv keeps the channels whose input and kernel are both alive; a grouped conv keeps
  its live groups, as one grouped conv when they stay equal in size, else one conv per group
  whose outputs are concatenated;
- BatchNorm (and a per-channel PReLU) is sliced to its tensor's positions; activations, pooling,
  dropout, flatten (``view(n, -1)`` too), a global ``mean`` and scaling by a number keep positions;
- a residual add takes the union of its operands' positions (the rule of the cost model): an
  operand that lacks some of them is scattered into the union layout (zeros), which costs no
  parameter; a concat on channels concatenates positions;
- anything else (an op the graph does not understand, a layer it does not compress, the output)
  gets the tensor back in its full layout (zeros at removed positions), so it computes exactly
  what it computed in the masked model.

Kernels whose inputs are all removed are removed too (``LayerGraph.liveness``: the compressed view
zeroes their bias as well), so no constant is left to fold; a layer with no live kernel at all
outputs an empty channel dimension. A layer whose input is quantized to 1 bit over a signed range
maps zero to ``span / 2``, not zero: it keeps all its input channels (the masked model computes
with them).

Serialization (``save_pruned``): ``torch.export`` with a dynamic batch dimension, written by
``torch.export.save``. Chosen over ``torch.save`` of the module (a pickle: loading runs code from
the file and needs jpq-env and the user's classes importable) and TorchScript (in maintenance):
the ``.pt2`` program holds the graph of ATen ops and the weights, ``torch.export.load(path)
.module()`` runs it with nothing but torch, and it is the input of torch's deployment paths
(AOTInductor, ExecuTorch).
"""

from __future__ import annotations

import copy
import os
from typing import Any, assert_never, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm

from jpq_env.core.graph import LayerGraph
from jpq_env.core.graph.ops import (
    Op,
    concatenated,
    flattened_spatial,
    gated_operands,
    mean_keeps_channels,
    node_shape,
    op_kind,
    padded_channels,
    residual_operands,
    scaled_operand,
)
from jpq_env.core.graph.trace import trace_module
from jpq_env.core.policy import Policy
from jpq_env.core.quant import FULL_PRECISION, ActRange, quantize_activation
from jpq_env.errors import ArgumentError
from jpq_env.export.packed import zero_maps_to_zero
from jpq_env.proxy.evaluator import LocalEvaluator

__all__ = [
    "ActQuant",
    "ChannelGather",
    "ChannelScatter",
    "SplitGroups",
    "load_pruned",
    "prune_physically",
    "pruned_module",
    "save_pruned",
    "weight_count",
]

Positions = np.ndarray | None  # original channel positions a tensor holds; None: all of them


class ChannelScatter(nn.Module):
    """Put a tensor's channels back at their original positions among ``size`` (zeros elsewhere).

    One zero channel is appended and every output position gathers its source (the zero channel
    where the tensor has none): a ``Pad`` and a ``Gather`` in ONNX, with no shape arithmetic.
    ``index``: the original position of each of the tensor's channels.
    """

    def __init__(self, index: np.ndarray, size: int) -> None:
        super().__init__()
        source = np.full(size, len(index), dtype=np.int64)
        source[np.asarray(index, dtype=np.int64)] = np.arange(len(index))
        self.inputs = len(index)
        self.register_buffer("source", torch.from_numpy(source))

    @classmethod
    def reading(cls, source: np.ndarray, inputs: int) -> ChannelScatter:
        """The move whose output channel ``j`` is input channel ``source[j]`` (``inputs``: zero)."""
        move = cls(np.zeros(0, dtype=np.int64), 0)
        move.inputs = inputs
        move.source = torch.as_tensor(source, dtype=torch.long)
        return move

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``'s channels at their positions: a zero channel appended, then gathered."""
        pad = [0, 0] * (x.dim() - 2) + [0, 1]  # one zero channel after the last (dim 1)
        return F.pad(x, pad).index_select(1, cast(torch.Tensor, self.source))


def _compose_moves(gm: fx.GraphModule) -> None:
    """Replace a ``ChannelScatter`` read only by a ``ChannelGather`` with one move (same values)."""
    for node in list(gm.graph.nodes):
        scatter = gm.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(scatter, ChannelScatter) or len(node.users) != 1:
            continue
        (user,) = node.users
        gather = gm.get_submodule(user.target) if user.op == "call_module" else None
        if not isinstance(gather, ChannelGather) or user.args != (node,):
            continue
        source = cast(torch.Tensor, scatter.source)
        composed = source.index_select(0, cast(torch.Tensor, gather.index)).numpy()
        move: nn.Module = (
            ChannelGather(composed)
            if composed.max(initial=-1) < scatter.inputs  # no zero channel read
            else ChannelScatter.reading(composed, scatter.inputs)
        )
        gm.add_submodule(str(user.target), move)  # the gather's name, now the whole move
        user.args = tuple(node.args)
        gm.graph.erase_node(node)


class ChannelGather(nn.Module):
    """Keep the channels at ``index`` (in this order)."""

    def __init__(self, index: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The channels of ``x`` at ``index``."""
        return x.index_select(1, cast(torch.Tensor, self.index))


class ActQuant(nn.Module):
    """Fake-quantize a layer's input at ``bits`` over a calibrated range (as in evaluation).

    The pruned model puts one before every layer whose input is quantized; the ONNX export
    replaces each by a QuantizeLinear/DequantizeLinear pair.
    """

    def __init__(self, bits: int, rng: ActRange) -> None:
        super().__init__()
        self.bits, self.lo, self.hi = bits, rng.lo, rng.hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` quantized to the layer's activation grid."""
        return quantize_activation(x, self.bits, ActRange(self.lo, self.hi))


class _NoChannels(nn.Module):
    """A layer with no live kernel: an empty channel dimension of the layer's output size."""

    def __init__(self, layer: nn.Conv2d | nn.Linear) -> None:
        super().__init__()
        self.conv = isinstance(layer, nn.Conv2d)
        if isinstance(layer, nn.Conv2d):
            pad = layer.padding
            self.same = pad == "same"
            self.pad = (0, 0) if isinstance(pad, str) else tuple(int(p) for p in pad)
            self.kernel = tuple(int(k) for k in layer.kernel_size)
            self.stride = tuple(int(s) for s in layer.stride)
            self.dilation = tuple(int(d) for d in layer.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.conv:
            return x.new_zeros((x.shape[0], 0))
        hw = [
            x.shape[2 + i]
            if self.same
            else (x.shape[2 + i] + 2 * self.pad[i] - self.dilation[i] * (self.kernel[i] - 1) - 1)
            // self.stride[i]
            + 1
            for i in range(2)
        ]
        return x.new_zeros((x.shape[0], 0, *hw))


def _conv_like(layer: nn.Conv2d, cin: int, cout: int, groups: int) -> nn.Conv2d:
    return nn.Conv2d(
        cin,
        cout,
        cast(tuple[int, int], layer.kernel_size),
        stride=cast(tuple[int, int], layer.stride),
        padding=cast(Any, layer.padding),
        dilation=cast(tuple[int, int], layer.dilation),
        groups=groups,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
    )


def _set(module: nn.Conv2d | nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    with torch.no_grad():
        module.weight.copy_(weight.contiguous())
        if module.bias is not None and bias is not None:
            module.bias.copy_(bias.contiguous())


class _Rewriter:
    """One pass over the traced graph, rebuilding layers and tracking channel positions."""

    def __init__(
        self,
        gm: fx.GraphModule,
        graph: LayerGraph,
        policy: Policy,
        act_ranges: list[ActRange] | None,
    ) -> None:
        self.gm = gm
        self.graph = graph
        self.live = graph.liveness(policy.kept())
        self.act_bits = [int(lp.act_bits) for lp in policy.layers]
        self.ranges = act_ranges
        self.index = {name: i for i, name in enumerate(graph.names)}
        self.pos: dict[fx.Node, Positions] = {}
        self.count = 0

    # ---- helpers ------------------------------------------------------------------------------
    def _add_module(self, module: nn.Module, before: fx.Node, arg: fx.Node, stem: str) -> fx.Node:
        name = f"_jpq_{stem}{self.count}"
        self.count += 1
        self.gm.add_submodule(name, module)
        with self.gm.graph.inserting_before(before):
            return self.gm.graph.call_module(name, (arg,))

    def _size(self, node: fx.Node) -> int | None:
        shape = node_shape(node)
        return shape[1] if shape is not None and len(shape) >= 2 else None

    def _to_layout(self, arg: fx.Node, want: Positions, user: fx.Node) -> fx.Node:
        """A node holding ``arg``'s channels at positions ``want`` (None: the full layout)."""
        have = self.pos.get(arg)
        size = self._size(arg)
        if have is None or size is None:
            if want is None or (size is not None and np.array_equal(want, np.arange(size))):
                return arg
            return self._add_module(ChannelGather(want), user, arg, "gather")
        if want is not None and np.array_equal(have, want):
            return arg
        if want is not None and np.isin(want, have).all():
            return self._add_module(ChannelGather(np.searchsorted(have, want)), user, arg, "gather")
        if len(have) == size:  # every position is there already: a full layout
            full = arg
        else:
            full = self._add_module(ChannelScatter(have, size), user, arg, "scatter")
        if want is None or np.array_equal(want, np.arange(size)):
            return full
        return self._add_module(ChannelGather(want), user, full, "gather")

    def _expand_all(self, node: fx.Node) -> None:
        for arg in node.all_input_nodes:
            if self.pos.get(arg) is not None:
                node.replace_input_with(arg, self._to_layout(arg, None, node))

    # ---- the walk -----------------------------------------------------------------------------
    def run(self) -> None:
        for node in list(self.gm.graph.nodes):
            self.pos[node] = self._visit(node)

    def _visit(self, node: fx.Node) -> Positions:
        kind = op_kind(node, self.gm)
        match kind:
            case Op.LAYER:
                target = str(node.target)
                if target not in self.index:
                    return self._opaque(node)
                layer = cast(nn.Conv2d | nn.Linear, self.gm.get_submodule(target))
                return self._layer(node, layer, self.index[target])
            case Op.BATCHNORM:
                return self._batchnorm(node)
            case Op.KEEP:
                return self._keep(node)
            case Op.ADD:
                return self._add(node)
            case Op.SCALE:
                x = scaled_operand(node)
                if x is not None:
                    return self.pos.get(x)
                return self._gated(node)
            case Op.PAD:
                return self._pad(node)
            case Op.FLATTEN | Op.RESHAPE:
                return self._flatten(node)
            case Op.MEAN:
                x, p = self._first(node)
                return p if x is not None and mean_keeps_channels(node) else self._opaque(node)
            case Op.CONCAT:
                return self._cat(node)
            case Op.SIZE:
                if self._first(node)[0] is not None and node.args[1:2] and node.args[1] != 1:
                    return None  # the batch or a spatial size: the same in every layout
                return self._opaque(node)
            case Op.OPAQUE:  # the output too: it gets the full layout
                return self._opaque(node)
            case _:
                assert_never(kind)

    def _opaque(self, node: fx.Node) -> Positions:
        """An op the rewrite does not see through: its inputs in their full layout."""
        self._expand_all(node)
        return None

    def _first(self, node: fx.Node) -> tuple[fx.Node | None, Positions]:
        x = node.args[0] if node.args else None
        return (x, self.pos.get(x)) if isinstance(x, fx.Node) else (None, None)

    def _batchnorm(self, node: fx.Node) -> Positions:
        x, p = self._first(node)
        if x is None:
            return self._opaque(node)
        target = str(node.target)
        sources = self.graph.bn_sources.get(target)
        if p is not None and sources is not None:
            # Zero channels a padding added are not in the layout, but BatchNorm makes them a
            # non-zero constant (the graph counts them alive): bring them back as zeros.
            constants = np.flatnonzero(sources.external)
            if not np.isin(constants, p).all():
                p = np.union1d(p, constants)
                node.replace_input_with(x, self._to_layout(x, p, node))
        if p is not None:  # BatchNorm refuses an empty channel dimension: nothing to do there
            module = cast(_BatchNorm, self.gm.get_submodule(target))
            self.gm.add_submodule(target, _slice_bn(module, p) if len(p) else nn.Identity())
        return p

    def _keep(self, node: fx.Node) -> Positions:
        x, p = self._first(node)
        if x is None:
            return self._opaque(node)
        if p is not None and len(p) == 0:
            # No live channel (pooling refuses an empty channel dimension): the full zeros.
            return self._opaque(node)
        if node.op == "call_module" and p is not None:
            target = str(node.target)
            module = self.gm.get_submodule(target)
            if isinstance(module, nn.PReLU) and module.num_parameters > 1:
                sliced = nn.PReLU(len(p))
                with torch.no_grad():
                    sliced.weight.copy_(module.weight[torch.from_numpy(p)])
                self.gm.add_submodule(target, sliced)
        return p

    def _flatten(self, node: fx.Node) -> Positions:
        x, p = self._first(node)
        spatial = flattened_spatial(node, self.gm) if x is not None else None
        if p is None or x is None or spatial is None:
            return self._opaque(node)
        if node.op == "call_method" and node.target in ("view", "reshape"):
            # x.view(x.size(0), -1) with sizes of the original layout: a flatten of what is there
            node.target, node.args, node.kwargs = "flatten", (x, 1), {}
        return (p[:, None] * spatial + np.arange(spatial)).ravel()

    def _pad(self, node: fx.Node) -> Positions:
        """Zero padding of the channels: the live positions shift, the zeros are not stored."""
        x, p = self._first(node)
        pads = padded_channels(node)
        if x is None or p is None or pads is None:
            return self._opaque(node)
        pad = list(cast(tuple, node.args[1] if len(node.args) > 1 else node.kwargs["pad"]))
        channel = 2 * (len(cast(tuple, node_shape(x))) - 2)
        if len(pad) > channel:
            pad[channel : channel + 2] = [0, 0]  # the padded channels are dead: never built
        if len(node.args) > 1:
            node.args = (node.args[0], tuple(pad), *node.args[2:])
        else:
            node.kwargs = {**node.kwargs, "pad": tuple(pad)}
        return p + pads[0]

    def _gated(self, node: fx.Node) -> Positions:
        """``x * gate`` with a per-channel gate: ``x``'s positions, the gate gathered to them."""
        operands = gated_operands(node)
        if operands is None:
            return self._opaque(node)
        x, gate = operands
        p = self.pos.get(x)
        if p is None:
            return self._opaque(node)
        node.replace_input_with(gate, self._to_layout(gate, p, node))
        return p

    def _add(self, node: fx.Node) -> Positions:
        operands = residual_operands(node)
        if operands is None:
            return self._opaque(node)
        have = [self.pos.get(a) for a in operands]
        if any(h is None for h in have):
            return self._opaque(node)
        union = np.union1d(*cast(list[np.ndarray], have))
        for a in operands:
            node.replace_input_with(a, self._to_layout(a, union, node))
        return union

    def _cat(self, node: fx.Node) -> Positions:
        parts = concatenated(node)
        if parts is None or not all(
            isinstance(t, fx.Node) and self._size(t) is not None for t in parts
        ):
            return self._opaque(node)
        positions, offset = [], 0
        for t in cast(list[fx.Node], parts):
            size = cast(int, self._size(t))
            p = self.pos.get(t)
            positions.append((np.arange(size) if p is None else p) + offset)
            offset += size
        return np.concatenate(positions)

    def _layer(self, node: fx.Node, layer: nn.Conv2d | nn.Linear, i: int) -> Positions:
        info = self.graph.layers[i]
        x = cast(fx.Node, node.args[0])
        alive_out = np.flatnonzero(self.live.alive_out[i])
        bits = self.act_bits[i]
        rng = self.ranges[i] if self.ranges is not None else None
        live_in = self.live.alive_in[i] if zero_maps_to_zero(bits, rng) else None
        if live_in is None:
            live_in = np.ones(info.in_channels, dtype=bool)
        target = str(node.target)
        weight = layer.weight.detach()
        bias = layer.bias.detach() if layer.bias is not None else None
        if len(alive_out) == 0:
            self.gm.add_submodule(target, _NoChannels(layer))
            return np.zeros(0, dtype=np.int64)
        out_index = torch.tensor(alive_out)
        groups = info.groups
        if groups == 1:
            want = np.flatnonzero(live_in)
            new: nn.Conv2d | nn.Linear
            if isinstance(layer, nn.Linear):
                new = nn.Linear(len(want), len(alive_out), bias=bias is not None)
            else:
                new = _conv_like(layer, len(want), len(alive_out), 1)
            _set(
                new,
                weight[out_index][:, torch.from_numpy(want)],
                None if bias is None else bias[out_index],
            )
            self._replace(node, x, want, target, new, bits, rng)
            return alive_out
        layer = cast(nn.Conv2d, layer)
        cin_g, cout_g = info.in_per_group, info.out_per_group
        parts = []  # (inputs within the group, outputs) per live group
        for j in range(groups):
            outs = alive_out[(alive_out >= j * cout_g) & (alive_out < (j + 1) * cout_g)]
            if len(outs):
                ins = np.flatnonzero(live_in[j * cin_g : (j + 1) * cin_g])
                parts.append((j, ins, outs))
        want = np.concatenate([j * cin_g + ins for j, ins, _ in parts])
        if len({len(ins) for _, ins, _ in parts}) == 1 and len({len(o) for *_, o in parts}) == 1:
            conv = _conv_like(layer, len(want), len(alive_out), len(parts))
            w = torch.cat(
                [weight[torch.from_numpy(o)][:, torch.from_numpy(ins)] for _, ins, o in parts]
            )
            _set(conv, w, None if bias is None else bias[out_index])
            self._replace(node, x, want, target, conv, bits, rng)
            return alive_out
        # Live groups of different sizes: one conv per group, outputs concatenated in order.
        split = SplitGroups(
            [
                (
                    np.arange(len(ins)) + sum(len(q) for _, q, _ in parts[:k]),
                    weight[torch.from_numpy(o)][:, torch.from_numpy(ins)],
                    None if bias is None else bias[torch.from_numpy(o)],
                )
                for k, (_, ins, o) in enumerate(parts)
            ],
            layer,
        )
        self._replace(node, x, want, target, split, bits, rng)
        return alive_out

    def _replace(
        self,
        node: fx.Node,
        x: fx.Node,
        want: np.ndarray,
        target: str,
        new: nn.Module,
        bits: int,
        rng: ActRange | None,
    ) -> None:
        arg = self._to_layout(x, want, node)
        if bits < FULL_PRECISION and rng is not None:
            arg = self._add_module(ActQuant(bits, rng), node, arg, "act")
        node.replace_input_with(x, arg)
        self.gm.add_submodule(target, new)


class SplitGroups(nn.Module):
    """A grouped conv whose live groups differ in size: one conv per group, concatenated.

    Attributes:
        convs: The per-group convs, in group order; group ``k`` reads the input channels at
            buffer ``index{k}``.
    """

    def __init__(
        self,
        parts: list[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]],
        layer: nn.Conv2d,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        for k, (index, weight, bias) in enumerate(parts):
            conv = _conv_like(layer, weight.shape[1], weight.shape[0], 1)
            _set(conv, weight, bias)
            self.convs.append(conv)
            self.register_buffer(f"index{k}", torch.as_tensor(index, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each group's conv on its input channels, outputs concatenated in group order."""
        outs = [
            conv(x.index_select(1, cast(torch.Tensor, getattr(self, f"index{k}"))))
            for k, conv in enumerate(self.convs)
        ]
        return torch.cat(outs, dim=1)


def _slice_bn(bn: _BatchNorm, p: np.ndarray) -> _BatchNorm:
    index = torch.from_numpy(p)
    new = type(bn)(
        len(p),
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
    )
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(bn, name)
            if value is not None:
                getattr(new, name).copy_(value[index].contiguous())
        if bn.num_batches_tracked is not None and new.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.eval()


def prune_physically(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    graph: LayerGraph,
    policy: Policy,
    example_input: torch.Tensor,
    act_ranges: list[ActRange] | None = None,
) -> fx.GraphModule:
    """The physically pruned form of a compressed model.

    Args:
        model: The user's FP32 model (its architecture; copied, never written).
        state: The compressed model's ``state_dict`` (masked, fake-quantized weights, BatchNorm
            statistics as evaluated): ``evaluator.prepare(policy).state_dict()`` or a module from
            ``load_compressed``.
        graph: The model's layer graph.
        policy: The policy that compressed it.
        example_input: An input of the model (shapes are read from one pass on it).
        act_ranges: Calibrated input ranges per layer (activations below 32 bits need them).

    Returns:
        A ``torch.fx.GraphModule`` in eval mode, on the CPU.
    """
    policy.validate(graph)
    if act_ranges is None and any(lp.act_bits < FULL_PRECISION for lp in policy.layers):
        raise ArgumentError("activation bits below 32 need calibrated ranges (act_ranges)")
    base = copy.deepcopy(model).cpu().eval()
    base.load_state_dict({k: v.detach().cpu().contiguous() for k, v in state.items()})
    gm = trace_module(base)
    with torch.no_grad():
        ShapeProp(gm).propagate(example_input.detach().cpu().contiguous())
    _Rewriter(gm, graph, policy, act_ranges).run()
    _compose_moves(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm.eval()


def pruned_module(evaluator: LocalEvaluator, policy: Policy) -> fx.GraphModule:
    """The physically pruned model of ``policy`` on ``evaluator``'s task (as it evaluates it)."""
    masked = evaluator.prepare(policy)
    return prune_physically(
        evaluator.task.model,
        masked.state_dict(),
        evaluator.graph,
        policy,
        evaluator.task.example_input,
        evaluator.compressed.act_ranges,
    )


def weight_count(module: nn.Module) -> int:
    """Weight elements of ``module`` as the size model counts them (no bias, BatchNorm, PReLU)."""
    return sum(
        int(p.numel())
        for m in module.modules()
        if not isinstance(m, (_BatchNorm, nn.PReLU))
        for name, p in m.named_parameters(recurse=False)
        if name != "bias"
    )


def save_pruned(
    module: nn.Module, example_input: torch.Tensor, path: str | os.PathLike[str]
) -> int:
    """Write ``module`` as a ``torch.export`` program with a dynamic batch; return the file size.

    Reload with ``load_pruned`` (or ``torch.export.load(path).module()``).
    """
    from jpq_env.atomic import atomic_file

    example = example_input.detach().cpu().contiguous()
    if example.shape[0] < 2:  # a batch of 1 would be specialized; export on two samples
        example = torch.cat([example, example])
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    with atomic_file(path, "wb") as f:
        torch.export.save(program, f)
    return os.path.getsize(path)


def load_pruned(path: str | os.PathLike[str]) -> nn.Module:
    """The module ``save_pruned`` wrote (a ``torch.export`` program), ready to run."""
    try:
        program = torch.export.load(path)
    except FileNotFoundError as exc:
        raise ArgumentError(f"no exported program at '{path}'") from exc
    except Exception as exc:
        raise ArgumentError(f"'{path}' is not a readable torch.export program: {exc}") from exc
    return program.module()
