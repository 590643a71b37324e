"""Exporting a compressed model: integer weights, per-kernel scales, masks, activation ranges.

``export_compressed`` writes what a deployment needs and nothing that must be unpickled: a dict
of tensors, numbers and strings, loadable with ``torch.load(path, weights_only=True)``. For every
compressible layer it stores each kernel's width (0 = pruned), its integer levels (int8 when every
width is at most 8, else int16) and scale, and the float rows of full-precision kernels; the rest
of the state (biases, BatchNorm statistics after re-calibration) is stored as it was evaluated.
``load_compressed`` rebuilds the model from that file: its test accuracy equals the one
``LocalEvaluator.test_accuracy`` reports for the policy.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, cast

import torch
from torch import nn

from jpq_env.atomic import save_atomic
from jpq_env.compress import CompressedModel
from jpq_env.evaluate import LocalEvaluator
from jpq_env.graph import LayerGraph
from jpq_env.policy import Policy
from jpq_env.quant import FULL_PRECISION, ActRange

__all__ = ["EXPORT_FORMAT", "export_compressed", "load_compressed", "save_atomic"]

EXPORT_FORMAT = "jpq-compressed-v1"


def export_compressed(
    evaluator: LocalEvaluator, policy: Policy, path: str | os.PathLike[str]
) -> dict[str, Any]:
    """Write the model compressed by ``policy`` to ``path`` (atomically) and return the record."""
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
    ranges = cm.act_ranges or []
    record = {
        "format": EXPORT_FORMAT,
        "fingerprint": graph.fingerprint,
        "layers": layers,
        "state": state,
        "act_ranges": [[r.lo, r.hi] for r in ranges],
    }
    save_atomic(record, path)
    return record


def load_compressed(
    path: str | os.PathLike[str], model: nn.Module, example_input: torch.Tensor
) -> nn.Module:
    """Rebuild a compressed model from an export, on a copy of ``model`` (left untouched).

    Raises:
        ValueError: If the file is not an export or was made for another architecture.
    """
    try:
        record = torch.load(path, weights_only=True)
    except FileNotFoundError as exc:
        raise ValueError(f"no export at '{path}'") from exc
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused is None:  # not a torch file at all
            raise ValueError(f"'{path}' is not a readable jpq-env export: {exc}") from exc
        # weights_only refused to build an object: nothing from the file was run.
        raise ValueError(
            f"'{path}' is not a jpq-env export: it holds Python objects that loading would have to "
            f"unpickle ({refused.group(1)}), which could run code; refused, nothing was executed"
        ) from exc
    except Exception as exc:  # truncated, hand-edited or not a torch file at all
        raise ValueError(f"'{path}' is not a readable jpq-env export: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        raise ValueError(f"'{path}' is not a jpq-env export ({EXPORT_FORMAT})")
    graph = LayerGraph.from_module(model, example_input)
    if record["fingerprint"] != graph.fingerprint:
        raise ValueError(f"'{path}' was exported for another model")
    ranges = [ActRange(lo, hi) for lo, hi in record["act_ranges"]]
    compressed = CompressedModel(model, graph, act_ranges=ranges or None)
    out = compressed.module
    missing, unexpected = out.load_state_dict(record["state"], strict=False)
    weights = {f"{name}.weight" for name in graph.names}
    if set(missing) != weights or unexpected:
        raise ValueError(f"'{path}' does not match the model's tensors: {unexpected or missing}")
    with torch.no_grad():
        for name in graph.names:
            entry = record["layers"][name]
            layer = cast(nn.Conv2d | nn.Linear, out.get_submodule(name))
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            weight = entry["codes"].float() * entry["scales"].reshape(shape)
            weight[entry["full_index"]] = entry["full_rows"]
            layer.weight.copy_(weight)
    compressed.set_activation_bits([record["layers"][n]["act_bits"] for n in graph.names])
    return out
