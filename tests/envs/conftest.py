"""Environments the env tests share (module-scoped: one evaluator per test module)."""

import pytest

from jpq_env.envs import JPQEnv
from tests.episodes import ACTS


@pytest.fixture(scope="module")
def env() -> JPQEnv:
    return JPQEnv()


@pytest.fixture(scope="module")
def acts_env(env: JPQEnv) -> JPQEnv:
    """JPQWeightsActs-v0's choices: each layer decision also picks an activation width."""
    return JPQEnv(act_bits=ACTS, budget_bops=1 / 128, evaluator=env.evaluator)
