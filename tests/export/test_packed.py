"""Bit-packed exports (format v2): sizes at the cost model's figure, exact reloads, clear errors."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from jpq_env import load_task
from jpq_env.atomic import save_atomic
from jpq_env.core.costs import measure
from jpq_env.core.policy import LayerPolicy, Policy
from jpq_env.export.packed import (
    ExportFormatError,
    _v1_record,
    export_compressed,
    input_masks,
    load_compressed,
)
from jpq_env.export.packing import (
    MAGIC,
    MAGIC_ZLIB,
    MAX_HEADER_BYTES,
    join_container,
    pack_levels,
    split_container,
    unpack_levels,
)
from jpq_env.proxy.data import top1
from jpq_env.proxy.evaluator import LocalEvaluator


def test_levels_round_trip_at_every_width():
    rng = np.random.default_rng(0)
    widths = [1, 2, 3, 5, 7, 8, 11, 16, 3, 2]
    levels = []
    for w in widths:
        q = 1 if w == 1 else 2 ** (w - 1) - 1
        v = rng.integers(-q, q + 1, size=int(rng.integers(1, 40)))
        levels.append(np.where(v == 0, 1, v) if w == 1 else v)
    packed = pack_levels(levels, widths)
    bits = sum(len(v) * w for v, w in zip(levels, widths, strict=True))
    assert packed.dtype == np.uint8 and packed.size == math.ceil(bits / 8)
    back = unpack_levels(packed, [len(v) for v in levels], widths)
    for a, b in zip(levels, back, strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="do not fit 3 bits"):
        pack_levels([np.array([4])], [3])
    with pytest.raises(ValueError, match="bytes"):
        unpack_levels(packed[:-1], [len(v) for v in levels], widths)


@pytest.fixture(scope="module")
def digits():
    task = load_task("digits")
    return task, LocalEvaluator(task, device="cpu")


def _half_pruned(evaluator: LocalEvaluator, w_bits: int) -> Policy:
    graph = evaluator.graph
    base = Policy.uniform(graph, w_bits, 8)
    layers = []
    for info, lp in zip(graph.layers, base.layers, strict=True):
        prune = (np.arange(info.out_channels) % 2 == 1) & (info.index not in graph.output_layers)
        layers.append(LayerPolicy(lp.name, np.where(prune, 0, lp.bits), lp.act_bits))
    return Policy(tuple(layers), base.fingerprint)


def _mixed(evaluator: LocalEvaluator) -> Policy:
    """Widths 0 (not on output layers), 1, 2, 3, 5, 8, 16 and 32 mixed inside every layer."""
    graph = evaluator.graph
    rng = np.random.default_rng(1)
    layers = []
    for info in graph.layers:
        choices = [1, 2, 3, 5, 8, 16, 32] + ([] if info.index in graph.output_layers else [0, 0])
        bits = rng.choice(choices, size=info.out_channels)
        layers.append(LayerPolicy(info.name, bits, int(rng.choice([4, 8, 32]))))
    return Policy(tuple(layers), graph.fingerprint)


@pytest.mark.parametrize("w_bits", [8, 2])
def test_uniform_payload_is_the_size_model(digits, tmp_path, w_bits):
    _, evaluator = digits
    policy = Policy.uniform(evaluator.graph, w_bits, 8)
    info = export_compressed(evaluator, policy, tmp_path / "m.jpq")
    size = measure(evaluator.graph, policy).size_bits / 8
    assert info["payload_bytes"] == math.ceil(size)
    assert (tmp_path / "m.jpq").stat().st_size == info["file_bytes"]
    # Beside the payload: a scale per kernel, the BN/bias state and a small header.
    overhead = (
        info["file_bytes"] - info["payload_bytes"] - info["scale_bytes"] - info["state_bytes"]
    )
    assert 0 < overhead < 3000


def test_pruned_kernels_and_their_consumers_inputs_store_nothing(digits, tmp_path):
    _, evaluator = digits
    policy = _half_pruned(evaluator, 4)
    info = export_compressed(evaluator, policy, tmp_path / "m.jpq")
    per_layer = [c.size_bits for c in measure(evaluator.graph, policy).layers]
    assert info["payload_bytes"] == sum(math.ceil(b / 8) for b in per_layer)
    assert info["file_bytes"] < 12_000  # 67,719 bytes in format v1


@pytest.mark.parametrize("make", [_mixed, lambda ev: _half_pruned(ev, 3)])
def test_reload_is_bitwise_the_compressed_weights(digits, tmp_path, make):
    task, evaluator = digits
    policy = make(evaluator)
    export_compressed(evaluator, policy, tmp_path / "m.jpq")
    save_atomic(_v1_record(evaluator, policy), tmp_path / "old.pt")
    new = load_compressed(tmp_path / "m.jpq", task.model, task.example_input)
    old = load_compressed(tmp_path / "old.pt", task.model, task.example_input)  # v1 still read
    graph = evaluator.graph
    live = graph.liveness(policy.kept())
    for info in graph.layers:
        a, b = new.get_submodule(info.name).weight, old.get_submodule(info.name).weight
        mask = torch.from_numpy(input_masks(info, live))
        assert torch.equal(a[mask], b[mask]), info.name
        assert not a[~mask].any(), info.name  # inputs that carry a zero channel: zeros
    for key, value in old.state_dict().items():
        if not key.endswith(".weight") or key.rsplit(".", 1)[0] not in graph.names:
            assert torch.equal(new.state_dict()[key], value), key
    x = task.test.tensors[0]
    with torch.no_grad():
        assert torch.equal(new(x), old(x))
    assert top1(new, task.test) == evaluator.test_accuracy(policy)


def _export(digits, tmp_path: Path) -> Path:
    _, evaluator = digits
    path = tmp_path / "m.jpq"
    export_compressed(evaluator, Policy.uniform(evaluator.graph, 4, 8), path)
    return path


def test_damaged_and_foreign_files_are_named(digits, tmp_path):
    task, _ = digits
    path = _export(digits, tmp_path)
    data = path.read_bytes()

    def load(raw: bytes, name: str = "bad.jpq") -> None:
        bad = tmp_path / name
        bad.write_bytes(raw)
        load_compressed(bad, task.model, task.example_input)

    with pytest.raises(ExportFormatError, match=r"'.*bad.jpq' is truncated"):
        load(data[: len(MAGIC) + 4])
    with pytest.raises(ExportFormatError, match=r"'.*bad.jpq' is damaged: tensor 'state/int64'"):
        load(data[:-10])
    with pytest.raises(ExportFormatError, match="damaged header"):
        load(data[: len(MAGIC) + 8] + b"}" + data[len(MAGIC) + 9 :])
    with pytest.raises(ExportFormatError, match="format 'jpq-compressed-v9'"):
        header, blob = split_container("export", data)
        load(join_container({**header, "format": "jpq-compressed-v9"}, blob))
    with pytest.raises(ExportFormatError, match="not a readable jpq-env export"):
        load(b"GIF89a" + bytes(100))
    with pytest.raises(ValueError, match="exported for another model"):
        other = load_task("digits-deep")
        load_compressed(path, other.model, other.example_input)


def test_a_broken_export_is_named(tmp_path):
    task = load_task("digits")
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable jpq-env export"):
        load_compressed(bad, task.model, task.example_input)
    with pytest.raises(ValueError, match="no export at"):
        load_compressed(tmp_path / "missing.pt", task.model, task.example_input)


def test_a_layer_registered_under_two_names_is_stored_once(digits, tmp_path):
    import copy
    import dataclasses

    task, evaluator = digits
    graph = evaluator.graph
    aliased = copy.deepcopy(task.model)
    first, last = graph.names[0], graph.names[-1]
    aliased.alias = aliased.get_submodule(last)  # the classifier, reachable by a second name
    aliased.stem = aliased.get_submodule(first)
    aliased_task = dataclasses.replace(task, model=aliased)
    aliased_eval = LocalEvaluator(aliased_task, device="cpu")
    assert aliased_eval.graph.fingerprint == graph.fingerprint
    policy = _half_pruned(evaluator, 4)
    plain = export_compressed(evaluator, policy, tmp_path / "plain.jpq")
    doubled = export_compressed(aliased_eval, policy, tmp_path / "aliased.jpq")
    assert doubled["state_bytes"] == plain["state_bytes"]  # no FP32 weight shipped again
    assert doubled["file_bytes"] - plain["file_bytes"] < 200  # a longer header, nothing more
    back = load_compressed(tmp_path / "aliased.jpq", aliased, task.example_input)
    assert back.alias is back.get_submodule(last)  # the sharing restored
    x = torch.stack([aliased_eval.task.val[i][0] for i in range(64)])
    expected = aliased_eval.prepare(policy)(x)
    assert torch.equal(back(x), expected)


def test_the_header_is_compressed_and_plain_headers_still_load(digits, tmp_path):
    task, _ = digits
    path = _export(digits, tmp_path)
    data = path.read_bytes()
    assert data.startswith(MAGIC_ZLIB)
    header, blob = split_container(path, data)
    plain = join_container(header, blob, compress=False)
    assert plain.startswith(MAGIC) and len(plain) - len(data) > len(json.dumps(header)) // 2
    old = tmp_path / "plain.jpq"
    old.write_bytes(plain)
    x = task.example_input
    with torch.no_grad():
        a = load_compressed(path, task.model, x)(x)
        b = load_compressed(old, task.model, x)(x)
    assert torch.equal(a, b)
    # a header that inflates past the limit is refused before it is parsed
    bomb = tmp_path / "bomb.jpq"
    text = zlib.compress(b" " * (MAX_HEADER_BYTES + 10), 9)
    bomb.write_bytes(MAGIC_ZLIB + struct.pack("<Q", len(text)) + text + blob)
    with pytest.raises(ExportFormatError, match="does not decompress to at most"):
        load_compressed(bomb, task.model, x)
