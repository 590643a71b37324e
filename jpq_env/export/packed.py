"""Exporting a compressed model: bit-packed integer weights, per-kernel scales, activation ranges.

``export_compressed`` writes format ``jpq-compressed-v2``: a byte container
(``jpq_env.export.packing``: a zlib-compressed JSON header and one blob, nothing that must be
unpickled) in which
every compressible layer stores each kernel's width (0 = pruned), its integer levels *packed at
that width* (a 3-bit kernel takes 3 bits a weight), one float32 scale per quantized kernel and the
float rows of full-precision kernels. Pruned kernels store nothing, and neither do the weights
that read an input channel the pruning removed (``LayerGraph.liveness``: that channel is exactly
zero in the compressed model), so the weight payload is the cost model's ``size_bits`` rounded up
to whole bytes per layer. The rest of the state (biases, BatchNorm statistics after
re-calibration) is stored as it was evaluated.

``load_compressed`` rebuilds the model from that file: every stored weight comes back bitwise as
the compressed view holds it, the weights of removed input channels as zeros, so its logits are
the evaluated ones and its test accuracy equals the one ``LocalEvaluator.test_accuracy`` reports.
Files of the first format (``jpq-compressed-v1``, a ``torch.save`` dict of int8/int16 levels) are
still read.

One exception to "removed inputs store nothing": a layer whose inputs are quantized to 1 bit over
a signed range maps a zero channel to ``span / 2``, not zero, so its removed inputs do reach the
output; such a layer stores all its input weights.
"""

from __future__ import annotations

import lzma
import os
import pickle
import pickletools
import re
import zipfile
import zlib
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from jpq_env.atomic import save_atomic
from jpq_env.core.compress import CompressedModel
from jpq_env.core.graph import LayerGraph, LayerInfo, Liveness
from jpq_env.core.policy import Policy
from jpq_env.core.quant import FULL_PRECISION, SUPPORTED_BITS, ActRange
from jpq_env.export.packing import (
    MAGIC,
    MAGIC_ZLIB,
    ExportFormatError,
    Fields,
    pack_levels,
    read_container,
    unpack_levels,
    write_container,
)
from jpq_env.proxy.evaluator import LocalEvaluator

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_V1",
    "ExportFormatError",
    "export_compressed",
    "input_masks",
    "load_compressed",
    "aliases",
    "save_atomic",
    "stored_state",
    "zero_maps_to_zero",
]

EXPORT_FORMAT = "jpq-compressed-v2"
EXPORT_FORMAT_V1 = "jpq-compressed-v1"


def zero_maps_to_zero(act_bits: int, rng: ActRange | None) -> bool:
    """Whether a layer's input quantization leaves a zero channel zero (all but signed 1-bit).

    Where it does not (``sign(x) * span / 2`` maps zero to ``span / 2``), the channels the pruning
    removed still reach the layer's output: the packed file stores the weights that read them and
    the physically pruned model keeps them.

    Args:
        act_bits: The layer's activation (input) bits.
        rng: Its calibrated input range (None: not calibrated, inputs at full precision).
    """
    return not (act_bits == 1 and rng is not None and rng.signed)


def input_masks(info: LayerInfo, live: Liveness, all_inputs: bool = False) -> np.ndarray:
    """Per output kernel, which of its input positions (weight dim 1) read a live channel.

    Returns:
        A boolean array of shape ``(out_channels, in_channels // groups)``.
    """
    per_group = info.in_per_group
    if all_inputs:
        return np.ones((info.out_channels, per_group), dtype=bool)
    groups = live.alive_in[info.index].reshape(info.groups, per_group)
    return np.repeat(groups, info.out_per_group, axis=0)


