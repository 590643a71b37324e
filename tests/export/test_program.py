"""The torch program of a compressed model: integer levels and scales, dequantized in the graph."""

from __future__ import annotations

import zipfile

import numpy as np
import torch

from jpq_env.core.policy import LayerPolicy, Policy
from jpq_env.export.program import export_program
from jpq_env.export.pruned import load_pruned, pruned_module, save_pruned, weight_count
from jpq_env.proxy.evaluator import LocalEvaluator
from jpq_env.tasks.registry import load_task


def _stored_weight_bytes(path) -> int:
    """Bytes of the tensors a ``torch.export`` archive stores (its ``data/weights`` entries)."""
    with zipfile.ZipFile(path) as archive:
        return sum(
            i.file_size
            for i in archive.infolist()
            if "/data/weights/" in i.filename and not i.filename.endswith(".json")
        )


def test_the_program_stores_levels_and_computes_the_compressed_logits(tmp_path):
    task = load_task("digits")
    ev = LocalEvaluator(task, device="cpu")
    rng = np.random.default_rng(0)
    layers = []
    for info in ev.graph.layers:
        bits = rng.choice([2, 4, 8], size=info.out_channels)
        if info.index not in ev.graph.output_layers:
            bits[rng.random(info.out_channels) < 0.3] = 0
        layers.append(LayerPolicy(info.name, bits, 8))
    policy = Policy(tuple(layers), ev.graph.fingerprint)
    path = tmp_path / "m.pt2"
    size = export_program(ev, policy, path)
    assert size == path.stat().st_size
    x = torch.stack([task.test[i][0] for i in range(len(task.test))])
    with torch.no_grad():
        expected = ev.prepare(policy)(x)
        got = load_pruned(path)(x)
    # the weights are bitwise the compressed model's; activations may differ at a rounding edge
    assert (got.argmax(1) != expected.argmax(1)).sum() <= 1
    assert (got - expected).abs().mean() <= 2.0**-8 * expected.abs().mean()
    # stored: one byte a level (int8 containers), not four (float): under half the float program
    pruned = pruned_module(ev, policy)
    floats = tmp_path / "float.pt2"
    save_pruned(pruned, task.example_input, floats)
    stored, float_stored = _stored_weight_bytes(path), _stored_weight_bytes(floats)
    assert float_stored >= 4 * weight_count(pruned)
    assert stored < weight_count(pruned) * 1.5 < float_stored / 2
