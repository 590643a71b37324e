"""Quantization-aware fine-tuning: learned steps from the proxy's quantizers, distillation,
per-epoch checkpoints that resume to the same numbers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from jpq_env.core.policy import LayerPolicy, Policy
from jpq_env.proxy.evaluator import LocalEvaluator
from jpq_env.proxy.finetune import finetune, quantization_aware
from jpq_env.tasks.registry import load_task


@pytest.fixture(scope="module")
def digits():
    task = load_task("digits")
    return task, LocalEvaluator(task, device="cpu", val_images=200)


def _policy(ev: LocalEvaluator, act: int, seed: int = 0) -> Policy:
    rng = np.random.default_rng(seed)
    layers = []
    for info in ev.graph.layers:
        bits = rng.choice([1, 2, 4, 8, 32], size=info.out_channels)
        if info.index not in ev.graph.output_layers:
            bits[rng.random(info.out_channels) < 0.3] = 0
        layers.append(LayerPolicy(info.name, bits, act))
    return Policy(tuple(layers), ev.graph.fingerprint)


@pytest.mark.parametrize("act", [3, 8, 32])
def test_learned_steps_start_at_the_compressed_model(digits, act):
    task, ev = digits
    policy = _policy(ev, act)
    x = torch.stack([task.test[i][0] for i in range(256)])
    with torch.no_grad():
        expected = ev.prepare(policy)(x)
    with quantization_aware(ev, policy) as (module, acts), torch.no_grad():
        got = module(x)
    assert torch.equal(got, expected)  # steps from the proxy's quantizers: the same numbers
    assert len(acts) == (len(ev.graph.layers) if act < 32 else 0)
    with torch.no_grad():
        assert torch.equal(ev.prepare(policy)(x), expected)  # everything removed on exit


def test_fine_tuning_learns_steps_and_keeps_masks_and_the_model(digits):
    task, ev = digits
    policy = _policy(ev, 4, seed=1)
    original = {k: v.clone() for k, v in task.model.state_dict().items()}
    before = ev.test_accuracy(policy)
    result = finetune(ev, policy, epochs=1, batch_size=128)
    (epoch,) = result.history
    assert epoch["epoch"] == 1 and 0.0 <= epoch["val"] <= 1.0 and epoch["loss"] > 0
    assert result.accuracy_before == before and result.accuracy_after == epoch["test"]
    assert result.accuracy_after > before  # W1-W32 mixed with 4-bit inputs: training helps
    live = ev.graph.liveness(policy.kept())
    for info in ev.graph.layers:
        dead = torch.from_numpy(~live.alive_out[info.index])
        if dead.any():
            assert result.state_dict[f"{info.name}.weight"][dead].abs().max() == 0
    initial = {
        info.name: ev.compressed.act_ranges[info.index].hi / (2**4 - 1) for info in ev.graph.layers
    }
    assert any(abs(result.act_steps[n] - initial[n]) > 1e-6 for n in result.act_steps)
    for k, v in task.model.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, original[k]), k
    assert ev.test_accuracy(policy) == before  # the working copy went back to FP32


def test_checkpoints_resume_to_the_same_numbers(digits, tmp_path):
    _, ev = digits
    policy = _policy(ev, 8, seed=2)
    whole = finetune(ev, policy, epochs=2, batch_size=256, checkpoint_dir=tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["epoch-001.pt", "epoch-002.pt"]
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "epoch-001.pt", tmp_path / "b")  # killed after epoch 1
    resumed = finetune(ev, policy, epochs=2, batch_size=256, checkpoint_dir=tmp_path / "b")
    assert [h["test"] for h in resumed.history] == [h["test"] for h in whole.history]
    for key, value in whole.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), key
    assert resumed.act_steps == whole.act_steps
    # a checkpoint of other settings is refused, naming what differs
    with pytest.raises(ValueError, match=r"another fine-tune \(distill 0.5 there, 0.0 here\)"):
        finetune(ev, policy, epochs=2, batch_size=256, distill=0.0, checkpoint_dir=tmp_path / "a")


def test_the_ste_recipe_is_kept(digits):
    _, ev = digits
    policy = _policy(ev, 8, seed=3)
    result = finetune(ev, policy, epochs=1, batch_size=256, recipe="ste")
    assert not result.act_steps and len(result.history) == 1


def test_a_small_input_step_never_overshoots_through_zero(digits):
    """The default recipe on a W4 policy with 8-bit image inputs and 5-bit activations: the
    image's activation step (about 0.005) once went negative in the first epoch and zeroed the
    first layer (test top-1 fell to chance); learned in the log domain it stays positive."""
    _, ev = digits
    rng = np.random.default_rng(4)
    layers = []
    for info in ev.graph.layers:
        bits = np.full(info.out_channels, 4)
        if info.index not in ev.graph.output_layers:
            bits[rng.random(info.out_channels) < 0.3] = 0
        layers.append(LayerPolicy(info.name, bits, 8 if info.index == 0 else 5))
    policy = Policy(tuple(layers), ev.graph.fingerprint)
    result = finetune(ev, policy, epochs=1)
    assert all(step > 0 for step in result.act_steps.values())
    assert result.accuracy_after > max(result.accuracy_before, 0.5)


def test_weight_decay_reaches_the_layers_weights_only(digits):
    from jpq_env.proxy.finetune import FinetuneSettings, _optimizer

    _, ev = digits
    policy = _policy(ev, 8, seed=5)
    with quantization_aware(ev, policy) as (module, acts):
        optimizer = _optimizer(module, list(ev.compressed.layers), acts, FinetuneSettings())
        decayed, rest = optimizer.param_groups
        assert decayed["weight_decay"] > 0 and rest["weight_decay"] == 0
        weights = {id(layer.parametrizations.weight.original) for layer in ev.compressed.layers}
        assert {id(p) for p in decayed["params"]} == weights
        trained = {id(p) for p in module.parameters()} | {id(a.log_step) for a in acts.values()}
        assert {id(p) for p in decayed["params"] + rest["params"]} == trained