def export_compressed(
    evaluator: LocalEvaluator, policy: Policy, path: str | os.PathLike[str]
) -> dict[str, Any]:
    """Write the model compressed by ``policy`` to ``path`` (atomically, bit-packed).

    Returns:
        ``{"format", "file_bytes", "payload_bytes", "scale_bytes", "full_bytes", "state_bytes"}``:
        what the file holds, in bytes (payload: the packed integer levels).
    """
    module = evaluator.prepare(policy)
    cm = evaluator.compressed
    graph = evaluator.graph
    live = graph.liveness(policy.kept())
    ranges = cm.act_ranges or []
    layers: dict[str, Any] = {}
    bits_all, payloads, scales_all, full_all = [], [], [], []
    for info, lp, quantizer in zip(graph.layers, policy.layers, cm.quantizers, strict=True):
        bits = torch.from_numpy(live.alive_out[info.index] * lp.bits)
        rng = ranges[info.index] if ranges else None
        all_inputs = not zero_maps_to_zero(int(lp.act_bits), rng)
        masks = input_masks(info, live, all_inputs)
        codes, scales = quantizer.codes(bits)
        weight = quantizer.weight
        levels, widths, wide = [], [], []
        for k, b in enumerate(bits.tolist()):
            if 1 <= b < FULL_PRECISION:
                values = codes[k][torch.from_numpy(masks[k])].reshape(-1).numpy()
                width = b
                if b == 1 and (values == 0).any():  # sign(0) = 0: a third level, two bits
                    width = 2
                    wide.append(k)
                levels.append(values)
                widths.append(width)
                scales_all.append(scales[k : k + 1].float())
            elif b >= FULL_PRECISION:
                full_all.append(weight[k][torch.from_numpy(masks[k])].reshape(-1).float())
        payload = pack_levels(levels, widths)
        payloads.append(torch.from_numpy(payload))
        bits_all.append(bits.to(torch.uint8))
        layers[info.name] = {
            "act_bits": int(lp.act_bits),
            "all_inputs": all_inputs,
            "binary_as_2_bits": wide,
            "payload_bytes": int(payload.size),
        }
    state = stored_state(module, graph)
    empty = torch.zeros(0)
    tensors = {
        "bits": torch.cat(bits_all),
        "payload": torch.cat(payloads),
        "scales": torch.cat(scales_all) if scales_all else empty,
        "full": torch.cat(full_all) if full_all else empty,
        **_group_by_dtype(state),
    }
    header = {
        "format": EXPORT_FORMAT,
        "state": [
            [k, str(v.dtype).removeprefix("torch."), list(v.shape)] for k, v in state.items()
        ],
        "fingerprint": graph.fingerprint,
        "layers": layers,
        "act_ranges": [[r.lo, r.hi] for r in ranges],
    }
    size = write_container(path, header, tensors)
    return {
        "format": EXPORT_FORMAT,
        "file_bytes": size,
        "payload_bytes": int(tensors["payload"].numel()),
        "scale_bytes": 4 * int(tensors["scales"].numel()),
        "full_bytes": 4 * int(tensors["full"].numel()),
        "state_bytes": sum(v.numel() * v.element_size() for v in state.values()),
    }


def aliases(module: nn.Module) -> dict[str, str]:
    """State keys that name a tensor already named by an earlier key: ``{alias: first}``.

    A module registered under two names (``self.alias = self.fc``) lists its tensors twice in
    ``state_dict``; an export stores each tensor once (by identity), and loading restores the
    alias by the sharing itself.
    """
    first: dict[int, str] = {}
    out = {}
    for key, value in module.state_dict(keep_vars=True).items():
        ident = id(value)
        if ident in first:
            out[key] = first[ident]
        else:
            first[ident] = key
    return out


def stored_state(module: nn.Module, graph: LayerGraph) -> dict[str, torch.Tensor]:
    """The state an export stores besides the packed weights: each tensor once, no layer weight.

    Compressible layers' weights are stored packed, whatever name they are reached by (an alias
    of a layer would otherwise ship its FP32 weight in full).
    """
    skip = _weight_keys(module, graph) | set(aliases(module))
    return {k: v.detach() for k, v in module.state_dict(keep_vars=True).items() if k not in skip}


def _weight_keys(module: nn.Module, graph: LayerGraph) -> set[str]:
    """Every state key that reaches a compressible layer's weight (by identity)."""
    ids = {id(cast(nn.Conv2d | nn.Linear, module.get_submodule(n)).weight) for n in graph.names}
    return {k for k, v in module.state_dict(keep_vars=True).items() if id(v) in ids}


