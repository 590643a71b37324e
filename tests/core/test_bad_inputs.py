"""Bad policies, each refused with an error naming the problem.

Part of the catalogue of bad inputs (``pytest tests -k bad_inputs --collect-only -q`` lists it):
the arguments of ``LayerPolicy`` and ``Policy.uniform``, and policy files that are damaged, edited
by hand, made for another model or missing.
"""

# ruff: noqa: E501 - the catalogue is a table, one case per line
from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from jpq_env import LayerGraph, LayerPolicy, Policy, PolicyError, Task, load_task
from jpq_env.envs import JPQEnv
from tests.nets import PlainNet
from tests.policy_edits import edited, with_field


@pytest.fixture(scope="module")
def env() -> JPQEnv:
    return JPQEnv()


def _good_task() -> Task:
    return load_task("tests.bad_tasks:good")


def _good_graph() -> LayerGraph:
    task = _good_task()
    return LayerGraph.from_module(task.model, task.example_input)


POLICY_ARGUMENTS = [
    pytest.param(lambda: LayerPolicy("conv", [2.7, 4]), r"layer 'conv': bits must be integer widths, got dtype float64", id="layer-policy-float-bits"),
    pytest.param(lambda: LayerPolicy("conv", [True, False]), "bits must be integer widths, got dtype bool", id="layer-policy-bool-bits"),
    pytest.param(lambda: LayerPolicy("conv", [4], act_bits=8.0), r"layer 'conv': act_bits must be an integer, got 8.0", id="layer-policy-float-act-bits"),
    pytest.param(lambda: Policy.uniform(_good_graph(), True), "w_bits must be an integer >= 0, got True", id="policy-uniform-bool-width"),
    pytest.param(lambda: Policy.uniform(_good_graph(), 4, 0), "a_bits must be an integer >= 1, got 0", id="policy-uniform-zero-act-bits"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "message"), POLICY_ARGUMENTS)
def test_bad_policy_argument_is_named(build, message):
    with pytest.raises(PolicyError, match=message):
        build()


@pytest.fixture(scope="module")
def policy_json(env: JPQEnv) -> dict[str, Any]:
    return Policy.uniform(env.graph, 8, 8, env.conventions).to_json()


POLICIES = [
    pytest.param(lambda d: json.dumps(d)[: len(json.dumps(d)) // 2], PolicyError, "is not valid JSON", id="policy-truncated"),
    pytest.param(lambda d: "", PolicyError, "is not valid JSON", id="policy-empty-file"),
    pytest.param(lambda d: "[1, 2]", PolicyError, "not a jpq-env policy", id="policy-not-an-object"),
    pytest.param(with_field(("schema",), 2), PolicyError, r"schema 1 expected", id="policy-other-schema"),
    pytest.param(with_field(("fingerprint",), None), PolicyError, "needs a 'fingerprint' string", id="policy-no-fingerprint"),
    pytest.param(with_field(("layers",), []), PolicyError, "non-empty 'layers' list", id="policy-no-layers"),
    pytest.param(with_field(("layers", 0, "bits", 0), "8"), PolicyError, r"layer entry 0: needs .*'bits' \(non-empty list of integers\)", id="policy-bits-as-strings"),
    pytest.param(with_field(("layers", 1, "act_bits"), 8.0), PolicyError, r"layer entry 1: needs .*'act_bits' \(integer\)", id="policy-float-act-bits"),
    pytest.param(with_field(("layers", 1, "bits", 0), 2**40), PolicyError, r"layer entry 1 \('conv2'\): bit-widths out of range", id="policy-huge-bits"),
    pytest.param(with_field(("layers", 1, "bits", 0), -1), PolicyError, r"'conv2': weight bit-width -1 is outside", id="policy-negative-bits"),
    pytest.param(with_field(("layers", 1, "bits", 0), 33), PolicyError, r"'conv2': weight bit-width 33 is outside", id="policy-bits-above-32"),
    pytest.param(with_field(("layers", 1, "act_bits"), 0), PolicyError, r"'conv2': activation bit-width 0 is not supported", id="policy-act-bits-zero"),
    pytest.param(edited(lambda d: d["layers"][1]["bits"].pop()), PolicyError, r"'conv2': expected \d+ bit-widths, got", id="policy-kernel-missing"),
    pytest.param(edited(lambda d: d["layers"].pop(1)), PolicyError, "made for another model: its layers", id="policy-layer-missing"),
    pytest.param(with_field(("layers", 1, "name"), "conv9"), PolicyError, "made for another model: its layers", id="policy-layer-renamed"),
    pytest.param(with_field(("fingerprint",), "0" * 16), PolicyError, "made for another model: same layer names, other shapes", id="policy-fingerprint-edited"),
    pytest.param(edited(lambda d: d["layers"][-1]["bits"].__setitem__(0, 0)), PolicyError, "produces the network's output: its kernels cannot be pruned", id="policy-output-pruned"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "error", "message"), POLICIES)
def test_bad_policy_file_is_named(tmp_path, env: JPQEnv, policy_json, edit, error, message):
    path = tmp_path / "policy.json"
    path.write_text(edit(policy_json))
    with pytest.raises(error, match=message):
        Policy.load(path).validate(env.graph)


def test_the_policy_control_is_good(tmp_path, env: JPQEnv, policy_json):
    (tmp_path / "policy.json").write_text(json.dumps(policy_json))
    Policy.load(tmp_path / "policy.json").validate(env.graph)


def test_policy_for_another_model_is_named(tmp_path, policy_json):
    other = LayerGraph.from_module(PlainNet(), torch.randn(1, 3, 8, 8))
    (tmp_path / "policy.json").write_text(json.dumps(policy_json))
    with pytest.raises(PolicyError, match=r"made for another model: its layers \['conv1', 'conv2'"):
        Policy.load(tmp_path / "policy.json").validate(other)


def test_missing_policy_path_is_named(tmp_path):
    with pytest.raises(
        PolicyError, match=r"cannot read policy file '.*nowhere.json': No such file"
    ):
        Policy.load(tmp_path / "nowhere.json")
