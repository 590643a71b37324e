import json
import re

import numpy as np
import pytest

from jpq_agents.baselines import BASELINES
from jpq_agents.play import fits, least_uniform_pruning
from jpq_agents.run import run_search
from jpq_agents.sb3 import TruncatedNormalDecayNoise, hyperparameters, run_sb3
from jpq_agents.search import LOG_NAME, POLICY_NAME, RunSettings, Search, SearchError
from jpq_agents.two_level import TwoLevelConfig, run_two_level
from jpq_env import Policy, measure
from jpq_env.envs import JPQEnv


@pytest.fixture(scope="module")
def shared() -> JPQEnv:
    return JPQEnv()


def _env(shared: JPQEnv, **kwargs) -> JPQEnv:
    return JPQEnv(evaluator=shared.evaluator, **kwargs)


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in (path / LOG_NAME).read_text().splitlines()]


def test_search_counts_logs_and_keeps_the_best(tmp_path, shared):
    search = Search(tmp_path, RunSettings("random", 15, 0), _env(shared))
    BASELINES["random"](search, 0)
    records = _lines(tmp_path)
    assert search.count == len(records) == 15
    assert [r["episode"] for r in records] == list(range(15))
    for r in records[:3]:  # every logged policy is what the cost model says it is
        policy = Policy.from_json(
            {"schema": 1, "fingerprint": shared.graph.fingerprint, "layers": r["policy"]}
        )
        assert measure(shared.graph, policy).bops_ratio == r["bops_ratio"]
    best = max((r for r in records if r["budget_met"]), key=lambda r: r["accuracy"])
    saved = json.loads((tmp_path / POLICY_NAME).read_text())
    assert saved["episode"] == best["episode"] and saved["accuracy_val"] == best["accuracy"]
    assert [layer["bits"] for layer in saved["layers"]] == [p["bits"] for p in best["policy"]]


def test_a_directory_holding_a_run_is_never_overwritten(tmp_path, shared):
    Search(tmp_path, RunSettings("random", 2, 0), _env(shared))
    (tmp_path / LOG_NAME).write_text("precious\n")
    with pytest.raises(SearchError, match="already holds a run"):
        Search(tmp_path, RunSettings("random", 2, 0), _env(shared))
    with pytest.raises(SearchError, match="other settings"):
        Search(tmp_path, RunSettings("greedy", 2, 0), _env(shared), resume=True)
    assert (tmp_path / LOG_NAME).read_text() == "precious\n"
    fresh = Search(tmp_path / "empty", RunSettings("random", 2, 0), _env(shared), resume=True)
    assert fresh.count == 0 and (tmp_path / "empty" / "run.json").exists()  # nothing to resume


class _Kill(Exception):
    pass


def _runner(agent: str):
    if agent == "two-level":
        return run_two_level
    if agent in BASELINES:
        return BASELINES[agent]
    return lambda search, seed: run_sb3(
        search, seed, agent, "jpq_env/JPQWeights-v0", warmup_episodes=2
    )


@pytest.mark.parametrize(
    ("agent", "episodes", "kill_at"), [("random", 12, 5), ("two-level", 24, 13), ("ddpg", 8, 4)]
)
def test_resume_after_a_crash_reaches_the_uninterrupted_result(
    tmp_path, shared, agent, episodes, kill_at
):
    run = _runner(agent)
    settings = RunSettings(agent, episodes, 3)
    whole = Search(tmp_path / "whole", settings, _env(shared))
    run(whole, 3)

    def kill(record, replayed):
        if record["episode"] == kill_at:
            raise _Kill

    broken = Search(tmp_path / "broken", settings, _env(shared), on_record=kill)
    with pytest.raises(_Kill):
        run(broken, 3)
    with (tmp_path / "broken" / LOG_NAME).open("a") as f:
        f.write('{"episode": 99, "trunc')  # a line cut by the crash
    calls = []
    inner = _env(shared)
    counting = inner.evaluator

    class Counting:
        fp32_accuracy = counting.fp32_accuracy

        def accuracy(self, policy):
            calls.append(1)
            return counting.accuracy(policy)

    inner.evaluator = Counting()
    resumed = Search(tmp_path / "broken", settings, inner, resume=True)
    run(resumed, 3)
    assert _lines(tmp_path / "broken") == _lines(tmp_path / "whole")
    # Logged episodes are not evaluated again; only the best one the log claims is scored once
    # more before it is written (an edited accuracy must not become the result).
    claimed = any(r["budget_met"] for r in _lines(tmp_path / "whole")[: kill_at + 1])
    assert len(calls) == episodes - (kill_at + 1) + claimed
    assert (tmp_path / "broken" / POLICY_NAME).read_text() == (
        tmp_path / "whole" / POLICY_NAME
    ).read_text()


