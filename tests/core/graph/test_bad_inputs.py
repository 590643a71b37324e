"""Models that would compress to a wrong result without a word, refused wherever a model enters.

Part of the catalogue of bad inputs (``pytest tests -k bad_inputs --collect-only -q`` lists it):
each model of ``tests.bad_tasks`` with one defect is refused by the layer graph, ``make_task``, the
evaluator and the environment alike, and left as it was.
"""

# ruff: noqa: E501 - the catalogue is a table, one case per line
from __future__ import annotations

import pytest
import torch

from jpq_env import GraphError, LayerGraph, LocalEvaluator, make_task
from jpq_env.envs import JPQEnv
from tests import bad_tasks

# Models that would compress to a wrong result without a word: refused wherever a model enters.
MODELS = [
    pytest.param("nan_weight", r"NaN or inf in 1 tensor: '0.weight' \(1 NaN of 108\)", id="model-nan-weight"),
    pytest.param("inf_buffer", r"NaN or inf in 1 tensor: '1.running_var' \(1 inf of 4\)", id="model-inf-buffer"),
    pytest.param("shared_weight", r"the weight of layer 'a' is the same tensor as b.weight .*model.a.weight = torch.nn.Parameter", id="model-shared-weight"),
    pytest.param("tied_to_uncompressed", "the weight of layer 'conv' is the same tensor as up.weight", id="model-weight-tied-to-uncompressed"),
    pytest.param("weight_read_in_forward", r"'fc.weight' is read directly in forward\(\)", id="model-weight-read-in-forward"),
    pytest.param("weight_normed", r"layer '0' has a parametrization on 'weight' \(_WeightNorm.*remove_parametrizations\(model.get_submodule\('0'\), 'weight'\)", id="model-parametrized-weight-norm"),
    pytest.param("old_weight_norm", r"old-style torch.nn.utils.weight_norm hook.*remove_weight_norm\(model.get_submodule\('0'\)\)", id="model-old-weight-norm"),
    pytest.param("old_spectral_norm", r"old-style torch.nn.utils.spectral_norm hook.*remove_spectral_norm", id="model-old-spectral-norm"),
    pytest.param("called_twice", "module 'conv' is called more than once", id="model-module-called-twice"),
    pytest.param("untraceable", "cannot trace the model with torch.fx", id="model-untraceable"),
]  # fmt: skip


ENTRY_POINTS = {
    "graph": lambda name, t: LayerGraph.from_module(t.model, t.example_input),
    "make-task": lambda name, t: make_task(t.model, train=t.train, test=t.test, val_size=4, calib_size=4),
    "evaluator": lambda name, t: LocalEvaluator(t, device="cpu"),
    "env": lambda name, t: JPQEnv(task=f"tests.bad_tasks:{name}", budget_bops=0.5),
}  # fmt: skip


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize(("factory", "message"), MODELS)
def test_bad_model_is_refused_wherever_it_enters(factory, message, entry):
    task = getattr(bad_tasks, factory)()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    with pytest.raises(GraphError, match=message):
        ENTRY_POINTS[entry](factory, task)
    after = task.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(v, after[k]) or v.isnan().any() for k, v in before.items())


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_the_bad_model_control_is_good(entry):
    ENTRY_POINTS[entry]("good", bad_tasks.good())
