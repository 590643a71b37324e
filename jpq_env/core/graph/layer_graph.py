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

Where the rest lives: the tracing, the shape and MAC counts and the walk that builds the wiring in
``jpq_env.core.graph.trace`` (with why it is torch.fx); the wiring itself and its rules in
``jpq_env.core.graph.channels``; what each op does to channels in ``jpq_env.core.graph.ops``.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import nn

from jpq_env.core.graph.channels import BoolArray, ChannelSources, Liveness
from jpq_env.core.graph.checks import check_model
from jpq_env.core.graph.ops import COMPRESSIBLE
from jpq_env.errors import GraphError, UncompressedLayersWarning

__all__ = ["LayerGraph", "LayerInfo", "UncompressedLayer"]


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
        untracked: Ops (``"name (kind)"``) that read channels of a prunable layer and that the
            graph cannot see through: after them every channel counts as alive. That is exact for
            an op that maps a zero channel to a non-zero one (``sigmoid``) and an over-count of
            BOPs and size for one that keeps it zero (a per-channel gate ``x * s``, a channel
            shuffle): ``untracked_summary`` says so when the graph is built.
    """

    layers: tuple[LayerInfo, ...]
    sources: tuple[ChannelSources, ...]
    bn_sources: dict[str, ChannelSources]
    output_layers: frozenset[int]
    input_layers: frozenset[int]
    fingerprint: str = field(default="")
    uncompressed: tuple[UncompressedLayer, ...] = ()
    untracked: tuple[str, ...] = ()
    _recent_liveness: OrderedDict[bytes, Liveness] = field(
        default_factory=OrderedDict, init=False, repr=False, compare=False
    )
    _recent_parts: dict[bytes, list[bytes]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

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
    def kernel_counts(self) -> list[int]:
        """Output kernels of each layer, in execution order."""
        return [x.out_channels for x in self.layers]

    @cached_property
    def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Offsets for sums over every layer's kernels and input channels at once.

        With each layer's output kernels (and input channels) concatenated in execution order:
        the position of each layer's first kernel, of each convolution group's first input
        channel (one group per ungrouped layer), and the kernels of each group. The cost model
        counts all layers' connections with a few array operations instead of a loop.
        """
        kernels = np.cumsum([0] + [x.out_channels for x in self.layers[:-1]])
        inputs = np.cumsum([0] + [x.in_channels for x in self.layers[:-1]])
        group_starts = np.concatenate(
            [
                start + np.arange(x.groups) * x.in_per_group
                for start, x in zip(inputs, self.layers, strict=True)
            ]
        )
        per_group = np.concatenate([np.full(x.groups, x.out_per_group) for x in self.layers])
        return kernels.astype(np.int64), group_starts.astype(np.int64), per_group.astype(np.int64)

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
        weights = sum(x.weight_params for x in self.uncompressed) / max(self.weight_params, 1)
        uncounted = [x.name for x in self.uncompressed if x.macs is None]
        if uncounted:  # a share of an incomplete total would be wrong: say what is unknown
            share = (
                f"holding an unknown share of its MACs (those of "
                f"{', '.join(repr(n) for n in uncounted)} cannot be counted: every BOPs figure "
                f"leaves them out) and {weights:.1%} of its weights"
            )
        else:
            macs = self.uncompressed_macs / max(self.total_macs, 1)
            share = f"holding {macs:.1%} of its MACs and {weights:.1%} of its weights"
        n = len(self.uncompressed)
        return (
            f"jpq-env does not compress {n} layer{'s' if n > 1 else ''} of this model: {names}, "
            f"{share}. They stay "
            "FP32 and are counted at 32-bit weights and inputs in BOPs, size and the FP32 "
            "reference; channels through them count as alive"
        )

    def untracked_summary(self) -> str | None:
        """One sentence naming the ops after which pruned channels count as alive; None if none."""
        if not self.untracked:
            return None
        shown = ", ".join(f"'{x}'" for x in self.untracked[:6])
        more = len(self.untracked) - 6
        if more > 0:
            shown += f" and {more} more"
        return (
            f"channels of pruned kernels count as alive after {shown}: the layer graph cannot see "
            "through these ops, so a pruned kernel there still counts in the next layers' inputs. "
            "Exact where an op turns a zero channel into a non-zero one (sigmoid); an over-count "
            "of BOPs and size where it keeps zeros (a per-channel gate x * s, a channel shuffle)"
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
            The kernels and channels that effectively survive (see ``jpq_env.core.graph.channels``),
            as read-only arrays: the last few results are kept and handed out again.
        """
        masks = [np.array(k, dtype=bool) for k in kept]
        if [len(m) for m in masks] != self.kernel_counts:  # (the cache's keys rely on it)
            raise ValueError(
                f"keep masks have {[len(m) for m in masks]} kernels per layer, the graph "
                f"{self.kernel_counts}"
            )
        parts = [m.tobytes() for m in masks]  # one byte a kernel: each layer's length is fixed
        key = b"".join(parts)
        # The same decisions are asked for several times per episode (the budget checks, the
        # final costs, the compressed view): each distinct one is propagated once, and only from
        # its first layer that differs from a recent one (a budget check changes one layer).
        live = self._recent_liveness.get(key)
        if live is None:
            start, base = 0, None
            for other, other_live in self._recent_liveness.items():
                same = _common_prefix(self._recent_parts[other], parts)
                if same > start:
                    start, base = same, other_live
            live = self._propagate(masks, start, base)
            self._recent_liveness[key] = live
            self._recent_parts[key] = parts
            while len(self._recent_liveness) > _LIVENESS_KEPT:
                old, _ = self._recent_liveness.popitem(last=False)
                del self._recent_parts[old]
        self._recent_liveness.move_to_end(key)
        if batchnorms and len(live.bn_alive) < len(self.bn_sources):
            bn_alive = {name: src.alive(live.alive_out) for name, src in self.bn_sources.items()}
            for mask in bn_alive.values():
                mask.flags.writeable = False
            live = Liveness(live.alive_out, live.alive_in, bn_alive)
            self._recent_liveness[key] = live
        return live

    def _propagate(
        self, masks: list[BoolArray], start: int = 0, base: Liveness | None = None
    ) -> Liveness:
        """``liveness`` without BatchNorms, computed (arrays read-only: they are shared).

        With ``base``, the liveness of masks equal to ``masks`` on the layers before ``start``:
        those layers' arrays are taken from it (a layer depends only on the layers before it).
        """
        alive_out: list[BoolArray] = list(base.alive_out[:start]) if base else []
        alive_in: list[BoolArray] = list(base.alive_in[:start]) if base else []
        for layer, src in zip(
            self.layers[len(alive_out) :], self.sources[len(alive_out) :], strict=True
        ):
            live_in = src.alive(alive_out)
            keep = masks[layer.index]
            if layer.groups == 1:
                out = keep if live_in.any() else np.zeros_like(keep)
            else:
                group_live = live_in.reshape(layer.groups, -1).any(axis=1)
                out = keep & np.repeat(group_live, layer.out_per_group)
            out.flags.writeable = False
            live_in.flags.writeable = False
            alive_out.append(out)
            alive_in.append(live_in)
        return Liveness(tuple(alive_out), tuple(alive_in), {})

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
        if isinstance(model, COMPRESSIBLE):
            raise GraphError(
                f"got a bare {type(model).__name__}: wrap it, e.g. nn.Sequential(layer), so that "
                "it has a name inside a model"
            )
        check_model(model)
        # trace builds LayerGraph objects: imported here, not at the top, to avoid an import cycle
        from jpq_env.core.graph.trace import build_layer_graph

        graph = build_layer_graph(model, example_input)
        for summary in (graph.uncompressed_summary(), graph.untracked_summary()):
            if summary is not None and summary not in _TOLD:
                # Once per process and model, however many times its graph is built (make_task,
                # the env, the evaluator ...): Python's registry is reset by every catch_warnings.
                _TOLD.add(summary)
                warnings.warn(summary, UncompressedLayersWarning, stacklevel=2)
        return graph


_TOLD: set[str] = set()  # uncompressed-layer warnings already given in this process
_LIVENESS_KEPT = 8  # distinct keep decisions whose liveness a graph keeps (an episode asks 2-3)


def _common_prefix(a: list[bytes], b: list[bytes]) -> int:
    """How many leading entries ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
