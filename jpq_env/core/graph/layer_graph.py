"""The layer graph: a network's compressible layers in execution order and their channel wiring.

``LayerGraph.from_module(model, example_input)`` lists every ``nn.Conv2d`` (plain, grouped and
depthwise) and ``nn.Linear`` the forward pass calls, with the static features a compression agent
observes (channels, kernel, stride, groups, feature-map sizes, parameters, MACs), and records for
each layer *where its input channels come from*: which earlier layer's output channel reaches which
input position, through BatchNorm, activations, pooling, flatten, residual adds and concatenation.
That wiring is what lets pruning an output kernel also remove the matching input channels of every
consumer (``LayerGraph.liveness``), in the cost model and in the compressed view alike.

Everything else in the network that holds parameters or does multiply-accumulates (a
``ConvTranspose2d``, a ``Conv1d`` or ``Conv3d``, an ``nn.LSTM``, a ``LayerNorm``, a custom
module's functional ``F.conv2d(x, self.weight)``, a ``torch.matmul``) is recorded in
``LayerGraph.uncompressed`` with its parameters and its MACs, counted per node by
``torch.utils.flop_counter`` on the traced example input. The cost model counts those layers at
full precision, and building the graph warns once (``UncompressedLayersWarning``) naming them and
their share of the MACs and weights: a layer jpq-env does not compress is never silently left out.

A model is refused (``GraphError``, before anything is compressed) where compressing it would give
a wrong result without a word: a compressible module called twice, a weight shared between modules,
a weight recomputed by a parametrization, NaN or inf in a parameter or buffer
(``jpq_env.core.graph.checks``).

Why torch.fx and not torch-pruning's DependencyGraph: fx ships with torch (no extra dependency in
the core), gives an exact op-level graph in execution order (adds, concats and flattens are explicit
nodes) on which ``ShapeProp`` records every tensor's shape from one example input, and it fails
loudly on data-dependent control flow instead of silently mis-tracing. torch-pruning builds its own
graph from autograd hooks and is the better tool for *physically* removing channels; it stays an
optional extra for that purpose.

Rules of the channel wiring (applied by ``liveness``):

- an input channel of a layer is alive if any source feeding it is alive. A residual add is the
  union of its operands: a channel after an add is dead only if it is dead in *every* operand
  (pruning channel c of a block's last conv while the shortcut still carries c leaves c alive
  downstream, and the consumers keep paying for it); channels that come from the network input or
  from an op the graph does not understand (an option-A shortcut's zero padding, say) are always
  alive (a safe over-count, never a wrong mask). A layer the graph does not compress is such an
  op: the channels after it are alive whatever was pruned before it, and pruning the kernels that
  feed it does not make it any cheaper (its cost is fixed);
- an output kernel is alive if the decision keeps it *and* at least one of its input channels is
  alive: a kernel that only sees dead inputs outputs its bias alone, so it is removed too (this is
  how a depthwise conv's channels follow its input);
- a BatchNorm channel is alive if its source is; the compressed view zeroes dead BN channels so a
  masked channel is exactly zero downstream, as if it had been removed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import operator
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

from jpq_env.core.graph.checks import GraphError, check_model, check_written_modules
from jpq_env.errors import UncompressedLayersWarning

__all__ = [
    "ChannelSources",
    "GraphError",
    "LayerGraph",
    "LayerInfo",
    "Liveness",
    "UncompressedLayer",
    "UncompressedLayersWarning",
]

BoolArray = np.ndarray


@dataclass(frozen=True)
class LayerInfo:
    """Static features of one compressible layer (all counts per sample).

    Attributes:
        index: Position in execution order.
        name: Qualified module name inside the model (``model.get_submodule(name)``).
        kind: ``"conv"`` or ``"linear"``.
        in_channels: Input channels (conv) or input features (linear).
        out_channels: Output kernels: conv filters or linear output features.
        kernel: Kernel height and width (1, 1 for linear layers).
        stride: Stride (1, 1 for linear layers).
        groups: Convolution groups (1 for linear layers).
        in_hw: Input feature-map height and width ((1, 1) for linear layers).
        out_hw: Output feature-map height and width ((1, 1) for linear layers).
        params: Weight and bias elements.
        weight_params: Weight elements only (what the size model counts).
        macs: Multiply-accumulates of the dense layer.
    """

    index: int
    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    params: int
    weight_params: int
    macs: int

    @property
    def depthwise(self) -> bool:
        """True for a depthwise conv: one input channel per group."""
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels

    @property
    def in_per_group(self) -> int:
        """Input channels each output kernel reads."""
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        """Output kernels per group."""
        return self.out_channels // self.groups

    @property
    def macs_per_connection(self) -> int:
        """MACs contributed by one (output kernel, input channel) pair: kh * kw * H_out * W_out."""
        return self.kernel[0] * self.kernel[1] * self.out_hw[0] * self.out_hw[1]


@dataclass(frozen=True)
class UncompressedLayer:
    """A module (or a module's functional code) that holds parameters or MACs but is not compressed.

    Its weights stay FP32 in the compressed model and the cost model counts it as it runs there:
    MACs x 32-bit weights x 32-bit inputs in BOPs, its weights at 32 bits in the size, in every
    policy and in the FP32 reference alike.

    Attributes:
        name: Qualified module name (``model.get_submodule(name)``), or for code in the model's
            own ``forward`` the name of the fx node (``matmul``, say).
        kind: Module class (``ConvTranspose2d``) or function name (``matmul``).
        params: Parameter elements it holds (biases included).
        weight_params: Parameter elements other than biases: what the size model counts.
        macs: Multiply-accumulates per sample, as ``torch.utils.flop_counter`` counts them on the
            traced input; None where they cannot be counted (``nn.LSTM``, ``nn.MultiheadAttention``
            and ``nn.Bilinear`` run kernels the counter does not see): then they are in no count.
    """

    name: str
    kind: str
    params: int
    weight_params: int
    macs: int | None


@dataclass(frozen=True)
class ChannelSources:
    """Where the channels of one tensor come from.

    Attributes:
        external: Per position, True if it is fed by something that is never pruned (the network
            input, a constant, an op the graph cannot see through).
        producers: ``(layer_index, positions, channels)`` triples: position ``positions[k]`` is fed
            by output channel ``channels[k]`` of that layer.
    """

    external: BoolArray
    producers: tuple[tuple[int, np.ndarray, np.ndarray], ...] = ()

    def __post_init__(self) -> None:
        # The common case, one producer feeding position c with its channel c, is a plain copy.
        direct = None
        if len(self.producers) == 1 and not self.external.any():
            layer, pos, ch = self.producers[0]
            n = self.external.shape[0]
            if np.array_equal(pos, np.arange(n)) and np.array_equal(ch, np.arange(n)):
                direct = layer
        object.__setattr__(self, "_direct", direct)

    @property
    def size(self) -> int:
        """Number of channel positions."""
        return int(self.external.shape[0])

    def alive(self, alive_out: Sequence[BoolArray]) -> BoolArray:
        """Which positions carry a live channel, given every producer's live output kernels."""
        direct: int | None = self._direct  # type: ignore[attr-defined]
        if direct is not None:
            return alive_out[direct]
        live = self.external.copy()
        for layer, pos, ch in self.producers:
            live[pos[alive_out[layer][ch]]] = True
        return live


def _opaque(n: int) -> ChannelSources:
    return ChannelSources(np.ones(n, dtype=bool))


def _union(a: ChannelSources, b: ChannelSources) -> ChannelSources:
    return ChannelSources(a.external | b.external, a.producers + b.producers)


def _concat(parts: Sequence[ChannelSources]) -> ChannelSources:
    offset, producers = 0, []
    for p in parts:
        producers += [(layer, pos + offset, ch) for layer, pos, ch in p.producers]
        offset += p.size
    return ChannelSources(np.concatenate([p.external for p in parts]), tuple(producers))


def _flatten(src: ChannelSources, spatial: int) -> ChannelSources:
    """Channel c of a (N, C, H, W) tensor becomes features c*H*W ... (c+1)*H*W - 1."""
    grid = np.arange(spatial)
    producers = tuple(
        (layer, (pos[:, None] * spatial + grid).ravel(), np.repeat(ch, spatial))
        for layer, pos, ch in src.producers
    )
    return ChannelSources(np.repeat(src.external, spatial), producers)


@dataclass(frozen=True)
class Liveness:
    """Which kernels and channels survive a pruning decision, after propagation.

    Attributes:
        alive_out: Per layer, live output kernels.
        alive_in: Per layer, live input channels (or features).
        bn_alive: Per BatchNorm module name, its live channels.
    """

    alive_out: tuple[BoolArray, ...]
    alive_in: tuple[BoolArray, ...]
    bn_alive: dict[str, BoolArray]

    def inputs_per_kernel(self, layer: LayerInfo) -> np.ndarray | int:
        """Live input channels each output kernel of ``layer`` reads (one count if ungrouped)."""
        live_in = self.alive_in[layer.index]
        if layer.groups == 1:
            return int(np.count_nonzero(live_in))
        per_group = live_in.reshape(layer.groups, -1).sum(axis=1)
        return np.repeat(per_group, layer.out_per_group).astype(np.int64)


# Ops that map a zero channel to a zero channel and keep channel positions (f(0) == 0).
_KEEP_MODULES: tuple[type[nn.Module], ...] = (
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
)
_KEEP_FUNCTIONS: set[Any] = {
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
}
_KEEP_METHODS = {"relu", "relu_", "tanh", "contiguous", "clone", "detach"}
_ADD = {operator.add, operator.iadd, torch.add}
_NO_MAC_FUNCTIONS: set[Any] = {
    *_KEEP_FUNCTIONS,
    *_ADD,
    operator.getitem,
    operator.mul,
    getattr,
    torch.flatten,
    torch.cat,
    F.pad,
}
_NO_MAC_METHODS = {*_KEEP_METHODS, "add", "add_", "flatten", "view", "reshape", "mean", "size"}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
# Parameters of these belong to the compressible layers' channels (the compressed view masks BN
# channels of pruned kernels), so they are not uncompressed layers.
_PART_OF_LAYERS = (*_BN, nn.PReLU)
# Modules whose computation has no multiply-accumulates: a zero count from the flop counter is
# exact for them. For any other module with parameters, zero means "not counted" (None).
_NO_MACS = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
    nn.PReLU,
)


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


