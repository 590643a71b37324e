"""Bad inputs of the environment, each refused with an error naming the problem.

Part of the catalogue of bad inputs (``pytest tests -k bad_inputs --collect-only -q`` lists it):
actions (a refused action changes nothing), the environment's arguments (budgets, bit choices,
names of rewards, tasks and criteria) and the reward designs' constructor arguments.
"""

# ruff: noqa: E501 - the catalogue is a table, one case per line
from __future__ import annotations

import numpy as np
import pytest
import torch

from jpq_env import TaskError
from jpq_env.envs import JPQEnv
from jpq_env.envs.rewards import (
    GalenR6Reward,
    GalenR7Reward,
    HAQReward,
    LagrangianReward,
    MnasNetReward,
)

ACTIONS = [
    pytest.param(np.full(5, np.nan, dtype=np.float32), "NaN or inf", id="action-nan"),
    pytest.param(np.array([np.inf, 0, 0, 0, 0], dtype=np.float32), "NaN or inf", id="action-inf"),
    pytest.param(np.array([0, 0, -np.inf, 0, 0]), "NaN or inf", id="action-minus-inf"),
    pytest.param(np.zeros(4, dtype=np.float32), r"shape \(4,\), expected \(5,\)", id="action-short"),
    pytest.param(np.zeros((1, 5), dtype=np.float32), r"shape \(1, 5\)", id="action-batched"),
    pytest.param(np.float32(0.0), r"shape \(\), expected \(5,\)", id="action-scalar"),
    pytest.param(np.array(["a"] * 5), "numeric array .* dtype <U1", id="action-strings"),
    pytest.param(np.zeros(5, dtype=complex), "dtype complex128", id="action-complex"),
    pytest.param(np.zeros(5, dtype=bool), "dtype bool", id="action-bool"),
    pytest.param(None, "numeric array .* dtype object", id="action-none"),
    pytest.param(np.array([1.5, 0, 0, 0, 0], dtype=np.float32), r"lie in \[-1, 1\]", id="action-above-1"),
    pytest.param(np.array([0, 0, 0, -1.01, 0]), r"lie in \[-1, 1\]", id="action-below-minus-1"),
]  # fmt: skip


@pytest.mark.parametrize(("action", "message"), ACTIONS)
@pytest.mark.parametrize("phase", [0, 1], ids=["layer-phase", "channel-phase"])
def test_bad_action_is_named_and_changes_nothing(env: JPQEnv, action, message, phase):
    env.reset(seed=0)
    if phase:
        env.step(np.zeros(env.action_size, dtype=np.float32))
    obs_before, decisions_before = env._obs(), env.decisions
    with pytest.raises(ValueError, match=message):
        env.step(action)
    assert env.current_layer == 0 and env.phase == phase
    assert np.array_equal(env._obs(), obs_before)
    assert [d is None for d in env.decisions] == [d is None for d in decisions_before]
    env.step(np.zeros(env.action_size, dtype=np.float32))  # the episode goes on
    assert env.phase == 1 - phase


@pytest.mark.parametrize(
    ("action", "message"),
    [
        pytest.param(np.zeros(5, dtype=np.float32), r"shape \(5,\), expected \(6,\)", id="v1-short"),
        pytest.param(np.array([0, 2, 0, 0, 0, 0], dtype=np.float32), r"lie in \[-1, 1\]", id="v1-act-entry-out-of-range"),
        pytest.param(np.array([0, np.nan, 0, 0, 0, 0]), "NaN or inf", id="v1-act-entry-nan"),
    ],
)  # fmt: skip
def test_bad_activation_action_is_named(acts_env: JPQEnv, action, message):
    acts_env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        acts_env.step(action)
    assert acts_env.current_layer == 0 and acts_env.phase == 0


def test_step_before_reset_and_after_termination():
    env = JPQEnv()
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(5, dtype=np.float32))
    env.reset()
    done = False
    while not done:
        done = env.step(np.zeros(5, dtype=np.float32))[2]
    with pytest.raises(RuntimeError, match="episode has terminated"):
        env.step(np.zeros(5, dtype=np.float32))


