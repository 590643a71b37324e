"""A compression policy as data: per layer, one bit-width per output kernel and the input bits.

A kernel with 0 bits is pruned: one mixed-precision decision covers pruning and quantization. A
policy names the architecture it was made for (the layer graph's fingerprint) and is validated
against a graph before anything uses it, so a policy is never applied to another model. Policies
round-trip through JSON (``to_json`` / ``from_json``); files are written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jpq_env import validation as check
from jpq_env.atomic import write_atomic
from jpq_env.core.graph import LayerGraph
from jpq_env.core.quant import FULL_PRECISION, SUPPORTED_BITS
from jpq_env.errors import ArgumentError, PolicyError

__all__ = [
    "SCHEMA_VERSION",
    "Conventions",
    "LayerPolicy",
    "Policy",
    "PolicyError",
    "PolicyKey",
    "bits_from_ranking",
    "layer_key",
    "record_key",
]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LayerPolicy:
    """Decisions for one compressible layer.

    Attributes:
        name: Module name of the layer.
        bits: Weight bit-width of each output kernel, in the layer's channel order (0 = pruned,
            32 = full precision).
        act_bits: Bit-width of the layer's input activations (32 = full precision).
    """

    name: str
    bits: np.ndarray
    act_bits: int = FULL_PRECISION

    def __post_init__(self) -> None:
        # Normalise numpy scalars and lists so that policies compare, hash and serialise alike;
        # a float or bool width would be truncated silently, so it is refused.
        bits = np.asarray(self.bits)
        if bits.dtype.kind not in "iu":
            raise PolicyError(
                f"layer '{self.name}': bits must be integer widths, got dtype {bits.dtype}"
            )
        object.__setattr__(self, "bits", bits.astype(np.int64, copy=False))
        act = check.integer(f"layer '{self.name}': act_bits", self.act_bits, error=PolicyError)
        object.__setattr__(self, "act_bits", act)

    @property
    def sparsity(self) -> float:
        """Share of output kernels pruned, in [0, 1]."""
        return float(np.mean(self.bits == 0))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LayerPolicy)
            and self.name == other.name
            and self.act_bits == other.act_bits
            and np.array_equal(self.bits, other.bits)
        )

    __hash__ = None  # type: ignore[assignment]

    def key(self) -> bytes:
        """The layer's decision as bytes (``layer_key``): equal keys, equal compressed layers."""
        return layer_key(self.act_bits, self.bits)

    def to_json(self, *, sparsity: bool = False) -> dict[str, Any]:
        """``{"name", "act_bits", "bits"}`` (with ``"sparsity"`` after the name if asked)."""
        out: dict[str, Any] = {"name": self.name}
        if sparsity:
            out["sparsity"] = self.sparsity
        out["act_bits"] = int(self.act_bits)
        out["bits"] = self.bits.tolist()
        return out

    @classmethod
    def from_json(cls, entry: Any, index: int = 0) -> LayerPolicy:
        """Parse and type-check one layer entry of ``Policy.to_json`` (extra keys are ignored).

        Raises:
            PolicyError: Naming the entry ``index`` and what is wrong with it.
        """
        if not isinstance(entry, dict):
            raise PolicyError(f"layer entry {index} is not an object")
        name, act, bits = entry.get("name"), entry.get("act_bits"), entry.get("bits")
        ok_bits = isinstance(bits, list) and bits and all(type(b) is int for b in bits)
        if not isinstance(name, str) or type(act) is not int or not ok_bits:
            raise PolicyError(
                f"layer entry {index}: needs 'name' (string), 'act_bits' (integer) and 'bits' "
                "(non-empty list of integers)"
            )
        assert isinstance(bits, list) and isinstance(act, int)
        if not all(-(2**31) < b < 2**31 for b in bits) or not -(2**31) < act < 2**31:
            raise PolicyError(f"layer entry {index} ('{name}'): bit-widths out of range")
        return cls(name, np.asarray(bits, dtype=np.int64), act)


PolicyKey = tuple[bytes, ...]
"""A policy's identity: one ``layer_key`` per layer (equal keys, equal compressed networks)."""


