"""A forward pass that can stop at a compressible layer and resume there: prefix reuse.

Two policies that agree on every layer before layer ``k`` (weights, masks and input activation
widths) compute exactly the same tensors up to the moment layer ``k`` is called: the compressed
view of a layer depends only on its own decision and on what flows into it. A local search that
changes one layer at a time (the two-level controller's refinement, greedy's probes) can therefore
skip the unchanged prefix and start from the activations that the earlier policy left there.

``SegmentedForward`` runs the model's torch.fx graph node by node, which is what makes stopping and
resuming possible; at chosen *checkpoints* (the positions just before a compressible layer is
called) it keeps references to every value that is still needed later (the live set: the main path,
a residual shortcut). Resuming feeds those values back in and runs only the remaining nodes.
Because full passes run through the same executor, in the same batches, a resumed pass gives
bitwise the same result as a full one.

In-place operations would make a kept value change after it was kept. Modules with an ``inplace``
flag (``nn.ReLU(inplace=True)`` ...), functions called with ``inplace=True`` and augmented
assignments (``out += identity``) are switched to their out-of-place form on the working copy (the
same numbers); a graph with another in-place call (``x.add_(y)``) is run normally but cannot be
resumed (``resumable`` is False), nor can one that calls a module with buffers twice.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

__all__ = ["Checkpoint", "Prefix", "PrefixCache", "SegmentedForward", "State"]

State = dict[fx.Node, Any]


@dataclass(frozen=True)
class Checkpoint:
    """A place where a pass can stop and resume.

    Attributes:
        layer: The compressible layer called right after this point (its index in the graph).
        position: Index of that layer's call in the node list.
        live: Nodes computed before ``position`` and read at or after it.
        floats_per_sample: Float elements of the live set per sample (its memory cost).
        macs_before: MACs of the compressible layers before this point (what resuming saves).
    """

    layer: int
    position: int
    live: tuple[fx.Node, ...]
    floats_per_sample: int
    macs_before: int


_OUT_OF_PLACE = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


def _inplace_free(gm: fx.GraphModule) -> bool:
    """Switch in-place modules and functions to out-of-place; False if another one remains."""
    ok = True
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if getattr(module, "inplace", False) is True:
                module.inplace = False  # type: ignore[assignment]
        elif node.op == "call_function":
            if node.target in _OUT_OF_PLACE:  # ``out += identity`` (torchvision's ResNets)
                node.target = _OUT_OF_PLACE[node.target]
            if node.kwargs.get("inplace") is True:
                node.kwargs = {**node.kwargs, "inplace": False}
            elif getattr(node.target, "__name__", "").endswith("_"):
                ok = False
        elif node.op == "call_method" and str(node.target).endswith("_"):
            ok = False
    return ok


class SegmentedForward:
    """Runs ``module``'s fx graph, able to keep the live values at checkpoints and resume there.

    Args:
        module: The working copy to run (its submodules, hooks and weights are used as they are
            at each call; in-place flags are switched off on it).
        layer_names: The compressible layers in execution order (``LayerGraph.names``).
        example_input: One input batch, to size the live sets.
        layer_macs: MACs per sample of each compressible layer (``LayerInfo.macs``).

    Raises:
        torch.fx errors: If the module cannot be traced (``LayerGraph`` has traced it already,
            so this does not happen for a model the evaluator accepted).
    """

    def __init__(
        self,
        module: nn.Module,
        layer_names: Sequence[str],
        example_input: torch.Tensor,
        layer_macs: Sequence[int],
    ) -> None:
        gm = fx.symbolic_trace(module) if not isinstance(module, fx.GraphModule) else module
        self.gm = gm
        self.resumable = _inplace_free(gm)
        self.nodes: list[fx.Node] = list(gm.graph.nodes)
        index = {node: i for i, node in enumerate(self.nodes)}
        self._modules = dict(gm.named_modules())
        self._last_use = {node: index[node] for node in self.nodes}
        for i, node in enumerate(self.nodes):
            for arg in node.all_input_nodes:
                self._last_use[arg] = max(self._last_use[arg], i)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        self._input = placeholders[0] if placeholders else None
        self._defaults = {n: n.args[0] for n in placeholders[1:] if n.args}
        if len(self._defaults) != len(placeholders) - 1:
            self.resumable = False  # a forward argument beyond the input without a default
        calls = {
            str(n.target): i
            for i, n in reversed(list(enumerate(self.nodes)))
            if n.op == "call_module"
        }
        counts: dict[str, int] = {}
        for n in self.nodes:
            if n.op == "call_module":
                counts[str(n.target)] = counts.get(str(n.target), 0) + 1
        self.positions = [calls[name] for name in layer_names]
        # A module with buffers called twice (a shared BatchNorm, say) carries state from before
        # a checkpoint into the part after it: resuming would need more than the live values.
        # Stateless modules (torchvision's one ReLU per block) may be called any number of times.
        self.resumable &= all(
            c == 1 or not any(True for _ in self._modules[name].buffers())
            for name, c in counts.items()
        )
        self.call_positions = calls
        sizes = self._sizes(example_input)
        self.peak_floats_per_sample = self._peak(sizes)
        """The most float elements per sample alive at once during a pass (its memory)."""
        cumulative = [0]
        for macs in layer_macs:
            cumulative.append(cumulative[-1] + int(macs))
        self.checkpoints: list[Checkpoint] = []
        for layer, position in enumerate(self.positions):
            live = tuple(
                n
                for n in self.nodes[:position]
                if self._last_use[n] >= position and n.op != "get_attr"
            )
            floats = sum(sizes.get(n, 0) for n in live)
            self.checkpoints.append(Checkpoint(layer, position, live, floats, cumulative[layer]))

    def _peak(self, sizes: dict[fx.Node, int]) -> int:
        """The largest total size of the values alive at any node of a pass."""
        alive = peak = 0
        for i, node in enumerate(self.nodes):
            alive += sizes.get(node, 0)
            peak = max(peak, alive)
            for arg in node.all_input_nodes:
                if self._last_use[arg] == i:
                    alive -= sizes.get(arg, 0)
        return peak

    @torch.no_grad()
    def _sizes(self, example_input: torch.Tensor) -> dict[fx.Node, int]:
        """Float elements per sample of every node's value (0 for non-tensors)."""
        sizes: dict[fx.Node, int] = {}

        def measure(node: fx.Node, value: Any) -> None:
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                sizes[node] = int(value[0].numel()) if value.shape[0] == len(example_input) else 0
            elif isinstance(value, (tuple, list)):
                sizes[node] = sum(
                    int(v[0].numel()) for v in value if isinstance(v, torch.Tensor) and v.dim() > 0
                )

        self.run(example_input, observe=measure)
        return sizes

    def _fetch(self, target: str) -> Any:
        owner, _, name = target.rpartition(".")
        return getattr(self.gm.get_submodule(owner) if owner else self.gm, name)

    def run(
        self,
        x: torch.Tensor,
        start: int = 0,
        state: State | None = None,
        keep: Sequence[Checkpoint] = (),
        observe: Any = None,
    ) -> tuple[Any, list[State]]:
        """Run the graph on ``x`` from node ``start`` (with the live ``state`` kept there).

        Args:
            x: The input batch (unused when resuming: the state holds what is needed).
            start: Node position to start at (0: the beginning; else a checkpoint's position).
            state: The live values at ``start`` (a checkpoint's state), required if ``start > 0``.
            keep: Checkpoints after ``start`` whose live values to return.
            observe: Optional ``f(node, value)`` called for every computed value.

        Returns:
            The graph's output and, per checkpoint in ``keep``, its live values.
        """
        env = self._start_env(x, start, state)
        wanted = {c.position: c for c in keep}
        kept: list[State] = []
        for i in range(start, len(self.nodes)):
            if i in wanted:
                kept.append({n: env[n] for n in wanted[i].live})
            node = self.nodes[i]
            if node.op == "output":
                return fx.node.map_arg(node.args[0], env.__getitem__), kept
            if node.op == "placeholder":
                self._check_placeholder(node, env)
                continue
            env[node] = value = self._call(node, env)
            if observe is not None:
                observe(node, value)
            self._release(node, i, env)
        raise RuntimeError("the graph has no output node")

    def run_many(
        self,
        xs: Sequence[torch.Tensor],
        start: int = 0,
        states: Sequence[State] | None = None,
        keep: Sequence[Checkpoint] = (),
        synchronize: Callable[[str, nn.Module, list[torch.Tensor]], None] | None = None,
        synchronized: Collection[str] = (),
    ) -> tuple[list[Any], list[list[State]]]:
        """Run several batches in lockstep, node by node, pausing at chosen modules.

        Each node is computed for every batch before the next node runs; before a module named
        in ``synchronized`` is called, ``synchronize(name, module, inputs)`` sees its input from
        every batch (BatchNorm re-calibration sets its statistics there). Every other op computes
        what ``run`` computes for each batch alone.

        Args:
            xs: The input batches (unused when resuming).
            start: Node position to start at, as in ``run``.
            states: Per batch, the live values at ``start`` (required if ``start > 0``).
            keep: Checkpoints after ``start`` whose live values to return, per batch.
            synchronize: Called once per synchronized call with the module and the inputs.
            synchronized: Qualified names of the modules to pause at.

        Returns:
            Per batch, the graph's output; per checkpoint in ``keep``, per batch, its live values.
        """
        envs = [
            self._start_env(x, start, None if states is None else states[b])
            for b, x in enumerate(xs)
        ]
        wanted = {c.position: c for c in keep}
        kept: list[list[State]] = []
        names = set(synchronized)
        for i in range(start, len(self.nodes)):
            if i in wanted:
                kept.append([{n: env[n] for n in wanted[i].live} for env in envs])
            node = self.nodes[i]
            if node.op == "output":
                return [fx.node.map_arg(node.args[0], env.__getitem__) for env in envs], kept
            if node.op == "placeholder":
                for env in envs:
                    self._check_placeholder(node, env)
                continue
            if synchronize is not None and node.op == "call_module" and node.target in names:
                inputs = [env[node.args[0]] for env in envs]  # type: ignore[index]
                synchronize(str(node.target), self._modules[str(node.target)], inputs)
            for env in envs:
                env[node] = self._call(node, env)
                self._release(node, i, env)
        raise RuntimeError("the graph has no output node")

    def _start_env(self, x: torch.Tensor, start: int, state: State | None) -> State:
        env: State = dict(state) if state is not None else {}
        if start == 0:
            if self._input is not None:
                env[self._input] = x
            env.update(self._defaults)
        return env

    @staticmethod
    def _check_placeholder(node: fx.Node, env: State) -> None:
        if node not in env:
            raise RuntimeError(f"no value for the forward argument '{node.target}'")

    def _call(self, node: fx.Node, env: State) -> Any:
        """The value of ``node`` from the values in ``env``."""
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if node.op == "get_attr":
            return self._fetch(str(node.target))
        if node.op == "call_module":
            return self._modules[str(node.target)](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)  # call_method

    def _release(self, node: fx.Node, i: int, env: State) -> None:
        """Drop what nothing reads after node ``i`` any more."""
        for arg in node.all_input_nodes:
            if self._last_use[arg] <= i:
                env.pop(arg, None)


