"""Property-based tests of the environment over random networks and random actions.

On networks drawn by ``tests.generated_nets``, the environment never raises on an action inside
its action space (one fixed activation width, as JPQWeights-v0, or a set, as JPQWeightsActs-v0),
every episode ends within [0, FP32] costs (within budget under the forward wall), the pruned
kernels are exactly zero in the compressed working copy, and the user's model is bitwise the
original after every episode. Few examples and ``deadline=None``: a fast fuzz in CI.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from jpq_env import Task
from jpq_env.envs import JPQEnv
from tests.generated_nets import PROPERTY, NetSpec, build, net_specs


def task_of(spec: NetSpec, seed: int = 0) -> Task:
    model, example = build(spec, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, spec.in_channels, spec.hw, spec.hw, generator=g)
    data = TensorDataset(x, torch.randint(0, spec.classes, (12,), generator=g))
    return Task("generated", model, example, data, data, data, data, spec.classes)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].reshape(-1), b[k].reshape(-1)) for k in a
    )


def _episode_env(data: st.DataObject, spec: NetSpec) -> JPQEnv:
    act_bits = data.draw(
        st.one_of(
            st.sampled_from([8, 6, 4]),  # JPQWeights-v0: one width
            st.lists(st.sampled_from([2, 3, 4, 6, 8]), min_size=2, max_size=4, unique=True),
        ),
        label="act_bits",
    )
    return JPQEnv(
        task=task_of(spec),
        budget_bops=data.draw(st.sampled_from([1 / 4, 1 / 16, 1 / 64, 1.0]), label="budget"),
        bits=data.draw(
            st.lists(st.sampled_from([1, 2, 3, 4, 6, 8, 16]), min_size=1, max_size=4, unique=True),
            label="bits",
        ),
        act_bits=act_bits,
        max_sparsity=data.draw(st.sampled_from([0.0, 0.5, 0.9]), label="max_sparsity"),
        channel_groups=data.draw(st.sampled_from([0, 1, 3]), label="channel_groups"),
        enforcement=data.draw(st.sampled_from(["wall", "lowering", "none"]), label="enforcement"),
        input_bits=data.draw(st.sampled_from([8, None]), label="input_bits"),
    )


@PROPERTY
@given(data=st.data(), spec=net_specs())
def test_random_episodes_never_raise_and_never_touch_the_model(data: st.DataObject, spec: NetSpec):
    try:
        env = _episode_env(data, spec)
    except ValueError as exc:  # an infeasible budget for this draw is refused up front
        assert "infeasible budget" in str(exc)
        return
    original = _state(env.task.model)
    # Scored once up front (lazily it would be scored after the first episode's policy, leaving
    # the FP32 policy in the working copy): the copy then holds each episode's last policy.
    assert 0.0 <= env.evaluator.fp32_accuracy <= 1.0
    box = env.action_space
    actions = st.lists(st.floats(-1.0, 1.0, width=32), min_size=box.shape[0],
                       max_size=box.shape[0])  # fmt: skip
    for episode in range(2):
        env.reset(seed=episode)
        done, steps = False, 0
        while not done:
            action = np.asarray(data.draw(actions, label="action"), dtype=np.float32)
            assert box.contains(action)
            _, reward, done, truncated, info = env.step(action)
            steps += 1
            assert np.isfinite(reward) and not truncated
        assert steps == 2 * env.num_layers
        assert 0.0 <= info["bops_ratio"] <= 1.0 and 0.0 <= info["size_ratio"] <= 1.0
        if env.enforcement != "none":
            assert info["budget_met"]
        # The working copy holds the last policy: its pruned kernels are exactly zero.
        policy = env.last_policy
        assert policy is not None
        working = env.evaluator.compressed.module  # type: ignore[attr-defined]
        for lp in policy.layers:
            weight = working.get_submodule(lp.name).weight
            assert torch.count_nonzero(weight[torch.from_numpy(lp.bits == 0)]) == 0
        assert _bitwise_equal(_state(env.task.model), original)
    env.evaluator.compressed.restore()  # type: ignore[attr-defined]
    assert _bitwise_equal(_state(env.evaluator.compressed.module), original)  # type: ignore[attr-defined]


@pytest.mark.parametrize("env_id", ["jpq_env/JPQWeights-v0", "jpq_env/JPQWeightsActs-v0"])
def test_sampled_actions_on_the_registered_envs_never_raise(env_id: str):
    import gymnasium as gym

    env = gym.make(env_id).unwrapped
    original = _state(env.task.model)
    env.action_space.seed(0)
    for seed in range(3):
        env.reset(seed=seed)
        done = False
        while not done:
            done = env.step(env.action_space.sample())[2]
    assert _bitwise_equal(_state(env.task.model), original)
