"""Fixtures the agent tests share."""

import gymnasium as gym
import pytest

from jpq_agents.baselines import BASELINES
from jpq_agents.search import RunSettings, Search
from tests.episodes import log_records, policy_keys


@pytest.fixture(scope="session")
def two_stage_keys(tmp_path_factory) -> list[str]:
    """The policies the two-stage baseline plays on JPQWeightsActs-v0, in order."""
    out = tmp_path_factory.mktemp("two-stage")
    env = gym.make("jpq_env/JPQWeightsActs-v0", device="cpu").unwrapped
    with Search(out, RunSettings("two-stage", 100, 0), env) as search:
        BASELINES["two-stage"](search, 0)
    return policy_keys(log_records(out))
