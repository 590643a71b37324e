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
from tests.episodes import episode_actions, rollout

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
    pytest.param("batchnorm_applied_twice", r"BatchNorm 'bn' is applied more than once in forward\(\)", id="model-batchnorm-applied-twice"),
    pytest.param("overflowing_output", r"FP32 outputs on the example input hold 4 NaN or inf values \(of 4\)", id="model-overflowing-output"),
    pytest.param("nan_output", r"FP32 outputs on the example input hold 4 NaN or inf values", id="model-nan-from-forward"),
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


@pytest.mark.parametrize("entry", ["evaluator", "env"])
def test_bad_inputs_a_model_with_nan_on_some_held_out_images_is_refused(entry):
    """Finite on the example input, so the graph accepts it; the proxy checks every image."""
    task = bad_tasks.nan_on_some_held_out_images()
    LayerGraph.from_module(task.model, task.example_input)
    with pytest.raises(GraphError, match=r"FP32 outputs on the held-out images .* hold \d+ NaN"):
        if entry == "evaluator":
            LocalEvaluator(task, device="cpu").fp32_accuracy  # noqa: B018 - computed on access
        else:  # the first episode's reward needs the FP32 score
            env = JPQEnv(task="tests.bad_tasks:nan_on_some_held_out_images", budget_bops=0.5)
            rollout(env, episode_actions(env, 0))


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_bad_inputs_a_model_on_the_meta_device_is_named(entry):
    task = bad_tasks.on_meta_device()
    with pytest.raises(GraphError, match=r"on the meta device .*model.to_empty"):
        ENTRY_POINTS[entry]("on_meta_device", task)


def test_a_conv3d_inside_a_model_with_4d_inputs_is_scored_like_the_model():
    """No channels-last layout for a 5-D weight: the proxy keeps the standard one."""
    task = bad_tasks.conv3d_inside()
    ev = LocalEvaluator(task, device="cpu", bn_recalibration=False)
    x = torch.stack([x for x, _ in task.val])
    y = torch.tensor([int(y) for _, y in task.val])
    with torch.no_grad():
        expected = float((task.model(x).argmax(1) == y).double().mean())
    assert ev.fp32_accuracy == expected
    assert ev.graph.names == ("conv", "fc")
    assert [u.name for u in ev.graph.uncompressed] == ["volume"]