def test_baselines_stay_within_budget_and_two_stage_prunes_no_more_than_needed(tmp_path, shared):
    env = _env(shared)
    n = env.num_layers
    for name in ("uniform", "two-stage", "greedy"):
        search = Search(tmp_path / name, RunSettings(name, 60, 0), _env(shared))
        BASELINES[name](search, 0)
        assert 1 <= search.count <= 60
        assert all(r["budget_met"] for r in search.records), name
    # uniform: only W2 fits 1/64 at 8-bit activations (W3 would need 3/2 of the budget).
    assert [max(p["bits"]) for p in _lines(tmp_path / "uniform")[0]["policy"]] == [2] * n
    # two-stage: pruning one kernel less in every pruned layer breaks the budget.
    for lv in range(len(env.bits)):
        pruned = least_uniform_pruning(env, [lv] * n)
        if pruned is None or not any(pruned):
            continue
        assert fits(env, pruned, [lv] * n)[0]
        assert not fits(env, [max(p - 1, 0) for p in pruned], [lv] * n)[0]
    greedy = _lines(tmp_path / "greedy")
    two_stage = _lines(tmp_path / "two-stage")
    # Greedy starts from the two-stage policies: it ends at least as accurate as the best of them.
    assert max(r["accuracy"] for r in greedy) >= max(r["accuracy"] for r in two_stage)
    assert [r["policy"] for r in greedy[: len(two_stage)]] == [r["policy"] for r in two_stage]


def test_greedy_cut_short_by_the_evaluation_budget_says_so(tmp_path, shared):
    search = Search(tmp_path, RunSettings("greedy", 10, 0), _env(shared))
    BASELINES["greedy"](search, 0)
    assert search.count == 10
    assert "the evaluation budget ran out" in search.stop_reason
    roomy = Search(tmp_path / "roomy", RunSettings("greedy", 400, 0), _env(shared))
    BASELINES["greedy"](roomy, 0)
    assert roomy.count < 400 and roomy.stop_reason == ""  # it ran out of improvements instead


def test_baselines_that_run_out_of_policies_say_why(tmp_path, shared):
    """uniform, two-stage and greedy stop short of a large budget with a reason; a budget that
    stops them, or random search, gives none."""
    expected = {
        "uniform": "it played each uniform width without pruning",
        "two-stage": "it played the least uniform pruning that fits the budget for each",
        "greedy": r"in round \d+, none of the \d+ one-level raises improved accuracy",
    }
    for name, reason in expected.items():
        search = Search(tmp_path / name, RunSettings(name, 400, 0), _env(shared))
        stop = BASELINES[name](search, 0)
        assert search.count < 400 and stop is not None, name
        assert re.match(f"nothing left to try: {reason}", stop), stop
        cut = Search(tmp_path / f"{name}-cut", RunSettings(name, 1, 0), _env(shared))
        assert BASELINES[name](cut, 0) is None and cut.count == 1
    search = Search(tmp_path / "random", RunSettings("random", 3, 0), _env(shared))
    assert BASELINES["random"](search, 0) is None


def test_two_level_is_deterministic_and_exact_in_its_budget(tmp_path, shared):
    runs = []
    for name in ("a", "b"):
        search = Search(tmp_path / name, RunSettings("two-level", 30, 1), _env(shared))
        run_two_level(search, 1)
        assert search.count == 30
        runs.append(_lines(tmp_path / name))
    assert runs[0] == runs[1]
    assert all(r["budget_met"] for r in runs[0])


@pytest.mark.parametrize("agent", ["ddpg", "ppo", "maskable-ppo"])
def test_sb3_agents_spend_exactly_the_budget(tmp_path, agent):
    summary = run_search(agent, tmp_path / agent, 14, seed=0, progress=False, warmup_episodes=3)
    assert summary["evaluations"] == 14 == len(_lines(tmp_path / agent))
    assert (tmp_path / agent / "pareto.png").stat().st_size > 10_000
    assert list((tmp_path / agent / "tensorboard").iterdir())


def test_truncated_normal_noise_decays_per_episode():
    noise = TruncatedNormalDecayNoise(5, sigma=0.4, decay=0.5, seed=0)
    draws = np.stack([noise() for _ in range(2000)])
    assert np.abs(draws).max() <= 0.8 and draws.std() == pytest.approx(0.4 * 0.88, rel=0.1)
    noise.reset()
    noise.reset()
    assert noise.sigma == pytest.approx(0.1)
    assert np.abs(np.stack([noise() for _ in range(500)])).max() <= 0.2


def test_hyperparameters_come_from_zoo_yaml():
    ppo = hyperparameters("ppo", "jpq_env/JPQWeights-v0")
    assert ppo["gamma"] == 1.0 and ppo["n_steps"] == 48
    assert hyperparameters("ppo", "jpq_env/JPQWeightsDeep-v0")["n_steps"] == 88
    assert hyperparameters("ddpg", "someone/Else-v0")["gamma"] == 1.0  # the default entry


def test_two_level_without_learning_refines_its_warm_start(tmp_path, shared):
    # refine_fraction=1: the warm start is still played whole, then every evaluation refines.
    search = Search(tmp_path, RunSettings("two-level", 30, 0), _env(shared))
    run_two_level(search, 0, TwoLevelConfig(refine_fraction=1.0))
    phases = [r.get("phase", "") for r in search.records]
    assert search.count == 30 and phases[0] == "warm-start"
    assert "learning" not in phases and phases[-1].startswith("refinement")
