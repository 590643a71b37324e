"""The Optuna agents (``jpq_agents.optuna_search``): exact evaluation counts, repeatable with a
seed, the warm variants starting from the two-stage policies.
"""

import pytest

from jpq_agents.run import run_search
from tests.episodes import log_records, policy_keys

ENV = "jpq_env/JPQWeightsActs-v0"


@pytest.mark.parametrize("agent", ["tpe", "cmaes"])
def test_optuna_agents_spend_exactly_their_evaluations_and_repeat_with_a_seed(agent, tmp_path):
    first = run_search(agent, tmp_path / "a", 10, seed=1, env_id=ENV, progress=False)
    again = run_search(agent, tmp_path / "b", 10, seed=1, env_id=ENV, progress=False)
    assert first["evaluations"] == again["evaluations"] == 10
    assert policy_keys(log_records(tmp_path / "a")) == policy_keys(log_records(tmp_path / "b"))
    other = run_search(agent, tmp_path / "c", 10, seed=2, env_id=ENV, progress=False)
    assert other["evaluations"] == 10 and policy_keys(log_records(tmp_path / "c")) != policy_keys(
        log_records(tmp_path / "a")
    )


@pytest.mark.parametrize("agent", ["tpe-warm", "cmaes-warm"])
def test_warm_optuna_agents_start_with_the_two_stage_policies(agent, tmp_path, two_stage_keys):
    n = len(two_stage_keys)
    run_search(agent, tmp_path, n + 4, seed=0, env_id=ENV, progress=False)
    keys = policy_keys(log_records(tmp_path))
    assert keys[:n] == two_stage_keys and len(keys) == n + 4


def test_cmaes_warm_starts_from_fewer_than_ten_two_stage_policies(tmp_path, monkeypatch):
    """CMA-ES's warm start keeps the best tenth of its source trials: with 3 of them the cmaes
    package asserted inside; repeated, the best one is kept and the search goes on."""
    from jpq_agents import optuna_search

    real = optuna_search._two_stage
    monkeypatch.setattr(optuna_search, "_two_stage", lambda base: real(base)[:3])
    run_search("cmaes-warm", tmp_path, 7, seed=1, env_id=ENV, progress=False)
    records = log_records(tmp_path)
    assert len(records) == 7
    assert (
        len(set(policy_keys(records[3:]))) == 4
    )  # the sampler's own trials, not the sources again
    assert optuna_search._enough_sources([1, 2, 3]) == [1, 2, 3] * 4
    assert optuna_search._enough_sources(list(range(12))) == list(range(12))