ARGUMENTS = [
    pytest.param({"budget_bops": 1e-6}, ValueError, "infeasible budget", id="budget-infeasible"),
    pytest.param({"budget_bops": 0.0}, ValueError, r"BOPs budget must be a fraction of FP32 in \(0, 1\]", id="budget-zero"),
    pytest.param({"budget_bops": -0.1}, ValueError, "BOPs budget .* got -0.1", id="budget-negative"),
    pytest.param({"budget_bops": 1.5}, ValueError, "BOPs budget .* got 1.5", id="budget-above-1"),
    pytest.param({"budget_bops": float("nan")}, ValueError, "BOPs budget .* got nan", id="budget-nan"),
    pytest.param({"budget_bops": True}, ValueError, "BOPs budget", id="budget-bool"),
    pytest.param({"budget_bops": "1/64"}, ValueError, "BOPs budget .* got '1/64'", id="budget-string"),
    pytest.param({"budget_bops": None, "budget_size": 2.0}, ValueError, "size budget", id="size-budget-above-1"),
    pytest.param({"budget_bops": None, "budget_size": 0}, ValueError, "size budget", id="size-budget-zero"),
    pytest.param({"budget_bops": None}, ValueError, "give at least one budget", id="no-budget"),
    pytest.param({"bits": []}, ValueError, "bits must not be empty", id="bits-empty"),
    pytest.param({"bits": [2, -1]}, ValueError, r"bits \[-1\] outside", id="bits-negative"),
    pytest.param({"bits": [0, 4]}, ValueError, r"bits \[0\] outside", id="bits-zero"),
    pytest.param({"bits": [4, 33]}, ValueError, r"bits \[33\] outside", id="bits-above-32"),
    pytest.param({"bits": [4, 17]}, ValueError, r"bits \[17\] outside the supported widths", id="bits-unsupported"),
    pytest.param({"bits": [4, 4, 8]}, ValueError, "bits has duplicates", id="bits-duplicates"),
    pytest.param({"bits": [2.5, 4]}, ValueError, "bits must be integers", id="bits-float"),
    pytest.param({"act_bits": []}, ValueError, "act_bits must not be empty", id="act-bits-empty"),
    pytest.param({"act_bits": [4, 4]}, ValueError, "act_bits has duplicates", id="act-bits-duplicates"),
    pytest.param({"act_bits": [0, 8]}, ValueError, r"act_bits \[0\] outside", id="act-bits-zero"),
    pytest.param({"act_bits": 64}, ValueError, r"act_bits \[64\] outside", id="act-bits-above-32"),
    pytest.param({"reward": "nope"}, ValueError, "unknown reward design 'nope'", id="unknown-reward"),
    pytest.param({"task": "nope"}, TaskError, "unknown task 'nope'", id="unknown-task"),
    pytest.param({"importance": "l7"}, ValueError, "unknown importance criterion 'l7'", id="unknown-criterion"),
    pytest.param({"enforcement": "soft"}, ValueError, "unknown enforcement 'soft'", id="unknown-enforcement"),
    pytest.param({"render_mode": "window"}, ValueError, r"unknown render_mode 'window': choose one of \['ansi', 'human', 'rgb_array', None\]", id="unknown-render-mode"),
    pytest.param({"max_sparsity": 1.0}, ValueError, r"max_sparsity must be a finite number in \[0, 1\), got 1.0", id="max-sparsity-1"),
    pytest.param({"channel_groups": -2}, ValueError, "channel_groups must be an integer >= 0, got -2", id="channel-groups-negative"),
    pytest.param({"shaping": "x"}, ValueError, "shaping must be a finite number >= 0, got 'x'", id="shaping-string"),
    pytest.param({"first_last_bits": 0}, ValueError, "first_last_bits=0 is not a supported width", id="first-last-bits-zero"),
    pytest.param({"input_bits": 3.5}, ValueError, "input_bits must be an integer or None, got 3.5", id="input-bits-float"),
    pytest.param({"shaping": float("nan")}, ValueError, "shaping must be a finite number >= 0, got nan", id="shaping-nan"),
    pytest.param({"shaping": float("inf")}, ValueError, "shaping must be a finite number >= 0, got inf", id="shaping-inf"),
    pytest.param({"bn_recalibration": "no"}, ValueError, "bn_recalibration must be True or False, got 'no'", id="bn-recalibration-string"),
    pytest.param({"bn_recalibration": 0}, ValueError, "bn_recalibration must be True or False, got 0", id="bn-recalibration-int"),
    pytest.param({"max_sparsity": False}, ValueError, r"max_sparsity must be a finite number in \[0, 1\), got False", id="max-sparsity-bool"),
    pytest.param({"task_options": [1, 2]}, ValueError, r"task_options must be a mapping of names to values \(a dict\) or None, got list \[1, 2\]", id="task-options-list"),
    pytest.param({"task_options": {1: 2}}, ValueError, "task_options must have string keys", id="task-options-int-key"),
    pytest.param({"task": 3}, TaskError, "task must be a built-in name, a factory path .* got int 3", id="task-not-a-string"),
    pytest.param({"importance": ["l1"]}, ValueError, r"unknown importance criterion \['l1'\]", id="importance-list"),
    pytest.param({"reward": ["galen"]}, ValueError, r"unknown reward design \['galen'\]", id="reward-list"),
    pytest.param({"bits": 4}, ValueError, "bits must be a list of integer widths, got 4", id="bits-not-a-list"),
    pytest.param({"evaluator": object()}, ValueError, r"evaluator must be .* or have an accuracy\(policy\) method", id="evaluator-not-an-evaluator"),
    pytest.param({"device": 3}, ValueError, "device must be 'auto', 'cpu' or 'cuda.*got 3", id="device-int"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "error", "message"), ARGUMENTS)