def _trace(model: nn.Module) -> fx.GraphModule:
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
        if not self._may_carry_macs(n):
            return super().run_node(n)
        with FlopCounterMode(display=False) as counter:
            result = super().run_node(n)
        n.meta["macs"] = counter.get_total_flops() // 2  # the counter counts 2 FLOPs per MAC
        return result

    def _may_carry_macs(self, n: fx.Node) -> bool:
        if n.op == "call_module":
            module = self.module.get_submodule(str(n.target))
            return not isinstance(module, (nn.Conv2d, nn.Linear, nn.Flatten, *_BN, *_KEEP_MODULES))
        if n.op == "call_function":
            return n.target not in _NO_MAC_FUNCTIONS
        if n.op == "call_method":
            return str(n.target) not in _NO_MAC_METHODS
        return False


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


@dataclass
class LayerGraph:
    """Compressible layers of a model in execution order, with their channel wiring.

    Attributes:
        layers: The compressible layers, in execution order.
        sources: Per layer, where its input channels come from.
        bn_sources: Per BatchNorm module (by name), where its channels come from.
        output_layers: Layers whose output kernels reach the network output; they cannot be
            pruned (pruning them would delete a logit).
        input_layers: Layers that read the network input directly.
        fingerprint: A string identifying the architecture (names and shapes of the layers); a
            policy records it so that it is never applied to another model.
        uncompressed: Modules and ops with parameters or MACs that are not compressed, in
            execution order (counted at FP32 by the cost model).
    """

    layers: tuple[LayerInfo, ...]
    sources: tuple[ChannelSources, ...]
    bn_sources: dict[str, ChannelSources]
    output_layers: frozenset[int]
    input_layers: frozenset[int]
    fingerprint: str = field(default="")
    uncompressed: tuple[UncompressedLayer, ...] = ()

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> LayerInfo:
        return self.layers[index]

    @property
    def names(self) -> tuple[str, ...]:
        """Module names of the compressible layers, in execution order."""
        return tuple(layer.name for layer in self.layers)

    @cached_property
    def connection_macs(self) -> np.ndarray:
        """Per layer, MACs of one (kernel, input channel) pair: kh x kw x H_out x W_out."""
        return np.array([x.macs_per_connection for x in self.layers], dtype=np.int64)

    @cached_property
    def kernel_areas(self) -> np.ndarray:
        """Per layer, weights of one (kernel, input channel) pair: kh x kw."""
        return np.array([x.kernel[0] * x.kernel[1] for x in self.layers], dtype=np.int64)

    @property
    def compressible_macs(self) -> int:
        """MACs of the dense network's compressible layers, per sample."""
        return sum(layer.macs for layer in self.layers)

    @property
    def uncompressed_macs(self) -> int:
        """MACs of the layers the graph does not compress (those it can count), per sample."""
        return sum(x.macs or 0 for x in self.uncompressed)

    @property
    def total_macs(self) -> int:
        """MACs of the dense network, per sample: compressible and uncompressed layers."""
        return self.compressible_macs + self.uncompressed_macs

    @property
    def weight_params(self) -> int:
        """Weight elements of the whole network that the size model counts (biases excluded)."""
        return sum(x.weight_params for x in self.layers) + sum(
            x.weight_params for x in self.uncompressed
        )

    def uncompressed_summary(self) -> str | None:
        """One sentence naming the uncompressed layers and their shares; None if there are none."""
        if not self.uncompressed:
            return None
        shown = self.uncompressed[:6]
        names = ", ".join(f"'{x.name}' ({x.kind})" for x in shown)
        if len(self.uncompressed) > len(shown):
            names += f" and {len(self.uncompressed) - len(shown)} more"
        macs = self.uncompressed_macs / max(self.total_macs, 1)
        weights = sum(x.weight_params for x in self.uncompressed) / max(self.weight_params, 1)
        uncounted = [x.name for x in self.uncompressed if x.macs is None]
        note = (
            f"; the MACs of {', '.join(repr(n) for n in uncounted)} cannot be counted and are in "
            "no count"
            if uncounted
            else ""
        )
        n = len(self.uncompressed)
        return (
            f"jpq-env does not compress {n} layer{'s' if n > 1 else ''} of this model: {names}, "
            f"holding {macs:.1%} of its MACs and {weights:.1%} of its weights{note}. They stay "
            "FP32 and are counted at 32-bit weights and inputs in BOPs, size and the FP32 "
            "reference; channels through them count as alive"
        )

    def consumers(self, index: int) -> list[int]:
        """Layers that read at least one output channel of layer ``index``."""
        return [
            i
            for i, src in enumerate(self.sources)
            if any(layer == index for layer, _, _ in src.producers)
        ]

    def liveness(self, kept: Sequence[BoolArray], batchnorms: bool = True) -> Liveness:
        """Propagate per-layer keep decisions through the channel wiring.

        Args:
            kept: Per layer, a boolean array over its output kernels: False where the policy gives
                the kernel 0 bits.
            batchnorms: Also compute the live channels of every BatchNorm (the cost model does
                not need them).

        Returns:
            The kernels and channels that effectively survive (see the module docstring).
        """
        alive_out: list[BoolArray] = []
        alive_in: list[BoolArray] = []
        for layer, src in zip(self.layers, self.sources, strict=True):
            live_in = src.alive(alive_out)
            keep = np.asarray(kept[layer.index], dtype=bool)
            if layer.groups == 1:
                alive_out.append(keep if live_in.any() else np.zeros_like(keep))
            else:
                group_live = live_in.reshape(layer.groups, -1).any(axis=1)
                alive_out.append(keep & np.repeat(group_live, layer.out_per_group))
            alive_in.append(live_in)
        bn_alive = (
            {name: src.alive(alive_out) for name, src in self.bn_sources.items()}
            if batchnorms
            else {}
        )
        return Liveness(tuple(alive_out), tuple(alive_in), bn_alive)

    @classmethod
    def from_module(cls, model: nn.Module, example_input: torch.Tensor) -> LayerGraph:
        """Trace ``model`` on ``example_input`` and build its layer graph.

        The model is traced and run on a private deep copy in eval mode: the caller's module, its
        weights, buffers and train/eval flags are left exactly as they were.

        Layers the graph does not compress are listed in ``uncompressed`` and named by an
        ``UncompressedLayersWarning`` (shown once per model and process).

        Raises:
            GraphError: If the model cannot be traced, calls a compressible module more than once,
                has no compressible layer, or cannot be compressed correctly: a parameter or
                buffer holding NaN or inf, a compressible layer's (or its BatchNorm's) tensor
                shared with another module or read in ``forward`` besides the layer's own call, a
                weight recomputed by a parametrization or a weight-norm hook.
        """
        if not isinstance(model, nn.Module):
            raise GraphError(f"expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(example_input, torch.Tensor):
            raise GraphError(
                f"example_input must be a torch.Tensor, got {type(example_input).__name__}"
            )
        if isinstance(model, (nn.Conv2d, nn.Linear)):
            raise GraphError(
                f"got a bare {type(model).__name__}: wrap it, e.g. nn.Sequential(layer), so that "
                "it has a name inside a model"
            )
        check_model(model)
        private = copy.deepcopy(model).eval()
        gm = _trace(private)
        try:
            # ShapeProp prints the traceback itself before raising: keep stderr for our message.
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                _ShapesAndMacs(gm).propagate(example_input.detach().to(_device_of(private)))
        except Exception as exc:
            raise GraphError(
                f"the model failed on the example input of shape {tuple(example_input.shape)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        batch = int(example_input.shape[0]) if example_input.dim() else 1
        graph = _Builder(gm, max(batch, 1)).build()
        check_written_modules(private, gm, graph.names, tuple(graph.bn_sources))
        summary = graph.uncompressed_summary()
        if summary is not None and summary not in _TOLD:
            # Once per process and model, however many times its graph is built (make_task, the
            # env, the evaluator ...): Python's own registry is reset by every catch_warnings.
            _TOLD.add(summary)
            warnings.warn(summary, UncompressedLayersWarning, stacklevel=2)
        return graph


_TOLD: set[str] = set()  # uncompressed-layer warnings already given in this process


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
            if isinstance(module, _PART_OF_LAYERS):
                return
            for pname, p in module.named_parameters():
                params[id(p)] = (pname, int(p.numel()))
            name, kind = str(node.target), type(module).__name__
            if not params and not macs:
                return
            if params and not macs and not isinstance(module, _NO_MACS):
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

    def _opaque_out(self, node: fx.Node) -> ChannelSources | None:
        shape = _shape(node)
        return _opaque(shape[1]) if shape is not None and len(shape) >= 2 else None

    def _visit(self, node: fx.Node) -> ChannelSources | None:
        if node.op == "placeholder":
            self.placeholders.add(node)
            return self._opaque_out(node)
        if node.op == "output":
            self._mark_outputs(node.args)
            return None
        if node.op == "call_module":
            return self._module(node)
        if node.op == "call_function":
            return self._function(node)
        if node.op == "call_method":
            return self._method(node)
        return self._opaque_out(node)

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

    def _module(self, node: fx.Node) -> ChannelSources | None:
        name = str(node.target)
        module = self.gm.get_submodule(name)
        x = node.args[0] if node.args else None
        src = self._arg(x)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            in_shape = _shape(x) if isinstance(x, fx.Node) else None
            out_shape = _shape(node)
            if isinstance(module, nn.Linear) and in_shape is not None and len(in_shape) != 2:
                raise GraphError(
                    f"module '{name}' is an nn.Linear applied to a {len(in_shape)}-D input "
                    f"{in_shape}: only (batch, features) inputs are supported; flatten first"
                )
            if in_shape is not None and out_shape is not None:
                return self._layer(node, name, module, in_shape, out_shape, src)
            return self._opaque_out(node)
        if isinstance(module, _BN):
            if src is not None:
                self.bn_sources[name] = src
            return src
        if isinstance(module, _KEEP_MODULES):
            return src
        if isinstance(module, nn.Flatten):
            return self._flatten(node, x, src, module.start_dim, module.end_dim)
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
            src = _opaque(info.in_channels)
        x = node.args[0]
        if self._upstream(x)[1]:
            self.input_layers.add(index)
        self.layers.append(info)
        self.sources.append(src)
        self.layer_nodes[node] = index
        arange = np.arange(info.out_channels)
        return ChannelSources(np.zeros(info.out_channels, dtype=bool), ((index, arange, arange),))

    def _flatten(
        self,
        node: fx.Node,
        x: Any,
        src: ChannelSources | None,
        start_dim: int = 1,
        end_dim: int = -1,
    ) -> ChannelSources | None:
        in_shape = _shape(x) if isinstance(x, fx.Node) else None
        out_shape = _shape(node)
        if (
            src is None
            or in_shape is None
            or out_shape is None
            or len(out_shape) != 2
            or start_dim != 1
            or end_dim not in (-1, len(in_shape) - 1)
        ):
            return self._opaque_out(node)
        spatial = int(np.prod(in_shape[2:], dtype=np.int64)) if len(in_shape) > 2 else 1
        return _flatten(src, spatial)

    def _flatten_call(self, node: fx.Node) -> ChannelSources | None:
        """``torch.flatten(x, start, end)`` or ``x.flatten(start, end)``."""
        args = node.args
        start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
        end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
        if not isinstance(start, int) or not isinstance(end, int):
            return self._opaque_out(node)
        return self._flatten(node, args[0], self._arg(args[0]), start, end)

    def _function(self, node: fx.Node) -> ChannelSources | None:
        fn = node.target
        args = node.args
        if fn in _KEEP_FUNCTIONS:
            return self._arg(args[0]) if args else None
        if fn in _ADD:
            return self._add(node, args)
        if fn in (operator.mul, torch.mul) and len(args) == 2:
            # Scaling by a plain number keeps zeros zero; a tensor product is left opaque.
            a, b = args
            if isinstance(b, (int, float)):
                return self._arg(a)
            if isinstance(a, (int, float)):
                return self._arg(b)
            return self._opaque_out(node)
        if fn is torch.flatten:
            return self._flatten_call(node)
        if fn is torch.cat:
            return self._cat(node)
        return self._opaque_out(node)

    def _add(self, node: fx.Node, args: tuple[Any, ...]) -> ChannelSources | None:
        if len(args) == 2 and all(isinstance(a, fx.Node) for a in args):
            a, b = (self._arg(x) for x in args)
            if a is not None and b is not None and a.size == b.size:
                out_shape = _shape(node)
                same = all(_shape(x) == out_shape for x in args if isinstance(x, fx.Node))
                if same:
                    return _union(a, b)
        return self._opaque_out(node)

    def _cat(self, node: fx.Node) -> ChannelSources | None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out_shape = _shape(node)
        if not isinstance(tensors, (list, tuple)) or out_shape is None:
            return self._opaque_out(node)
        ndim = len(out_shape)
        parts = [self._arg(t) for t in tensors]
        if isinstance(dim, int) and dim % ndim == 1 and all(p is not None for p in parts):
            return _concat([p for p in parts if p is not None])
        return self._opaque_out(node)

    def _method(self, node: fx.Node) -> ChannelSources | None:
        method = str(node.target)
        args = node.args
        if method in _KEEP_METHODS:
            return self._arg(args[0])
        if method in ("add", "add_"):
            return self._add(node, args)
        if method == "flatten":
            return self._flatten_call(node)
        if method in ("view", "reshape"):
            # x.view(x.size(0), -1): a flatten of everything after the batch dimension.
            in_shape = _shape(args[0]) if isinstance(args[0], fx.Node) else None
            out_shape = _shape(node)
            if in_shape and out_shape and len(out_shape) == 2 and out_shape[0] == in_shape[0]:
                return self._flatten(node, args[0], self._arg(args[0]))
            return self._opaque_out(node)
        if method == "mean":
            # Global average pooling written as x.mean((2, 3)) keeps channel positions.
            out_shape = _shape(node)
            in_shape = _shape(args[0]) if isinstance(args[0], fx.Node) else None
            if in_shape and out_shape and len(out_shape) >= 2 and out_shape[:2] == in_shape[:2]:
                return self._arg(args[0])
        return self._opaque_out(node)
