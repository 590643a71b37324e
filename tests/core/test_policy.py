"""Policies as data (``jpq_env.core.policy``): keys, JSON round trips and the importance-order
conversion.
"""

import json
import struct

import numpy as np
import pytest

from jpq_env.core.policy import (
    SCHEMA_VERSION,
    LayerPolicy,
    Policy,
    PolicyError,
    bits_from_ranking,
    layer_key,
    record_key,
)


def test_bits_from_ranking_puts_zero_bits_on_the_least_important():
    order = np.array([2, 0, 3, 1])
    assert bits_from_ranking(order, np.array([8, 4, 2, 0])).tolist() == [4, 0, 8, 2]


def _policy() -> Policy:
    return Policy(
        (
            LayerPolicy("conv1", np.array([8, 0, 4, 2]), 8),
            LayerPolicy("conv2", np.array([3, 3, 0], dtype=np.int32), np.int64(4)),
            LayerPolicy("fc", [32, 16], 32),
        ),
        "f" * 16,
    )


def test_layer_key_is_the_activation_width_then_the_widths_as_int64_bytes():
    by_hand = struct.pack("=q", 4) + struct.pack("=3q", 3, 3, 0)
    assert layer_key(4, [3, 3, 0]) == by_hand == _policy().layers[1].key()
    assert _policy().key() == tuple(layer.key() for layer in _policy().layers)


def test_equal_policies_have_equal_keys_and_any_change_changes_the_key():
    policy = _policy()
    assert policy.key() == _policy().key() and policy == _policy()
    layers = list(policy.layers)
    changed = [
        LayerPolicy("conv1", np.array([8, 0, 4, 3]), 8),  # one width
        LayerPolicy("conv1", np.array([8, 0, 4, 2]), 6),  # the activation width
        LayerPolicy("conv1", np.array([8, 4, 0, 2]), 8),  # which kernel is pruned
    ]
    for layer in changed:
        other = Policy((layer, *layers[1:]), policy.fingerprint)
        assert other.key() != policy.key() and other != policy
    assert len({Policy((c, *layers[1:]), "x").key() for c in changed}) == len(changed)


def test_record_key_reads_the_json_forms_of_a_policy():
    policy = _policy()
    layers = policy.to_json()["layers"]
    assert record_key(layers) == policy.key()
    # A log record's entries carry more (sparsity, names): only the widths count.
    logged = [{**entry, "sparsity": 0.5, "extra": "x"} for entry in json.loads(json.dumps(layers))]
    assert record_key(logged) == policy.key()


def test_layer_policy_json_round_trips_with_plain_types():
    layer = _policy().layers[0]
    data = layer.to_json()
    assert data == {"name": "conv1", "act_bits": 8, "bits": [8, 0, 4, 2]}
    assert [type(v) for v in data["bits"]] == [int] * 4 and type(data["act_bits"]) is int
    assert LayerPolicy.from_json(json.loads(json.dumps(data))) == layer
    with_sparsity = layer.to_json(sparsity=True)
    assert list(with_sparsity) == ["name", "sparsity", "act_bits", "bits"]
    assert with_sparsity["sparsity"] == 0.25  # one of four kernels pruned
    assert LayerPolicy.from_json({**with_sparsity, "comment": "ignored"}, 3) == layer
    with pytest.raises(PolicyError, match="layer entry 3: needs 'name'"):
        LayerPolicy.from_json({"name": "x", "act_bits": 8, "bits": []}, 3)


def test_numpy_widths_are_normalised_so_that_policies_compare_and_serialise_alike():
    a = LayerPolicy("conv2", np.array([3, 3, 0], dtype=np.int32), np.int64(4))
    b = LayerPolicy("conv2", [3, 3, 0], 4)
    assert a == b and a.key() == b.key() and a.to_json() == b.to_json()
    assert a.bits.dtype == np.int64 and type(a.act_bits) is int


def test_policy_json_and_file_round_trips(tmp_path):
    policy = _policy()
    data = policy.to_json()
    assert data["schema"] == SCHEMA_VERSION and data["fingerprint"] == "f" * 16
    assert Policy.from_json(json.loads(json.dumps(data))) == policy
    assert Policy.from_layers(data["layers"], policy.fingerprint) == policy
    policy.save(tmp_path / "policy.json")
    assert Policy.load(tmp_path / "policy.json") == policy
    assert json.loads((tmp_path / "policy.json").read_text()) == data
