import numpy as np
import pytest

from jpq_env.envs import JPQEnv
from jpq_env.tasks import TaskError


@pytest.fixture(scope="module")
def env() -> JPQEnv:
    return JPQEnv()


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.full(5, np.nan, dtype=np.float32), "NaN or inf"),
        (np.array([np.inf, 0, 0, 0, 0], dtype=np.float32), "NaN or inf"),
        (np.zeros(4, dtype=np.float32), r"shape \(4,\), expected \(5,\)"),
        (np.zeros((1, 5), dtype=np.float32), r"shape \(1, 5\)"),
        (np.array(["a"] * 5), "numeric array"),
        (np.array([1.5, 0, 0, 0, 0], dtype=np.float32), r"must lie in \[-1, 1\]"),
    ],
)
def test_bad_actions_are_named_and_change_nothing(env: JPQEnv, action, message):
    env.reset(seed=0)
    obs_before = env._obs()
    with pytest.raises(ValueError, match=message):
        env.step(action)
    assert env.current_layer == 0 and env.phase == 0
    assert np.array_equal(env._obs(), obs_before)


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


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"budget_bops": 1e-6}, ValueError, "infeasible budget"),
        ({"budget_bops": 0.0}, ValueError, r"BOPs budget must be a fraction of FP32 in \(0, 1\]"),
        ({"budget_bops": -0.1}, ValueError, "BOPs budget"),
        ({"budget_bops": 1.5}, ValueError, "BOPs budget"),
        ({"budget_bops": None, "budget_size": 2.0}, ValueError, "size budget"),
        ({"budget_bops": None}, ValueError, "give at least one budget"),
        ({"bits": []}, ValueError, "bits must not be empty"),
        ({"bits": [2, -1]}, ValueError, r"bits \[-1\] outside"),
        ({"bits": [4, 33]}, ValueError, r"bits \[33\] outside"),
        ({"bits": [4, 4, 8]}, ValueError, "bits has duplicates"),
        ({"bits": [2.5, 4]}, ValueError, "bits must be integers"),
        ({"reward": "nope"}, ValueError, "unknown reward design 'nope'"),
        ({"task": "nope"}, TaskError, "unknown task 'nope'"),
        ({"importance": "l7"}, ValueError, "unknown importance criterion 'l7'"),
        ({"enforcement": "soft"}, ValueError, "unknown enforcement 'soft'"),
        ({"max_sparsity": 1.0}, ValueError, r"max_sparsity must be in \[0, 1\)"),
        ({"channel_groups": -2}, ValueError, "channel_groups must be a non-negative integer"),
        ({"render_mode": "human"}, ValueError, "unknown render_mode 'human'"),
        ({"budget_bops": True}, ValueError, "BOPs budget"),
        ({"shaping": "x"}, ValueError, "shaping must be a non-negative number"),
        ({"first_last_bits": 0}, ValueError, "first_last_bits=0 is not a supported width"),
        ({"input_bits": 3.5}, ValueError, "input_bits must be an integer width"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        JPQEnv(**kwargs)


def test_numpy_budgets_are_accepted():
    assert JPQEnv(budget_bops=np.float32(0.05)).budget.bops == pytest.approx(0.05)