def test_bad_argument_is_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        JPQEnv(**kwargs)


REWARDS = [
    pytest.param(lambda: GalenR6Reward(beta=float("nan")), "beta must be a finite number >= 0, got nan", id="reward-galen-beta-nan"),
    pytest.param(lambda: GalenR7Reward(beta=-1.0), "beta must be a finite number >= 0, got -1.0", id="reward-galen-r7-beta-negative"),
    pytest.param(lambda: HAQReward(scale=float("inf")), "scale must be a finite number > 0, got inf", id="reward-haq-scale-inf"),
    pytest.param(lambda: MnasNetReward(w=0.07), "w must be a finite number <= 0, got 0.07", id="reward-mnasnet-positive-exponent"),
    pytest.param(lambda: LagrangianReward(mu=-1.0), "mu must be a finite number >= 0, got -1.0", id="reward-lagrangian-mu-negative"),
    pytest.param(lambda: LagrangianReward(lr="0.5"), "lr must be a finite number >= 0, got '0.5'", id="reward-lagrangian-lr-string"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "message"), REWARDS)
def test_bad_constructor_argument_is_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_numpy_budgets_are_accepted():
    assert JPQEnv(budget_bops=np.float32(0.05)).budget.bops == pytest.approx(0.05)


def test_numpy_scalars_are_accepted_where_python_ones_are(env: JPQEnv):
    other = JPQEnv(
        act_bits=np.int64(8),
        max_sparsity=np.float32(0.5),
        channel_groups=np.int64(2),
        shaping=np.float64(0.1),
        bn_recalibration=np.bool_(True),
        evaluator=env.evaluator,
    )
    assert (other.space.max_sparsity, other.channel_slots, other.shaping) == (0.5, 2, 0.1)


def test_a_grad_tensor_action_is_taken(env: JPQEnv):
    fresh, twin = JPQEnv(evaluator=env.evaluator), JPQEnv(evaluator=env.evaluator)
    fresh.reset(seed=0)
    twin.reset(seed=0)
    action = torch.full(fresh.action_space.shape, 0.5, requires_grad=True)
    obs = fresh.step(action)[0]
    assert np.array_equal(obs, twin.step(np.full(fresh.action_space.shape, 0.5))[0])


def test_channel_groups_beyond_the_widest_layer_are_refused(env: JPQEnv):
    with pytest.raises(
        ValueError,
        match=r"channel_groups=1000000000 is more than the 64 kernels of the widest layer and than 256",
    ):
        JPQEnv(evaluator=env.evaluator, channel_groups=10**9)