def _group_by_dtype(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state's tensors flattened into one tensor per dtype (``state/float32`` ...)."""
    groups: dict[str, list[torch.Tensor]] = {}
    for v in state.values():
        groups.setdefault(f"state/{str(v.dtype).removeprefix('torch.')}", []).append(v.reshape(-1))
    return {k: torch.cat(v) for k, v in groups.items()}


def _ungroup_state(
    fields: Fields, header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Split ``_group_by_dtype``'s tensors back into the state's named tensors."""
    readers: dict[str, _Reader] = {}
    state = {}
    for i, entry in enumerate(fields.items("the state table", header.get("state"))):
        key, dtype, shape = fields.items(f"state entry {i}", entry, 3)
        key = fields.string(f"state entry {i} name", key)
        name = f"state/{fields.string(f'state entry {i} dtype', dtype)}"
        if name not in tensors:
            raise fields.error(f"it has no '{name}' tensor")
        reader = readers.setdefault(name, _Reader(fields, name, tensors[name]))
        dims, numel = fields.shape(f"state '{key}' shape", shape, reader.left)
        state[key] = reader.take(numel).reshape(dims)
    for reader in readers.values():
        reader.done()
    return state


def _v1_record(evaluator: LocalEvaluator, policy: Policy) -> dict[str, Any]:
    """The record of the first format (int8/int16 levels of every kernel; kept for tests)."""
    module = evaluator.prepare(policy)
    cm = evaluator.compressed
    graph = evaluator.graph
    live = graph.liveness(policy.kept())
    layers = {}
    for info, lp, quantizer in zip(graph.layers, policy.layers, cm.quantizers, strict=True):
        bits = torch.from_numpy(live.alive_out[info.index] * lp.bits)
        codes, scales = quantizer.codes(bits)
        quantized = bits[bits < FULL_PRECISION]
        small = quantized.numel() == 0 or int(quantized.max()) <= 8
        full = torch.nonzero(bits >= FULL_PRECISION).flatten()
        layers[info.name] = {
            "bits": bits.to(torch.int16),
            "codes": codes.to(torch.int8 if small else torch.int16),
            "scales": scales.float(),
            "full_index": full,
            "full_rows": quantizer.weight[full].clone(),
            "act_bits": int(lp.act_bits),
        }
    weights = {f"{name}.weight" for name in graph.names}
    state = {k: v.clone() for k, v in module.state_dict().items() if k not in weights}
    return {
        "format": EXPORT_FORMAT_V1,
        "fingerprint": graph.fingerprint,
        "layers": layers,
        "state": state,
        "act_ranges": [[r.lo, r.hi] for r in cm.act_ranges or []],
    }


MAX_V1_PICKLE_BYTES = 16 * 2**20
"""The largest object table (``data.pkl``) a first-format file may hold."""
_INT_OPS = frozenset({"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG"})
_MEMO_PUT = frozenset({"BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"})


def _check_v1_sizes(path: str | os.PathLike[str]) -> None:
    """Refuse a first-format file whose tensors declare more values than it holds.

    ``torch.load`` allocates each storage at the size the file's object table declares before it
    reads the bytes, so a 1 MB file can make it allocate gigabytes. The table is read here without
    running it (``pickletools``): each storage reference is ``(..., key, location, numel)``, and its
    ``numel`` may not exceed the bytes of the file's ``data/<key>`` record (one byte a value at
    least). Anything else is not a file this library wrote.
    """
    fields = Fields(path)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = {info.filename: info for info in archive.infolist()}
            tables = [name for name in entries if name.rsplit("/", 1)[-1] == "data.pkl"]
            if len(tables) != 1:
                raise ExportFormatError(f"'{path}' is not a jpq-env export: no object table")
            table = entries[tables[0]]
            if table.file_size > MAX_V1_PICKLE_BYTES:
                raise fields.error(f"its object table declares {table.file_size} bytes")
            raw = archive.read(table)
    except (
        zipfile.BadZipFile,
        OSError,
        EOFError,
        RuntimeError,
        ValueError,
        NotImplementedError,  # a compression method zipfile does not read
        zlib.error,
        lzma.LZMAError,
    ) as exc:
        if isinstance(exc, ExportFormatError):
            raise
        raise ExportFormatError(f"'{path}' is not a readable jpq-env export: {exc}") from exc
    prefix = tables[0][: -len("data.pkl")]
    try:
        ops = list(pickletools.genops(raw))
    except (ValueError, IndexError) as exc:
        raise ExportFormatError(f"'{path}' is not a readable jpq-env export: {exc}") from exc
    last: Any = None
    memo: dict[int, Any] = {}
    for i, (op, arg, _) in enumerate(ops):
        if op.name in _MEMO_PUT:
            memo[len(memo) if op.name == "MEMOIZE" else int(cast(int, arg))] = last
            continue
        if op.name in ("BINGET", "LONG_BINGET", "GET"):
            last = memo.get(int(cast(int, arg)))
            continue
        if op.name == "PERSID":
            raise ExportFormatError(f"'{path}' is not a jpq-env export: unexpected PERSID")
        if op.name == "BINPERSID":
            numel, key = _storage_reference(ops, memo, i)
            record = entries.get(f"{prefix}data/{key}")
            held = 0 if record is None else record.file_size
            if numel is None or numel > held:
                raise fields.error(
                    f"tensor storage '{key}' declares {numel} values, the file holds {held} bytes"
                )
        last = arg


def _storage_reference(ops: list[Any], memo: dict[int, Any], at: int) -> tuple[int | None, Any]:
    """``(numel, key)`` of the storage tuple that the ``BINPERSID`` at ``ops[at]`` reads."""
    j = at - 1
    while j >= 0 and ops[j][0].name in _MEMO_PUT:
        j -= 1
    if j < 0 or ops[j][0].name != "TUPLE":
        return None, "?"
    values: list[Any] = []
    j -= 1
    while j >= 0 and ops[j][0].name != "MARK":
        op, arg, _ = ops[j]
        if op.name in ("BINGET", "LONG_BINGET", "GET"):
            values.append(memo.get(int(arg)))
        elif op.name not in _MEMO_PUT:
            values.append(arg if op.name in _INT_OPS or isinstance(arg, str) else None)
        j -= 1
    values.reverse()  # ("storage", storage type, key, location, numel)
    if len(values) != 5 or values[0] != "storage" or type(values[4]) is not int:
        return None, values[2] if len(values) > 2 else "?"
    return values[4], values[2]


def _read_v1(path: str | os.PathLike[str]) -> dict[str, Any]:
    _check_v1_sizes(path)
    try:
        record = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused is None:  # not a torch file at all
            raise ExportFormatError(f"'{path}' is not a readable jpq-env export: {exc}") from exc
        # weights_only refused to build an object: nothing from the file was run.
        raise ExportFormatError(
            f"'{path}' is not a jpq-env export: it holds Python objects that loading would have to "
            f"unpickle ({refused.group(1)}), which could run code; refused, nothing was executed"
        ) from exc
    except Exception as exc:  # truncated, hand-edited or not a torch file at all
        raise ExportFormatError(f"'{path}' is not a readable jpq-env export: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT_V1:
        raise ExportFormatError(
            f"'{path}' is not a jpq-env export ({EXPORT_FORMAT} or {EXPORT_FORMAT_V1})"
        )
    return record


def _widths(fields: Fields, name: str, bits: torch.Tensor) -> list[int]:
    """A layer's per-kernel widths, each 0-16 or 32."""
    widths = [int(b) for b in bits.tolist()]
    bad = sorted(set(widths) - SUPPORTED_BITS)
    if bad:
        raise fields.error(f"layer '{name}' has widths {bad} (allowed: 0-16 and {FULL_PRECISION})")
    return widths


def _weights_v1(
    fields: Fields, record: dict[str, Any], graph: LayerGraph, out: nn.Module
) -> dict[str, torch.Tensor]:
    weights = {}
    layers = fields.table("'layers'", record.get("layers"))
    for name in graph.names:
        entry = fields.table(f"layer '{name}'", layers.get(name))
        layer = cast(nn.Conv2d | nn.Linear, out.get_submodule(name))
        k, rest = layer.weight.shape[0], tuple(layer.weight.shape[1:])
        where = f"layer '{name}'"
        bits = fields.tensor(f"{where} bits", entry.get("bits"), (k,), integral=True)
        widths = _widths(fields, name, bits)
        codes = fields.tensor(f"{where} codes", entry.get("codes"), (k, *rest), integral=True)
        for kernel, width in enumerate(widths):  # each kernel's levels fit its width
            top = 0 if width == 0 else (1 if width == 1 else 2 ** (width - 1) - 1)
            if width < FULL_PRECISION and int(codes[kernel].abs().max()) > top:
                raise fields.error(f"{where} kernel {kernel} holds levels beyond {width} bits")
        scales = fields.tensor(f"{where} scales", entry.get("scales"), (k,), integral=False)
        index = fields.tensor(f"{where} full_index", entry.get("full_index"), integral=True)
        full = [i for i, b in enumerate(widths) if b >= FULL_PRECISION]
        if index.dim() != 1 or index.tolist() != full:
            raise fields.error(f"{where} full_index does not list its full-precision kernels")
        rows = fields.tensor(f"{where} full_rows", entry.get("full_rows"), (len(full), *rest))
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        weight = codes.float() * scales.float().reshape(shape)
        weight[index] = rows.float()
        weights[name] = weight
    return weights


class _Reader:
    """Takes consecutive slices of one of the v2 file's concatenated tensors, checking sizes."""

    def __init__(self, fields: Fields, name: str, tensor: torch.Tensor) -> None:
        self.fields, self.name, self.tensor, self.at = fields, name, tensor.reshape(-1), 0

    @property
    def left(self) -> int:
        """Values not taken yet."""
        return self.tensor.numel() - self.at

    def take(self, n: int) -> torch.Tensor:
        if n > self.left:
            raise self.fields.error(
                f"'{self.name}' holds {self.tensor.numel()} values, fewer than its layers need"
            )
        self.at += n
        return self.tensor[self.at - n : self.at]

    def done(self) -> None:
        if self.at != self.tensor.numel():
            raise self.fields.error(
                f"'{self.name}' holds {self.tensor.numel()} values, its layers use {self.at}"
            )


def _weights_v2(
    fields: Fields,
    header: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    graph: LayerGraph,
    out: nn.Module,
) -> dict[str, torch.Tensor]:
    for key in ("bits", "payload", "scales", "full"):
        if key not in tensors:
            raise fields.error(f"it has no '{key}' tensor")
    integral = {"bits": True, "payload": True, "scales": False, "full": False}
    for key, kind in integral.items():
        fields.tensor(f"tensor '{key}'", tensors[key], integral=kind)
    for key in ("bits", "payload"):  # bytes: widths and packed levels
        if tensors[key].dtype != torch.uint8:
            raise fields.error(f"tensor '{key}' must be uint8, got {tensors[key].dtype}")
    bits_all = _Reader(fields, "bits", tensors["bits"])
    payload = _Reader(fields, "payload", tensors["payload"])
    scales_all = _Reader(fields, "scales", tensors["scales"])
    full_all = _Reader(fields, "full", tensors["full"])
    layer_bits = [bits_all.take(x.out_channels).long() for x in graph.layers]
    bits_all.done()
    widths_all = [
        _widths(fields, info.name, b) for info, b in zip(graph.layers, layer_bits, strict=True)
    ]
    live = graph.liveness([b.numpy() > 0 for b in layer_bits])
    layers = fields.table("'layers'", header.get("layers"))
    weights = {}
    for info, bits in zip(graph.layers, widths_all, strict=True):
        where = f"layer '{info.name}'"
        entry = fields.table(where, layers.get(info.name))
        layer = cast(nn.Conv2d | nn.Linear, out.get_submodule(info.name))
        masks = input_masks(info, live, fields.flag(f"{where} all_inputs", entry.get("all_inputs")))
        area = int(np.prod(layer.weight.shape[2:], dtype=np.int64))
        quantized = [k for k, b in enumerate(bits) if 1 <= b < FULL_PRECISION]
        wide = set()
        for k in fields.items(f"{where} binary_as_2_bits", entry.get("binary_as_2_bits")):
            k = fields.integer(f"{where} binary_as_2_bits entry", k, 0, info.out_channels - 1)
            if bits[k] != 1:
                raise fields.error(
                    f"{where} stores kernel {k} as binary but its width is {bits[k]}"
                )
            wide.add(k)
        widths = [2 if k in wide else bits[k] for k in quantized]
        counts = [int(masks[k].sum()) * area for k in quantized]
        size = fields.integer(f"{where} payload_bytes", entry.get("payload_bytes"), 0, payload.left)
        try:
            levels = unpack_levels(payload.take(size).numpy(), counts, widths)
        except ValueError as exc:
            raise fields.error(f"{where}: {exc}") from exc
        weight = torch.zeros(layer.weight.shape)
        for k, values in zip(quantized, levels, strict=True):
            mask = torch.from_numpy(masks[k])
            rows = torch.from_numpy(values).reshape(-1, *layer.weight.shape[2:])
            weight[k][mask] = rows.float() * scales_all.take(1).float()
        for k in (k for k, b in enumerate(bits) if b >= FULL_PRECISION):
            mask = torch.from_numpy(masks[k])
            weight[k][mask] = (
                full_all.take(int(mask.sum()) * area).float().reshape(-1, *layer.weight.shape[2:])
            )
        weights[info.name] = weight
    for reader in (payload, scales_all, full_all):
        reader.done()
    return weights


def _act_ranges(fields: Fields, value: Any, layers: int) -> list[ActRange]:
    """The calibrated input ranges: none, or one ``[lo, hi]`` per layer, finite, ``lo <= hi``."""
    ranges = []
    items = fields.items("'act_ranges'", value)
    if items and len(items) != layers:
        raise fields.error(f"it has {len(items)} activation ranges for {layers} layers")
    for i, pair in enumerate(items):
        lo, hi = fields.items(f"activation range {i}", pair, 2)
        lo = fields.number(f"activation range {i} low end", lo)
        hi = fields.number(f"activation range {i} high end", hi)
        if lo > hi:
            raise fields.error(f"activation range {i} is [{lo}, {hi}], its ends reversed")
        ranges.append(ActRange(lo, hi))
    return ranges


def _act_bits(
    fields: Fields, layers: dict[str, Any], graph: LayerGraph, calibrated: bool
) -> list[int]:
    """Each layer's input width: 1-16, or 32 (full precision, the only one without ranges)."""
    out = []
    for name in graph.names:
        entry = fields.table(f"layer '{name}'", layers.get(name))
        bits = fields.integer(f"layer '{name}' act_bits", entry.get("act_bits"), 1, FULL_PRECISION)
        if bits not in SUPPORTED_BITS:
            raise fields.error(
                f"layer '{name}' act_bits must be 1-16 or {FULL_PRECISION}, got {bits}"
            )
        if bits < FULL_PRECISION and not calibrated:
            raise fields.error(f"layer '{name}' quantizes its input but the file has no ranges")
        out.append(bits)
    return out


def load_compressed(
    path: str | os.PathLike[str], model: nn.Module, example_input: torch.Tensor
) -> nn.Module:
    """Rebuild a compressed model from an export (v2 or v1), on a copy of ``model`` (untouched).

    Every decoded field is checked (``jpq_env.export.packing.Fields``) before it is used.

    Raises:
        ExportFormatError: (a ``ValueError``) If the file is missing, is not an export, is
            damaged, or was made for another architecture; the message names the file.
    """
    fields = Fields(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except FileNotFoundError as exc:
        raise ExportFormatError(f"no export at '{path}'") from exc
    except OSError as exc:
        raise ExportFormatError(f"cannot read the export '{path}': {exc}") from exc
    if head in (MAGIC, MAGIC_ZLIB):
        header, tensors = read_container(path)
        if header.get("format") != EXPORT_FORMAT:
            raise ExportFormatError(
                f"'{path}' is a jpq-env export of format {header.get('format')!r}, which this "
                f"version does not read ({EXPORT_FORMAT} or {EXPORT_FORMAT_V1})"
            )
        state = _ungroup_state(fields, header, tensors)
        record: dict[str, Any] = {**header, "state": state}
    else:
        record = _read_v1(path)
        header, tensors = record, {}
    fingerprint = fields.string("'fingerprint'", record.get("fingerprint"))
    layers = fields.table("'layers'", record.get("layers"))
    state = fields.table("'state'", record.get("state"))
    for key, value in state.items():
        fields.tensor(f"state '{key}'", value)
    graph = LayerGraph.from_module(model, example_input)
    if fingerprint != graph.fingerprint:
        raise ExportFormatError(f"'{path}' was exported for another model")
    missing_layers = [n for n in graph.names if n not in layers]
    if missing_layers:
        raise fields.error(f"no entry for layers {missing_layers}")
    ranges = _act_ranges(fields, record.get("act_ranges"), len(graph.names))
    act_bits = _act_bits(fields, layers, graph, bool(ranges))
    compressed = CompressedModel(model, graph, act_ranges=ranges or None)
    out = compressed.module
    try:
        missing, unexpected = out.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ExportFormatError(f"'{path}' does not match the model's tensors: {exc}") from exc
    if set(missing) - _weight_keys(out, graph) - set(aliases(out)) or unexpected:
        raise ExportFormatError(
            f"'{path}' does not match the model's tensors: {unexpected or missing}"
        )
    if record["format"] == EXPORT_FORMAT:
        values = _weights_v2(fields, header, tensors, graph, out)
    else:
        values = _weights_v1(fields, record, graph, out)
    with torch.no_grad():
        for name, weight in values.items():
            cast(nn.Conv2d | nn.Linear, out.get_submodule(name)).weight.copy_(weight)
    compressed.set_activation_bits(act_bits)
    return out
