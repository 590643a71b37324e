"""The baselines (``jpq_agents.baselines``): within budget, stopping early with a reason, and on
JPQWeightsActs-v0 searching activation widths as well.
"""

import re

import pytest

from jpq_agents.baselines import BASELINES
from jpq_agents.play import fits, least_uniform_pruning, level_pairs
from jpq_agents.search import RunSettings, Search
from jpq_env.envs import JPQEnv
from tests.episodes import ACTS, log_records, widths


@pytest.fixture(scope="module")
def shared() -> JPQEnv:
    return JPQEnv()


def _env(shared: JPQEnv, **kwargs) -> JPQEnv:
    return JPQEnv(evaluator=shared.evaluator, **kwargs)


def test_baselines_stay_within_budget_and_two_stage_prunes_no_more_than_needed(tmp_path, shared):
    env = _env(shared)
    n = env.num_layers
    for name in ("uniform", "two-stage", "greedy"):
        search = Search(tmp_path / name, RunSettings(name, 60, 0), _env(shared))
        BASELINES[name](search, 0)
        assert 1 <= search.count <= 60
        assert all(r["budget_met"] for r in search.records), name
    # uniform: only W2 fits 1/64 at 8-bit activations (W3 would need 3/2 of the budget).
    assert [max(p["bits"]) for p in log_records(tmp_path / "uniform")[0]["policy"]] == [2] * n
    # two-stage: pruning one kernel less in every pruned layer breaks the budget.
    for lv in range(len(env.bits)):
        pruned = least_uniform_pruning(env, [lv] * n)
        if pruned is None or not any(pruned):
            continue
        assert fits(env, pruned, [lv] * n)[0]
        assert not fits(env, [max(p - 1, 0) for p in pruned], [lv] * n)[0]
    greedy = log_records(tmp_path / "greedy")
    two_stage = log_records(tmp_path / "two-stage")
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


@pytest.fixture(scope="module")
def acts_env(shared: JPQEnv) -> JPQEnv:
    """JPQWeightsActs-v0's choices: each layer decision also picks an activation width."""
    return JPQEnv(act_bits=ACTS, budget_bops=1 / 128, evaluator=shared.evaluator)


def _acts_env(acts_env: JPQEnv, **kwargs) -> JPQEnv:
    return JPQEnv(evaluator=acts_env.evaluator, act_bits=ACTS, **{"budget_bops": 1 / 128, **kwargs})


def test_uniform_baseline_plays_every_fitting_wxay_pair(tmp_path, acts_env):
    search = Search(tmp_path, RunSettings("uniform", 50, 0), _acts_env(acts_env))
    BASELINES["uniform"](search, 0)
    n = acts_env.num_layers
    fitting = [
        p for p in level_pairs(acts_env) if fits(acts_env, [0] * n, [p[0]] * n, [p[1]] * n)[0]
    ]
    records = log_records(tmp_path)
    assert len(records) == len(fitting) >= 2
    inner = [i for i in range(n) if i not in acts_env.graph.input_layers]
    for record, (w, a) in zip(records, fitting, strict=True):
        assert record["budget_met"] and all(min(p["bits"]) > 0 for p in record["policy"])
        layers = widths(record)
        assert {layers[i] for i in inner} == {(acts_env.bits[w], ACTS[a])}


def test_two_stage_and_greedy_search_activation_widths(tmp_path, acts_env):
    for name in ("two-stage", "greedy"):
        search = Search(tmp_path / name, RunSettings(name, 80, 0), _acts_env(acts_env))
        BASELINES[name](search, 0)
        assert all(r["budget_met"] for r in search.records), name
    two_stage = log_records(tmp_path / "two-stage")
    acts = {widths(r)[1][1] for r in two_stage}
    assert acts == set(ACTS)  # every activation width is tried with some pruning that fits
    greedy = log_records(tmp_path / "greedy")
    # Greedy raises either kind of width one layer at a time: some probe differs from the start
    # only in one layer's activation width.
    # It starts from the most accurate of its starts: the uniform-width (two-stage) policies.
    starts = [
        r
        for r in greedy
        if len({w for w, _ in widths(r)}) == 1 and len({a for _, a in widths(r)[1:]}) == 1
    ]
    start = widths(max(starts, key=lambda r: r["accuracy"]))
    assert any(
        sum(a != b for a, b in zip(widths(r), start, strict=True)) == 1
        and any(x[1] != y[1] for x, y in zip(widths(r), start, strict=True))
        for r in greedy[1:]
    )


def test_a_best_that_is_any_two_stage_policy_is_named(tmp_path):
    """Warm starts play every (weight, activation) width pair; the summary's ``same_as`` knows
    them all, not only the equal widths the reference points plot."""
    from jpq_agents.run import _same_as_reference, run_search

    env_id = "jpq_env/JPQWeightsActs-v0"
    kwargs = {"val_images": 32}
    run_search("two-stage", tmp_path, 40, env_id=env_id, env_kwargs=kwargs, progress=False)
    named = 0
    for record in log_records(tmp_path):
        weights = {b for p in record["policy"] for b in p["bits"] if b > 0}
        acts = {p["act_bits"] for p in record["policy"][1:]}  # the input layer's is fixed at 8
        if len(weights) == 1 and len(acts) == 1 and weights != acts:
            label = _same_as_reference(record, [], env_id, kwargs)["same_as"]
            assert label.startswith(f"two-stage W{weights.pop()}A{acts.pop()} (sparsity ")
            named += 1
    assert named >= 3
