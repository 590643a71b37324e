"""The agents added for learning to pay: Optuna baselines, the model-based two-level controller."""

import json

import gymnasium as gym
import pytest

from jpq_agents.baselines import BASELINES
from jpq_agents.run import run_search
from jpq_agents.search import LOG_NAME, RunSettings, Search
from jpq_agents.two_level import TwoLevelConfig, run_two_level

ENV = "jpq_env/JPQWeightsActs-v0"


def _log(path):
    return [json.loads(line) for line in (path / LOG_NAME).read_text().splitlines()]


def _keys(records):
    return [json.dumps([[p["act_bits"], p["bits"]] for p in r["policy"]]) for r in records]


@pytest.fixture(scope="module")
def two_stage_keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("two-stage")
    env = gym.make(ENV, device="cpu").unwrapped
    with Search(out, RunSettings("two-stage", 100, 0), env) as search:
        BASELINES["two-stage"](search, 0)
    return _keys(_log(out))


@pytest.mark.parametrize("agent", ["tpe", "cmaes"])
def test_optuna_agents_spend_exactly_their_evaluations_and_repeat_with_a_seed(agent, tmp_path):
    first = run_search(agent, tmp_path / "a", 10, seed=1, env_id=ENV, progress=False)
    again = run_search(agent, tmp_path / "b", 10, seed=1, env_id=ENV, progress=False)
    assert first["evaluations"] == again["evaluations"] == 10
    assert _keys(_log(tmp_path / "a")) == _keys(_log(tmp_path / "b"))
    other = run_search(agent, tmp_path / "c", 10, seed=2, env_id=ENV, progress=False)
    assert other["evaluations"] == 10 and _keys(_log(tmp_path / "c")) != _keys(_log(tmp_path / "a"))


@pytest.mark.parametrize("agent", ["tpe-warm", "cmaes-warm"])
def test_warm_optuna_agents_start_with_the_two_stage_policies(agent, tmp_path, two_stage_keys):
    n = len(two_stage_keys)
    run_search(agent, tmp_path, n + 4, seed=0, env_id=ENV, progress=False)
    keys = _keys(_log(tmp_path))
    assert keys[:n] == two_stage_keys and len(keys) == n + 4


def _two_level(tmp_path, episodes, **config):
    env = gym.make(ENV, device="cpu", sensitivity=True).unwrapped
    search = Search(tmp_path, RunSettings("two-level", episodes, 0), env)
    with search:
        run_two_level(search, 0, TwoLevelConfig(**config))
    return search, _log(tmp_path)


def test_model_based_two_level_phases_and_its_real_evaluations(tmp_path, two_stage_keys):
    search, log = _two_level(tmp_path, 80, imagined=16, real_per_round=4, refine_fraction=0.4)
    phases = [r.get("phase") for r in log]
    n = len(two_stage_keys)
    assert phases[:n] == ["warm-start"] * n and _keys(log)[:n] == two_stage_keys
    learning = [r for r in log if r.get("phase") == "learning"]
    refining = [r for r in log if str(r.get("phase", "")).startswith("refinement:from-")]
    assert len(learning) == 80 - int(0.4 * 80) - n > 0 and len(refining) == int(0.4 * 80)
    # the surrogate's picks are never a policy already evaluated
    learned_keys = _keys(learning)
    assert len(set(learned_keys)) == len(learned_keys)
    assert not set(learned_keys) & set(two_stage_keys)
    # raced evaluations lost and never become the best
    raced = [r for r in log if r.get("proxy_complete") is False]
    assert all(0 < r["proxy_images"] < 288 for r in raced)
    assert search.best is not None and search.best.get("proxy_complete", True)
    complete = [r for r in log if r.get("proxy_complete", True) and r["budget_met"]]
    assert search.best["accuracy"] == max(r["accuracy"] for r in complete)


def test_pure_rl_variant_learns_without_warm_start_or_refinement(tmp_path, two_stage_keys):
    _, log = _two_level(
        tmp_path, 24, warm_start=False, refine_fraction=0.0, imagined=16, real_per_round=8
    )
    assert {r.get("phase") for r in log} == {"learning"} and len(log) == 24
    assert not set(_keys(log)) & set(two_stage_keys)
