"""Observations (``jpq_env.envs.observation``): the sensitivity features, and shaping that
telescopes.
"""

import math

import numpy as np
import pytest

from jpq_env.envs import JPQEnv
from jpq_env.envs.observation import FEATURES
from tests.episodes import ACTS


def test_sensitivity_features_are_appended_and_shaping_telescopes():
    env = JPQEnv(
        act_bits=ACTS,
        budget_bops=1 / 128,
        sensitivity=True,
        error_shaping=0.5,
        device="cpu",
    )
    table = env.sensitivity
    assert table is not None
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(FEATURES) + table.size,) == env.observation_space.shape
    assert np.array_equal(obs[len(FEATURES) :], table.features(0))
    rng = np.random.default_rng(0)
    total, shaped, kl = 0.0, 0.0, 0.0
    for _ in range(2 * env.num_layers):
        obs, reward, terminated, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        total += reward
        shaped += info.get("reward_shaping", 0.0)
        if "layer_kl" in info:
            kl += info["layer_kl"]
            assert info["predicted_fidelity"] == pytest.approx(math.exp(-kl))
    assert terminated
    assert shaped == pytest.approx(0.0, abs=1e-12)  # potential-based: sums to zero
    assert total == pytest.approx(info["reward_total"])
    decisions = env.decisions
    want = sum(table.contribution(i, d.ranked_bits, d.act_bits) for i, d in enumerate(decisions))
    assert kl == pytest.approx(want)
