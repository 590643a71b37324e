"""Exporting a compressed model: bit-packed integer weights, per-kernel scales, activation ranges.

``export_compressed`` writes format ``jpq-compressed-v2``: a byte container
(``jpq_env.export.packing``: a JSON header and one blob, nothing that must be unpickled) in which
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

import os
import pickle
import re
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from jpq_env.atomic import save_atomic
from jpq_env.core.compress import CompressedModel
from jpq_env.core.graph import LayerGraph, LayerInfo, Liveness
from jpq_env.core.policy import Policy
from jpq_env.core.quant import FULL_PRECISION, ActRange
from jpq_env.export.packing import (
    MAGIC,
    ExportFormatError,
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
    "save_atomic",
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
    weights = {f"{name}.weight" for name in graph.names}
    state = {k: v for k, v in module.state_dict().items() if k not in weights}
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


def _group_by_dtype(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state's tensors flattened into one tensor per dtype (``state/float32`` ...)."""
    groups: dict[str, list[torch.Tensor]] = {}
    for v in state.values():
        groups.setdefault(f"state/{str(v.dtype).removeprefix('torch.')}", []).append(v.reshape(-1))
    return {k: torch.cat(v) for k, v in groups.items()}


def _ungroup_state(
    path: str | os.PathLike[str], header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Split ``_group_by_dtype``'s tensors back into the state's named tensors."""
    readers: dict[str, _Reader] = {}
    state = {}
    try:
        for key, dtype, shape in header["state"]:
            name = f"state/{dtype}"
            if name not in tensors:
                raise ExportFormatError(f"'{path}' is damaged: it has no '{name}' tensor")
            reader = readers.setdefault(name, _Reader(path, name, tensors[name]))
            state[str(key)] = reader.take(int(np.prod(shape, dtype=np.int64))).reshape(shape)
    except (TypeError, ValueError, KeyError) as exc:
        raise ExportFormatError(f"'{path}' has a damaged state table: {exc}") from exc
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


def _read_v1(path: str | os.PathLike[str]) -> dict[str, Any]:
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


def _weights_v1(
    record: dict[str, Any], graph: LayerGraph, out: nn.Module
) -> dict[str, torch.Tensor]:
    weights = {}
    for name in graph.names:
        entry = record["layers"][name]
        layer = cast(nn.Conv2d | nn.Linear, out.get_submodule(name))
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        weight = entry["codes"].float() * entry["scales"].reshape(shape)
        weight[entry["full_index"]] = entry["full_rows"]
        weights[name] = weight
    return weights


class _Reader:
    """Takes consecutive slices of one of the v2 file's concatenated tensors, checking sizes."""

    def __init__(self, path: str | os.PathLike[str], name: str, tensor: torch.Tensor) -> None:
        self.path, self.name, self.tensor, self.at = path, name, tensor.reshape(-1), 0

    def take(self, n: int) -> torch.Tensor:
        if self.at + n > self.tensor.numel():
            raise ExportFormatError(
                f"'{self.path}' is damaged: '{self.name}' holds {self.tensor.numel()} values, "
                f"fewer than its layers need"
            )
        self.at += n
        return self.tensor[self.at - n : self.at]

    def done(self) -> None:
        if self.at != self.tensor.numel():
            raise ExportFormatError(
                f"'{self.path}' is damaged: '{self.name}' holds {self.tensor.numel()} values, "
                f"its layers use {self.at}"
            )


def _weights_v2(
    path: str | os.PathLike[str],
    header: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    graph: LayerGraph,
    out: nn.Module,
) -> dict[str, torch.Tensor]:
    for key in ("bits", "payload", "scales", "full"):
        if key not in tensors:
            raise ExportFormatError(f"'{path}' is damaged: it has no '{key}' tensor")
    bits_all = _Reader(path, "bits", tensors["bits"])
    payload = _Reader(path, "payload", tensors["payload"])
    scales_all = _Reader(path, "scales", tensors["scales"])
    full_all = _Reader(path, "full", tensors["full"])
    layer_bits = [bits_all.take(x.out_channels).long() for x in graph.layers]
    bits_all.done()
    live = graph.liveness([b.numpy() > 0 for b in layer_bits])
    weights = {}
    for info, bits in zip(graph.layers, layer_bits, strict=True):
        entry = header["layers"][info.name]
        bad = sorted(set(bits.tolist()) - {*range(17), FULL_PRECISION})
        if bad:
            raise ExportFormatError(f"'{path}' is damaged: layer '{info.name}' has widths {bad}")
        layer = cast(nn.Conv2d | nn.Linear, out.get_submodule(info.name))
        masks = input_masks(info, live, bool(entry["all_inputs"]))
        area = int(np.prod(layer.weight.shape[2:], dtype=np.int64))
        quantized = [k for k, b in enumerate(bits.tolist()) if 1 <= b < FULL_PRECISION]
        wide = set(entry["binary_as_2_bits"])
        widths = [2 if k in wide else int(bits[k]) for k in quantized]
        counts = [int(masks[k].sum()) * area for k in quantized]
        packed = payload.take(int(entry["payload_bytes"])).numpy()
        try:
            levels = unpack_levels(packed, counts, widths)
        except ValueError as exc:
            raise ExportFormatError(f"'{path}' is damaged: layer '{info.name}': {exc}") from exc
        weight = torch.zeros(layer.weight.shape)
        for k, values in zip(quantized, levels, strict=True):
            mask = torch.from_numpy(masks[k])
            rows = torch.from_numpy(values).reshape(-1, *layer.weight.shape[2:])
            weight[k][mask] = rows.float() * scales_all.take(1)
        for k in (k for k, b in enumerate(bits.tolist()) if b >= FULL_PRECISION):
            mask = torch.from_numpy(masks[k])
            weight[k][mask] = full_all.take(int(mask.sum()) * area).reshape(
                -1, *layer.weight.shape[2:]
            )
        weights[info.name] = weight
    for reader in (payload, scales_all, full_all):
        reader.done()
    return weights


def load_compressed(
    path: str | os.PathLike[str], model: nn.Module, example_input: torch.Tensor
) -> nn.Module:
    """Rebuild a compressed model from an export (v2 or v1), on a copy of ``model`` (untouched).

    Raises:
        ExportFormatError: (a ``ValueError``) If the file is missing, is not an export, is
            damaged, or was made for another architecture; the message names the file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except FileNotFoundError as exc:
        raise ExportFormatError(f"no export at '{path}'") from exc
    except OSError as exc:
        raise ExportFormatError(f"cannot read the export '{path}': {exc}") from exc
    if head == MAGIC:
        header, tensors = read_container(path)
        if header.get("format") != EXPORT_FORMAT:
            raise ExportFormatError(
                f"'{path}' is a jpq-env export of format {header.get('format')!r}, which this "
                f"version does not read ({EXPORT_FORMAT} or {EXPORT_FORMAT_V1})"
            )
        state = _ungroup_state(path, header, tensors)
        record: dict[str, Any] = {**header, "state": state}
    else:
        record = _read_v1(path)
    try:
        fingerprint, act_ranges = record["fingerprint"], record["act_ranges"]
        ranges = [ActRange(float(lo), float(hi)) for lo, hi in act_ranges]
        layers = record["layers"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportFormatError(f"'{path}' is damaged: {type(exc).__name__}: {exc}") from exc
    graph = LayerGraph.from_module(model, example_input)
    if fingerprint != graph.fingerprint:
        raise ExportFormatError(f"'{path}' was exported for another model")
    missing_layers = [n for n in graph.names if n not in layers]
    if missing_layers or (ranges and len(ranges) != len(graph.names)):
        raise ExportFormatError(
            f"'{path}' is damaged: no entry for layers {missing_layers} or "
            f"{len(ranges)} activation ranges for {len(graph.names)} layers"
        )
    compressed = CompressedModel(model, graph, act_ranges=ranges or None)
    out = compressed.module
    try:
        missing, unexpected = out.load_state_dict(record["state"], strict=False)
    except RuntimeError as exc:
        raise ExportFormatError(f"'{path}' does not match the model's tensors: {exc}") from exc
    weights = {f"{name}.weight" for name in graph.names}
    if set(missing) != weights or unexpected:
        raise ExportFormatError(
            f"'{path}' does not match the model's tensors: {unexpected or missing}"
        )
    try:
        if record["format"] == EXPORT_FORMAT:
            values = _weights_v2(path, header, tensors, graph, out)
        else:
            values = _weights_v1(record, graph, out)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ExportFormatError(f"'{path}' is damaged: {type(exc).__name__}: {exc}") from exc
    with torch.no_grad():
        for name, weight in values.items():
            cast(nn.Conv2d | nn.Linear, out.get_submodule(name)).weight.copy_(weight)
    compressed.set_activation_bits([int(layers[n]["act_bits"]) for n in graph.names])
    return out
