"""The two-level controller's learning: the model-based phases and their real evaluations, pure
RL, the activation head, and finite updates at the sparsity boundaries.
"""

import gymnasium as gym
import pytest
import torch

from jpq_agents.search import RunSettings, Search
from jpq_agents.two_level import TwoLevelConfig, _Agent, run_two_level
from jpq_env.envs import JPQEnv
from jpq_env.errors import ArgumentError
from tests.episodes import ACTS, log_records, policy_keys, widths

ENV = "jpq_env/JPQWeightsActs-v0"


def _two_level(tmp_path, episodes, **config):
    env = gym.make(ENV, device="cpu", sensitivity=True).unwrapped
    search = Search(tmp_path, RunSettings("two-level", episodes, 0), env)
    with search:
        run_two_level(search, 0, TwoLevelConfig(**config))
    return search, log_records(tmp_path)


def test_model_based_two_level_phases_and_its_real_evaluations(tmp_path, two_stage_keys):
    search, log = _two_level(tmp_path, 80, imagined=16, real_per_round=4, refine_fraction=0.4)
    phases = [r.get("phase") for r in log]
    n = len(two_stage_keys)
    assert phases[:n] == ["warm-start"] * n and policy_keys(log)[:n] == two_stage_keys
    learning = [r for r in log if r.get("phase") == "learning"]
    refining = [r for r in log if str(r.get("phase", "")).startswith("refinement:from-")]
    assert len(learning) == 80 - int(0.4 * 80) - n > 0 and len(refining) == int(0.4 * 80)
    # the surrogate's picks are never a policy already evaluated
    learned_keys = policy_keys(learning)
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
    assert not set(policy_keys(log)) & set(two_stage_keys)


@pytest.fixture(scope="module")
def acts_env() -> JPQEnv:
    return JPQEnv(act_bits=ACTS, budget_bops=1 / 128)


def _acts_env(acts_env: JPQEnv, **kwargs) -> JPQEnv:
    return JPQEnv(evaluator=acts_env.evaluator, act_bits=ACTS, **{"budget_bops": 1 / 128, **kwargs})


def test_two_level_activation_head_explores_and_learns(tmp_path, acts_env):
    config = TwoLevelConfig(warm_start=False, refine_fraction=0.0, batch_episodes=8)
    search = Search(tmp_path, RunSettings("two-level", 32, 0), _acts_env(acts_env))
    agent = _Agent(search, 0, config)
    before = [p.detach().clone() for p in agent.net.act.parameters()]
    agent.run()
    records = log_records(tmp_path)
    inner = [i for i in range(acts_env.num_layers) if i not in acts_env.graph.input_layers]
    sampled = {widths(r)[i][1] for r in records for i in inner}
    assert len(sampled) >= 4  # every activation width can be sampled, not only the widest
    assert all(widths(r)[0][1] == 8 for r in records)  # the network input stays at 8 bits
    after = list(agent.net.act.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # trained


def test_two_level_updates_stay_finite_at_the_sparsity_boundaries(tmp_path, acts_env):
    # A sparsity sampled at exactly 0 or 1 (float32 underflow at extreme Beta concentrations)
    # once gave -inf log-probabilities, NaN gradients and NaN weights in a long learning phase.
    config = TwoLevelConfig(
        warm_start=False, refine_fraction=0.0, batch_episodes=4, surrogate=False
    )
    search = Search(tmp_path, RunSettings("two-level", 8, 0), _acts_env(acts_env))
    agent = _Agent(search, 0, config)
    agent.run()
    batch = agent.elite[:4]
    for ep, u in zip(batch, (0.0, 1.0, 0.0, 1.0), strict=False):
        ep.layer_u = [u] * len(ep.layer_u)
    agent._update(batch)
    assert all(torch.isfinite(p).all() for p in agent.net.parameters())
    agent.net.sparsity(torch.zeros(1, batch[0].layer_obs[0].shape[0]))  # still a valid Beta


def test_fitted_records_keep_the_best_half_and_the_most_recent_past_the_window():
    from jpq_agents.two_level.imagined import fitted_records

    rng = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (30,), generator=rng).tolist()  # ties on purpose
    records = [{"i": i, "accuracy": s / 20} for i, s in enumerate(scores)]
    records[5]["proxy_complete"] = False  # a raced evaluation: never fitted
    complete = [r for r in records if r.get("proxy_complete", True)]
    assert fitted_records(records, 29) == complete  # within the window: all, in order
    kept = fitted_records(records, 10)
    # independently: rank by score (earlier first among equals), five best, then the latest
    ranked = sorted(complete, key=lambda r: (-r["accuracy"], r["i"]))
    best = {r["i"] for r in ranked[:5]}
    latest = [r["i"] for r in reversed(complete) if r["i"] not in best][:5]
    assert [r["i"] for r in kept] == sorted(best | set(latest))
    assert len(kept) == 10
    assert [r["i"] for r in fitted_records(records, 1)] == [29]  # no best half: the latest
    assert fitted_records([{**r, "proxy_complete": False} for r in records], 4) == []


def test_the_surrogate_is_fitted_on_at_most_fit_window_evaluations(tmp_path, monkeypatch):
    from jpq_agents.surrogate import Surrogate

    sizes = []
    fit = Surrogate.fit

    def counted(self, policies, scores):
        sizes.append(len(policies))
        return fit(self, policies, scores)

    monkeypatch.setattr(Surrogate, "fit", counted)
    search, log = _two_level(
        tmp_path, 48, imagined=8, real_per_round=4, refine_fraction=0.3, fit_window=12
    )
    assert len(log) == 48 and search.best is not None
    complete = [r for r in log if r.get("proxy_complete", True)]
    assert sizes and len(complete) > 12 and set(sizes) == {12}  # the warm start alone is more
    with pytest.raises(ArgumentError, match="fit_window"):
        TwoLevelConfig(fit_window=0)
