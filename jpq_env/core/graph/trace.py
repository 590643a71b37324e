"""Tracing a model into its layer graph: torch.fx, each node's shape and MACs, the channel wiring.

``build_layer_graph(model, example_input)`` (what ``LayerGraph.from_module`` runs) traces a
private copy of the model with torch.fx (``trace_module``), records every tensor's shape and every
node's MACs on the example input (``ShapeProp``, with ``torch.utils.flop_counter`` on the ops that
may carry MACs), then walks the nodes once in execution order: a compressible layer becomes a
``LayerInfo`` with the ``ChannelSources`` of its input, every other op combines its inputs'
sources as its category says (``jpq_env.core.graph.ops``, the table the physical pruning reads
too), and a module or op with parameters or MACs outside the compressible layers is recorded as an
``UncompressedLayer``.

Why torch.fx and not torch-pruning's DependencyGraph: fx ships with torch (no extra dependency in
the core), gives an exact op-level graph in execution order (adds, concats and flattens are explicit
nodes) on which ``ShapeProp`` records every tensor's shape from one example input, and it fails
loudly on data-dependent control flow instead of silently mis-tracing. torch-pruning builds its own
graph from autograd hooks and is the better tool for *physically* removing channels; it stays an
optional extra for that purpose.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, assert_never

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

from jpq_env.core.graph.channels import ChannelSources
from jpq_env.core.graph.checks import check_outputs, check_written_modules
from jpq_env.core.graph.layer_graph import LayerGraph, LayerInfo, UncompressedLayer
from jpq_env.core.graph.ops import (
    NO_MAC_MODULES,
    PER_CHANNEL_MODULES,
    Op,
    analytic_macs,
    concatenated,
    flattened_spatial,
    gated_operands,
    may_carry_macs,
    mean_keeps_channels,
    node_shape,
    op_kind,
    padded_channels,
    residual_operands,
    scaled_operand,
    zero_becomes_nonzero,
)
from jpq_env.errors import GraphError

__all__ = ["build_layer_graph", "trace_module"]


class _NamingTracer(fx.Tracer):
    """An fx tracer that remembers which module it was inside when tracing failed."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_in: str | None = None

    def call_module(
        self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_of_module(m) or type(m).__name__
            raise


def trace_module(model: nn.Module) -> fx.GraphModule:
    """``model`` traced with torch.fx (leaf modules: torch's own).

    Raises:
        GraphError: If tracing fails; the message names the module it failed in.
    """
    tracer = _NamingTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where = tracer.failed_in or f"the forward of {type(model).__name__}"
        raise GraphError(
            f"cannot trace the model with torch.fx: tracing failed in module '{where}' "
            f"({type(exc).__name__}: {exc}). Data-dependent control flow (if/for on tensor "
            "values) is not traceable; move it out of forward() or wrap that module so "
            "torch.fx treats it as a leaf."
        ) from exc
    return fx.GraphModule(tracer.root, graph)


class _ShapesAndMacs(ShapeProp):
    """``ShapeProp`` that also counts each node's MACs (``node.meta["macs"]``, whole batch).

    Compressible layers (counted from their shapes) and ops the graph knows to carry no MACs
    (activations, BatchNorm, pooling, adds, reshapes) skip the counter, which costs about half a
    millisecond per op.
    """

    def run_node(self, n: fx.Node) -> Any:
        if not may_carry_macs(n, self.module):
            return super().run_node(n)
        with FlopCounterMode(display=False) as counter:
            result = super().run_node(n)
        n.meta["macs"] = counter.get_total_flops() // 2  # the counter counts 2 FLOPs per MAC
        return result


def build_layer_graph(model: nn.Module, example_input: torch.Tensor) -> LayerGraph:
    """Trace a private copy of ``model`` in eval mode on ``example_input``; build its layer graph.

    ``LayerGraph.from_module`` checks its arguments and the model (``check_model``) first, and
    names the uncompressed layers after.

    Raises:
        GraphError: If the model cannot be traced or fails on the example input, calls a
            compressible module more than once, has no compressible layer, or writes a module
            that ``check_written_modules`` refuses.
    """
    private = copy.deepcopy(model).eval()
    gm = trace_module(private)
    try:
        # ShapeProp prints the traceback itself before raising: keep stderr for our message.
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            output = _ShapesAndMacs(gm).propagate(example_input.detach().to(_device_of(private)))
    except Exception as exc:
        raise GraphError(
            f"the model failed on the example input of shape {tuple(example_input.shape)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    check_outputs(output, "the example input")
    batch = int(example_input.shape[0]) if example_input.dim() else 1
    graph = _Builder(gm, max(batch, 1)).build()
    check_written_modules(private, gm, graph.names, tuple(graph.bn_sources))
    return graph


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class _Builder:
    """Walks an fx graph once, in execution order, tracking channel sources per tensor."""

    def __init__(self, gm: fx.GraphModule, batch: int = 1) -> None:
        self.gm = gm
        self.batch = batch
        self.params = dict(gm.named_parameters(remove_duplicate=False))
        # Uncompressed layers by name: kind, parameters (by identity), MACs (None: uncounted).
        self.uncompressed: dict[str, tuple[str, dict[int, tuple[str, int]], int | None]] = {}
        self.env: dict[fx.Node, ChannelSources | None] = {}
        self.layers: list[LayerInfo] = []
        self.sources: list[ChannelSources] = []
        self.bn_sources: dict[str, ChannelSources] = {}
        self.input_layers: set[int] = set()
        self.outputs: set[int] = set()
        self.called: set[str] = set()
        self.bn_called: set[str] = set()
        # Ops after which channels of prunable layers count as alive: name -> (kind, layers).
        self.untracked: dict[str, tuple[str, set[int]]] = {}
        self.placeholders: set[fx.Node] = set()
        self.layer_nodes: dict[fx.Node, int] = {}

    def build(self) -> LayerGraph:
        for node in self.gm.graph.nodes:
            self.env[node] = self._visit(node)
            if node not in self.layer_nodes:
                self._record_uncompressed(node)
        if not self.layers:
            raise GraphError(
                "the model has no compressible layer: jpq-env compresses nn.Conv2d (plain, "
                "grouped, depthwise) and nn.Linear modules called in forward()"
            )
        fingerprint = ";".join(
            f"{x.name}:{x.kind}:{x.in_channels}x{x.out_channels}:{x.kernel}:{x.groups}"
            for x in self.layers
        )
        return LayerGraph(
            layers=tuple(self.layers),
            sources=tuple(self.sources),
            bn_sources=self.bn_sources,
            output_layers=frozenset(self.outputs),
            input_layers=frozenset(self.input_layers),
            fingerprint=fingerprint,
            uncompressed=tuple(
                UncompressedLayer(
                    name,
                    kind,
                    sum(n for _, n in params.values()),
                    sum(n for p, n in params.values() if "bias" not in p.rsplit(".", 1)[-1]),
                    macs,
                )
                for name, (kind, params, macs) in self.uncompressed.items()
            ),
            untracked=tuple(
                f"{name} ({kind})"
                for name, (kind, layers) in self.untracked.items()
                if layers - self.outputs  # a layer that may be pruned
            ),
        )

    def _record_uncompressed(self, node: fx.Node) -> None:
        """Record ``node`` if it holds parameters or does MACs outside the compressible layers.

        A leaf module is recorded under its own name; functional code (a parameter read by
        ``get_attr``, a ``torch.matmul``) under the innermost module whose ``forward`` runs it,
        or the node's own name at the top level.
        """
        macs: int | None = node.meta.get("macs", 0)
        params: dict[int, tuple[str, int]] = {}
        if node.op == "call_module":
            module = self.gm.get_submodule(str(node.target))
            if isinstance(module, PER_CHANNEL_MODULES):
                return
            for pname, p in module.named_parameters():
                params[id(p)] = (pname, int(p.numel()))
            name, kind = str(node.target), type(module).__name__
            counted = analytic_macs(module, node)  # what the flop counter misses (an LSTM)
            macs = counted if counted is not None else macs
            if not params and not macs:
                return
            if params and not macs and not isinstance(module, NO_MAC_MODULES):
                macs = None  # a module with weights whose kernels the counter does not see
        elif node.op in ("call_function", "call_method", "get_attr"):
            if node.op == "get_attr":
                param = self.params.get(str(node.target))
                if param is None:
                    return  # a buffer or constant: no weights
                params[id(param)] = (str(node.target), int(param.numel()))
            if not params and not macs:
                return
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                name, (_, cls) = next(reversed(stack.items()))
                kind = getattr(cls, "__name__", str(cls))
            else:  # the model's own forward: named after the parameter it reads, if any
                read = [n for n in node.all_input_nodes if str(n.target) in self.params]
                target = node.target
                kind = "parameter" if node.op == "get_attr" else getattr(target, "__name__", "")
                if node.op == "get_attr":
                    name = str(target)
                elif read and read[0].op == "get_attr":
                    name = str(read[0].target)
                else:
                    name = node.name
                kind = kind or name
        else:
            return
        if macs is not None:
            macs = round(macs / self.batch)
        if name in self.uncompressed:
            old_kind, old_params, old_macs = self.uncompressed[name]
            total = None if old_macs is None or macs is None else old_macs + macs
            kind = kind if old_kind == "parameter" else old_kind  # the op reading it says more
            self.uncompressed[name] = (kind, {**old_params, **params}, total)
        else:
            self.uncompressed[name] = (kind, params, macs)

    def _arg(self, node: Any) -> ChannelSources | None:
        return self.env.get(node) if isinstance(node, fx.Node) else None

    def _first(self, node: fx.Node) -> ChannelSources | None:
        """The sources of the op's first argument (its input tensor)."""
        return self._arg(node.args[0]) if node.args else None

    def _opaque_out(self, node: fx.Node) -> ChannelSources | None:
        shape = node_shape(node)
        if shape is None or len(shape) < 2:
            return None
        if self._may_hide_zeros(node):
            layers = {
                layer
                for arg in node.all_input_nodes
                if (src := self.env.get(arg)) is not None
                for layer, _, _ in src.producers
            }
            if layers:  # channels that pruning could zero stop being tracked here
                kind = (
                    type(self.gm.get_submodule(str(node.target))).__name__
                    if node.op == "call_module"
                    else getattr(node.target, "__name__", str(node.target))
                )
                self.untracked[node.name] = (kind, layers)
        return ChannelSources.opaque(shape[1])

    def _may_hide_zeros(self, node: fx.Node) -> bool:
        """Whether a pruned channel could stay zero after ``node`` unseen by the graph.

        Not after an op that turns zero into non-zero (``sigmoid``), nor after a layer that
        computes channels of its own (a module with parameters, an op with MACs): its outputs are
        alive indeed.
        """
        if node.op not in ("call_module", "call_function", "call_method"):
            return False
        if zero_becomes_nonzero(node, self.gm) or node.meta.get("macs"):
            return False
        if node.op == "call_module":
            return not any(True for _ in self.gm.get_submodule(str(node.target)).parameters())
        return True

    def _visit(self, node: fx.Node) -> ChannelSources | None:
        if node.op == "placeholder":
            self.placeholders.add(node)
            return self._opaque_out(node)
        if node.op == "output":
            self._mark_outputs(node.args)
            return None
        kind = op_kind(node, self.gm)
        match kind:
            case Op.LAYER:
                return self._layer_call(node)
            case Op.BATCHNORM:
                src = self._first(node)
                src = src.constants_alive() if src is not None else None  # BN(0) is not 0
                name = str(node.target)
                if name in self.bn_called:
                    raise GraphError(
                        f"BatchNorm '{name}' is applied more than once in forward(): its "
                        "statistics would be re-calibrated over both inputs and the channels "
                        "pruned before one call would be masked in the other. Give each call "
                        "its own BatchNorm module"
                    )
                self.bn_called.add(name)
                if src is not None:
                    self.bn_sources[name] = src
                return src
            case Op.KEEP:
                return self._first(node)
            case Op.ADD:
                return self._add(node)
            case Op.SCALE:
                # Scaling by a number or a per-channel gate keeps zeros zero; other products
                # are left opaque.
                x = scaled_operand(node)
                gated = gated_operands(node) if x is None else None
                x = gated[0] if gated is not None else x
                return self._arg(x) if x is not None else self._opaque_out(node)
            case Op.PAD:
                src, pads = self._first(node), padded_channels(node)
                if src is None or pads is None:
                    return self._opaque_out(node)
                before, after = (ChannelSources(np.zeros(n, dtype=bool)) for n in pads)
                return ChannelSources.concat([before, src, after])  # zeros: dead positions
            case Op.FLATTEN | Op.RESHAPE:
                # x.view(x.size(0), -1) too: a flatten of everything after the batch dimension.
                src, spatial = self._first(node), flattened_spatial(node, self.gm)
                if src is None or spatial is None:
                    return self._opaque_out(node)
                return src.flatten(spatial)
            case Op.MEAN:
                # Global average pooling written as x.mean((2, 3)) keeps channel positions.
                return self._first(node) if mean_keeps_channels(node) else self._opaque_out(node)
            case Op.CONCAT:
                return self._cat(node)
            case Op.SIZE | Op.OPAQUE:
                return self._opaque_out(node)
            case _:
                assert_never(kind)

    def _mark_outputs(self, value: Any) -> None:
        # Every layer whose output reaches the network's output without passing through another
        # compressible layer, whatever ops lie between (softmax, reshapes, ...), produces it.
        self.outputs.update(self._upstream(value)[0])

    def _upstream(self, value: Any) -> tuple[set[int], bool]:
        """Walk back from ``value`` through any op, stopping at compressible layers.

        Returns:
            The layers reached, and whether the network input was reached.
        """
        found: set[int] = set()
        seen: set[fx.Node] = set()
        stack: list[fx.Node] = []
        fx.node.map_arg(value, stack.append)
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in self.layer_nodes:
                found.add(self.layer_nodes[n])
                continue
            stack.extend(n.all_input_nodes)
        return found, bool(seen & self.placeholders)

    def _layer_call(self, node: fx.Node) -> ChannelSources | None:
        name = str(node.target)
        module = self.gm.get_submodule(name)
        assert isinstance(module, (nn.Conv2d, nn.Linear))  # Op.LAYER
        x = node.args[0] if node.args else None
        in_shape, out_shape = node_shape(x), node_shape(node)
        if isinstance(module, nn.Linear) and in_shape is not None and len(in_shape) != 2:
            raise GraphError(
                f"module '{name}' is an nn.Linear applied to a {len(in_shape)}-D input "
                f"{in_shape}: only (batch, features) inputs are supported; flatten first"
            )
        if in_shape is not None and out_shape is not None:
            return self._layer(node, name, module, in_shape, out_shape, self._arg(x))
        return self._opaque_out(node)

    def _layer(
        self,
        node: fx.Node,
        name: str,
        module: nn.Conv2d | nn.Linear,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        src: ChannelSources | None,
    ) -> ChannelSources:
        if name in self.called:
            raise GraphError(
                f"module '{name}' is called more than once in forward(); layers that share "
                "weights cannot be compressed independently and are not supported"
            )
        self.called.add(name)
        index = len(self.layers)
        weight_params = int(module.weight.numel())
        bias = getattr(module, "bias", None)
        params = weight_params + (int(bias.numel()) if bias is not None else 0)
        if isinstance(module, nn.Conv2d):
            kind, cin, cout = "conv", int(module.in_channels), int(module.out_channels)
            kernel = (int(module.kernel_size[0]), int(module.kernel_size[1]))
            stride = (int(module.stride[0]), int(module.stride[1]))
            groups = int(module.groups)
            in_hw, out_hw = (in_shape[-2], in_shape[-1]), (out_shape[-2], out_shape[-1])
        else:
            kind, cin, cout = "linear", int(module.in_features), int(module.out_features)
            kernel = stride = in_hw = out_hw = (1, 1)
            groups = 1
        macs = cout * (cin // groups) * kernel[0] * kernel[1] * out_hw[0] * out_hw[1]
        info = LayerInfo(
            index, name, kind, cin, cout, kernel, stride, groups, in_hw, out_hw, params,
            weight_params, macs,
        )  # fmt: skip
        if src is None or src.size != info.in_channels:
            src = ChannelSources.opaque(info.in_channels)
        x = node.args[0]
        if self._upstream(x)[1]:
            self.input_layers.add(index)
        self.layers.append(info)
        self.sources.append(src)
        self.layer_nodes[node] = index
        return ChannelSources.layer_output(index, info.out_channels)

    def _add(self, node: fx.Node) -> ChannelSources | None:
        operands = residual_operands(node)
        if operands is not None:
            a, b = (self._arg(x) for x in operands)
            if a is not None and b is not None and a.size == b.size:
                return a.union(b)
        return self._opaque_out(node)

    def _cat(self, node: fx.Node) -> ChannelSources | None:
        tensors = concatenated(node)
        if tensors is None:
            return self._opaque_out(node)
        parts = [self._arg(t) for t in tensors]
        if all(p is not None for p in parts):
            return ChannelSources.concat([p for p in parts if p is not None])
        return self._opaque_out(node)
