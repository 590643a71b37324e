"""Channel wiring: where each tensor's channels come from, and which survive a pruning decision.

A ``ChannelSources`` says, for every channel position of one tensor, which output channels of
which compressible layers feed it, and whether something that is never pruned feeds it too. The
graph builder (``jpq_env.core.graph.trace``) combines them op by op with the rules below
(``ChannelSources.union``, ``concat``, ``flatten``), and ``LayerGraph.liveness`` turns per-layer
keep decisions into a ``Liveness``: the kernels and channels that effectively survive.

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

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from jpq_env.core.graph.layer_graph import LayerInfo

__all__ = ["BoolArray", "ChannelSources", "Liveness"]

BoolArray = np.ndarray
"""A numpy array of bools: one flag per kernel or channel position."""


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
        # Several producers: where each one's channels lie among all their kernels concatenated
        # (set at the first ``alive``, which knows the producers' kernel counts).
        self._gather: tuple[int, np.ndarray, np.ndarray] | None
        object.__setattr__(self, "_gather", None)

    @classmethod
    def opaque(cls, n: int) -> ChannelSources:
        """``n`` positions fed only by what is never pruned (always alive)."""
        return cls(np.ones(n, dtype=bool))

    @classmethod
    def layer_output(cls, layer: int, n: int) -> ChannelSources:
        """The ``n`` output channels of layer ``layer``, position c fed by its kernel c."""
        arange = np.arange(n)
        return cls(np.zeros(n, dtype=bool), ((layer, arange, arange),))

    @property
    def size(self) -> int:
        """Number of channel positions."""
        return int(self.external.shape[0])

    def constants_alive(self) -> ChannelSources:
        """These sources after an op that maps a constant zero channel to a non-zero one.

        Positions nothing feeds (the zeros ``F.pad`` adds) are dead; a BatchNorm turns them into
        ``beta - gamma * mean / std``, a constant that is not zero: alive from there on.
        """
        covered = np.zeros(self.size, dtype=bool)
        for _, positions, _ in self.producers:
            covered[positions] = True
        dead = ~covered & ~self.external
        if not dead.any():
            return self
        return ChannelSources(self.external | dead, self.producers)

    def union(self, other: ChannelSources) -> ChannelSources:
        """A residual add: each position is fed by what feeds it in either operand."""
        return ChannelSources(self.external | other.external, self.producers + other.producers)

    @staticmethod
    def concat(parts: Sequence[ChannelSources]) -> ChannelSources:
        """A concatenation on the channel dimension: the parts' positions one after the other."""
        offset, producers = 0, []
        for p in parts:
            producers += [(layer, pos + offset, ch) for layer, pos, ch in p.producers]
            offset += p.size
        return ChannelSources(np.concatenate([p.external for p in parts]), tuple(producers))

    def flatten(self, spatial: int) -> ChannelSources:
        """Channel c of a (N, C, H, W) tensor becomes features c*H*W ... (c+1)*H*W - 1.

        Args:
            spatial: Positions per channel after the flatten (H * W).
        """
        grid = np.arange(spatial)
        producers = tuple(
            (layer, (pos[:, None] * spatial + grid).ravel(), np.repeat(ch, spatial))
            for layer, pos, ch in self.producers
        )
        return ChannelSources(np.repeat(self.external, spatial), producers)

    def alive(self, alive_out: Sequence[BoolArray]) -> BoolArray:
        """Which positions carry a live channel, given every producer's live output kernels."""
        direct: int | None = self._direct  # type: ignore[attr-defined]
        if direct is not None:
            return alive_out[direct]
        live = self.external.copy()
        if not self.producers:
            return live
        if len(self.producers) == 1:
            layer, pos, ch = self.producers[0]
            live[pos[alive_out[layer][ch]]] = True
            return live
        # Several producers (a residual sum): all their kernels at once, one gather.
        kernels = np.concatenate([alive_out[layer] for layer, _, _ in self.producers])
        gather = self._gather
        if gather is None or gather[0] != kernels.size:
            sizes = [len(alive_out[layer]) for layer, _, _ in self.producers]
            starts = np.cumsum([0, *sizes[:-1]])
            index = np.concatenate(
                [ch + s for (_, _, ch), s in zip(self.producers, starts, strict=True)]
            )
            positions = np.concatenate([pos for _, pos, _ in self.producers])
            gather = (kernels.size, index, positions)
            object.__setattr__(self, "_gather", gather)
        live[gather[2][kernels[gather[1]]]] = True
        return live


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

    @cached_property
    def flat(self) -> tuple[BoolArray, BoolArray]:
        """Every layer's live output kernels, and live input channels, concatenated."""
        return np.concatenate(self.alive_out), np.concatenate(self.alive_in)

    def inputs_per_kernel(self, layer: LayerInfo) -> np.ndarray | int:
        """Live input channels each output kernel of ``layer`` reads (one count if ungrouped)."""
        live_in = self.alive_in[layer.index]
        if layer.groups == 1:
            return int(np.count_nonzero(live_in))
        per_group = live_in.reshape(layer.groups, -1).sum(axis=1)
        return np.repeat(per_group, layer.out_per_group).astype(np.int64)