@dataclass
class Prefix:
    """The live values a reference policy left at the cache's checkpoints.

    Attributes:
        key: The policy's key (``Policy.key``).
        score: Its score (the cache keeps the best unless an incumbent is pinned).
        calib: Per checkpoint position, per calibration batch, the live values.
        val: Per checkpoint position, per held-out batch, the live values.
        bn_state: Every BatchNorm's statistics after the policy's re-calibration.
    """

    key: tuple[bytes, ...]
    score: float
    calib: dict[int, list[State]] = field(default_factory=dict)
    val: dict[int, list[State]] = field(default_factory=dict)
    bn_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


class PrefixCache:
    """The reference policy's activations at a few checkpoints, chosen to fit a memory budget.

    The reference is the incumbent an agent pinned (``pinned``), else the best policy scored so
    far. A policy that agrees with it on every layer before a checkpoint resumes there
    (``resume_point``).

    Args:
        forward: The pass whose checkpoints are candidates.
        layers: Compressible layers of the graph.
        images: Images whose live values each checkpoint holds (held-out + calibration).
        budget_mb: Memory for the kept values, in MiB (0: no reuse).
    """

    def __init__(
        self, forward: SegmentedForward, layers: int, images: int, budget_mb: float
    ) -> None:
        self.checkpoints = _choose(forward, layers, images, budget_mb)
        self.prefix: Prefix | None = None
        self.pinned: tuple[bytes, ...] | None = None

    def resume_point(self, key: tuple[bytes, ...]) -> Checkpoint | None:
        """The last kept checkpoint before the first layer where ``key`` differs from the prefix."""
        prefix = self.prefix
        if prefix is None:
            return None
        pairs = enumerate(zip(key, prefix.key, strict=True))
        first = next((i for i, (a, b) in pairs if a != b), len(key))
        usable = [c for c in self.checkpoints if c.layer <= first and c.position in prefix.val]
        return usable[-1] if usable else None

    def records(self, key: tuple[bytes, ...]) -> bool:
        """Whether an evaluation of ``key`` keeps its live values (it may become the prefix)."""
        if not self.checkpoints:
            return False
        held = self.prefix is not None and self.prefix.key == self.pinned
        return self.pinned is None or key == self.pinned or not held

    def wants(self, key: tuple[bytes, ...], score: float) -> bool:
        """Whether a complete evaluation of ``key`` scoring ``score`` becomes the prefix.

        The pinned incumbent always does, and once it is the prefix it stays; until then (an
        incumbent pinned after it was scored) the best score so far does, which is usually the
        incumbent's neighbourhood too.
        """
        if not self.checkpoints:
            return False
        if self.pinned is not None:
            if key == self.pinned:
                return True
            if self.prefix is not None and self.prefix.key == self.pinned:
                return False
        return self.prefix is None or score >= self.prefix.score

    def keep(self, prefix: Prefix, start: Checkpoint | None) -> None:
        """Make ``prefix`` the reference; checkpoints up to ``start`` are the old one's tensors."""
        old = self.prefix
        if start is not None and old is not None:
            for c in self.checkpoints:
                if c.position <= start.position:
                    prefix.val[c.position] = old.val[c.position]
                    if c.position in old.calib:
                        prefix.calib[c.position] = old.calib[c.position]
        self.prefix = prefix