def layer_key(act_bits: int, bits: Any) -> bytes:
    """A layer's decision as bytes: its activation width, then its kernels' widths (int64)."""
    return np.int64(act_bits).tobytes() + np.asarray(bits, dtype=np.int64).tobytes()


def record_key(layers: Iterable[Mapping[str, Any]]) -> PolicyKey:
    """The ``Policy.key`` of a policy in JSON form (entries with ``act_bits`` and ``bits``).

    The entries of ``Policy.to_json()["layers"]``, of a search's log record or of the
    environment's ``info["policy"]`` all qualify.
    """
    return tuple(layer_key(p["act_bits"], p["bits"]) for p in layers)


@dataclass(frozen=True)
class Policy:
    """Per-layer decisions for a whole network.

    Attributes:
        layers: One entry per compressible layer, in execution order.
        fingerprint: The fingerprint of the layer graph the policy was made for.
    """

    layers: tuple[LayerPolicy, ...]
    fingerprint: str

    @classmethod
    def uniform(
        cls,
        graph: LayerGraph,
        w_bits: int = FULL_PRECISION,
        a_bits: int = FULL_PRECISION,
        conventions: Conventions | None = None,
    ) -> Policy:
        """Every kernel at ``w_bits``, every layer input at ``a_bits`` (then the conventions)."""
        w_bits = check.integer("w_bits", w_bits, low=0, error=PolicyError)
        a_bits = check.integer("a_bits", a_bits, low=1, error=PolicyError)
        policy = cls(
            tuple(
                LayerPolicy(x.name, np.full(x.out_channels, w_bits, dtype=np.int64), a_bits)
                for x in graph.layers
            ),
            graph.fingerprint,
        )
        return conventions.apply(graph, policy) if conventions else policy

    def key(self) -> PolicyKey:
        """Per layer, its decision as bytes (``layer_key``): equal keys, equal policies."""
        return tuple(lp.key() for lp in self.layers)

    def kept(self) -> list[np.ndarray]:
        """Per layer, which kernels the policy keeps (bits > 0)."""
        return [layer.bits > 0 for layer in self.layers]

    def validate(self, graph: LayerGraph, allowed_bits: Sequence[int] | None = None) -> None:
        """Check that the policy fits ``graph`` and uses only allowed bit-widths.

        Raises:
            PolicyError: Naming the first problem found.
        """
        names = [lp.name for lp in self.layers]
        if self.fingerprint != graph.fingerprint or names != list(graph.names):
            raise PolicyError(
                "the policy was made for another model: its layers "
                f"{_short(names)} do not match the model's {_short(list(graph.names))}"
                if names != list(graph.names)
                else "the policy was made for another model: same layer names, other shapes"
            )
        allowed = sorted(
            SUPPORTED_BITS if allowed_bits is None else SUPPORTED_BITS & set(allowed_bits)
        )
        # A lookup table over every width a policy could hold: one gather per layer.
        table = np.zeros(max(FULL_PRECISION, *allowed) + 1, dtype=bool)
        table[[b for b in allowed if b >= 0]] = True
        for info, lp in zip(graph.layers, self.layers, strict=True):
            if lp.bits.shape != (info.out_channels,):
                raise PolicyError(
                    f"layer '{info.name}': expected {info.out_channels} bit-widths, got "
                    f"{lp.bits.size}"
                )
            inside = (lp.bits >= 0) & (lp.bits < table.size)
            ok = inside & table[np.where(inside, lp.bits, 0)]
            bad = lp.bits[~ok]
            if bad.size:
                raise PolicyError(
                    f"layer '{info.name}': weight bit-width {int(bad[0])} is outside the allowed "
                    f"set {allowed}"
                )
            if lp.act_bits not in SUPPORTED_BITS or lp.act_bits == 0:
                raise PolicyError(
                    f"layer '{info.name}': activation bit-width {lp.act_bits} is not supported "
                    f"(1-16 or {FULL_PRECISION})"
                )
            if info.index in graph.output_layers and not lp.bits.all():
                raise PolicyError(
                    f"layer '{info.name}' produces the network's output: its kernels cannot be "
                    "pruned (0 bits)"
                )

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (schema version, fingerprint, per-layer bits)."""
        return {
            "schema": SCHEMA_VERSION,
            "fingerprint": self.fingerprint,
            "layers": [lp.to_json() for lp in self.layers],
        }

    @classmethod
    def from_json(cls, data: Any) -> Policy:
        """Parse and type-check the dict ``to_json`` writes.

        Raises:
            PolicyError: If a field is missing or has the wrong type.
        """
        schema = data.get("schema") if isinstance(data, dict) else None
        if type(schema) is not int or schema != SCHEMA_VERSION:  # true is not schema 1
            raise PolicyError(f"not a jpq-env policy (schema {SCHEMA_VERSION} expected)")
        fingerprint = data.get("fingerprint")
        layers = data.get("layers")
        if not isinstance(fingerprint, str) or not isinstance(layers, list) or not layers:
            raise PolicyError("a policy needs a 'fingerprint' string and a non-empty 'layers' list")
        return cls(tuple(LayerPolicy.from_json(e, i) for i, e in enumerate(layers)), fingerprint)

    @classmethod
    def from_layers(cls, layers: Any, fingerprint: str) -> Policy:
        """The policy of JSON layer entries (a log record's or ``info["policy"]``), checked."""
        return cls.from_json(
            {"schema": SCHEMA_VERSION, "fingerprint": fingerprint, "layers": layers}
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the policy as JSON, atomically (a temporary file, then a rename)."""
        write_atomic(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Read a policy written by ``save``.

        Raises:
            PolicyError: If the file is missing, not JSON or not a policy.
        """
        from jpq_env.jsonfile import read_json

        return cls.from_json(read_json(path, "policy file", error=PolicyError))


def _short(names: list[str], limit: int = 4) -> str:
    return str(names if len(names) <= limit else [*names[:limit], "..."])


def bits_from_ranking(order: np.ndarray, ranked_bits: np.ndarray) -> np.ndarray:
    """Turn bit-widths given in importance order into bit-widths in channel order.

    Args:
        order: Kernel indices, most important first.
        ranked_bits: ``ranked_bits[i]`` is the width of the i-th most important kernel.

    Returns:
        ``bits`` with ``bits[order[i]] == ranked_bits[i]``.
    """
    bits = np.empty_like(ranked_bits)
    bits[order] = ranked_bits
    return bits


@dataclass(frozen=True)
class Conventions:
    """Counting conventions users must be able to set (papers differ on each of them).

    Attributes:
        input_bits: Activation bits of the network input: layers that read it directly are
            counted and quantized at this width whatever the policy says (default 8: images are
            8-bit data). ``None`` leaves those layers to the policy.
        first_last_bits: If set, the weights of the first layers (those reading the network
            input) and of the last layers (those producing the output) are pinned at this width
            and never pruned, as many papers do. ``None`` (default) lets the search decide.
    """

    input_bits: int | None = 8
    first_last_bits: int | None = None

    def __post_init__(self) -> None:
        for name, value in (
            ("input_bits", self.input_bits),
            ("first_last_bits", self.first_last_bits),
        ):
            width = check.integer(name, value, optional=True)
            if width is not None and (width not in SUPPORTED_BITS or width == 0):
                raise ArgumentError(f"{name}={value} is not a supported width (1-16 or 32)")

    def apply(self, graph: LayerGraph, policy: Policy) -> Policy:
        """Return ``policy`` with the conventions imposed (idempotent)."""
        pinned = graph.input_layers | graph.output_layers
        layers = []
        for info, lp in zip(graph.layers, policy.layers, strict=True):
            bits, act = lp.bits, lp.act_bits
            if self.first_last_bits is not None and info.index in pinned:
                bits = np.full_like(bits, self.first_last_bits)
            if self.input_bits is not None and info.index in graph.input_layers:
                act = self.input_bits
            layers.append(LayerPolicy(lp.name, bits, act))
        return Policy(tuple(layers), policy.fingerprint)