def _choose(
    forward: SegmentedForward, layers: int, images: int, budget_mb: float
) -> list[Checkpoint]:
    """Checkpoints to keep activations at, the most MACs saved per byte first, within budget.

    The value of a set is the MACs it saves when the changed layer is drawn uniformly (what a
    local search that moves one layer at a time does on average).
    """
    if not forward.resumable or budget_mb <= 0:
        return []
    budget = budget_mb * 2**20
    candidates = [c for c in forward.checkpoints if c.layer > 0 and c.floats_per_sample > 0]
    chosen: list[Checkpoint] = []
    used = 0.0

    def saved(points: list[Checkpoint]) -> float:
        best = 0.0
        total = 0.0
        by_layer = {c.layer: c for c in points}
        for k in range(layers):
            if k in by_layer:
                best = max(best, by_layer[k].macs_before)
            total += best
        return total

    while True:
        base = saved(chosen)
        options = []
        for c in candidates:
            if c in chosen:
                continue
            cost = c.floats_per_sample * 4.0 * images
            if used + cost > budget:
                continue
            gain = saved([*chosen, c]) - base
            if gain > 0:
                options.append((gain / cost, -c.layer, c))
        if not options:
            break
        _, _, pick = max(options, key=lambda t: (t[0], t[1]))
        chosen.append(pick)
        used += pick.floats_per_sample * 4.0 * images
    return sorted(chosen, key=lambda c: c.position)
