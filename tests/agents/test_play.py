"""The agents and baselines on JPQWeightsActs-v0: each layer decision also picks an
activation width."""

import json

import pytest
import torch

from jpq_agents.baselines import BASELINES
from jpq_agents.play import fits, least_uniform_pruning, level_pairs, uniform_choices
from jpq_agents.run import run_search
from jpq_agents.search import LOG_NAME, RunSettings, Search
from jpq_agents.two_level import TwoLevelConfig, _Agent, run_two_level
from jpq_env.envs import JPQEnv

ACTS = [2, 3, 4, 5, 6, 8]


@pytest.fixture(scope="module")
def shared() -> JPQEnv:
    return JPQEnv(act_bits=ACTS, budget_bops=1 / 128)


def _env(shared: JPQEnv, **kwargs) -> JPQEnv:
    return JPQEnv(evaluator=shared.evaluator, act_bits=ACTS, **{"budget_bops": 1 / 128, **kwargs})


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in (path / LOG_NAME).read_text().splitlines()]


def _widths(record: dict) -> list[tuple[int, int]]:
    """(largest weight width, activation width) of every layer of a logged policy."""
    return [(max(p["bits"]), p["act_bits"]) for p in record["policy"]]


def test_level_pairs_are_the_grid_most_bits_first(shared):
    pairs = level_pairs(shared)
    assert sorted(p for p in pairs) == [(w, a) for w in range(6) for a in range(6)]
    products = [shared.bits[w] * ACTS[a] for w, a in pairs]
    assert products == sorted(products, reverse=True)
    v0 = JPQEnv(evaluator=shared.evaluator)
    assert level_pairs(v0) == [(w, None) for w in reversed(range(len(v0.bits)))]


@pytest.mark.parametrize(("w", "a"), [(0, 0), (2, 1), (5, 5), (1, 4)])
def test_fits_counts_activation_widths_by_hand(shared, w, a):
    """Uniform WxAy without pruning: BOPs = sum of MACs x w x a, the network input at 8 bits."""
    n = shared.num_layers
    layers = shared.graph.layers
    inputs = shared.graph.input_layers
    expected = sum(
        x.macs * shared.bits[w] * (8 if i in inputs else ACTS[a]) for i, x in enumerate(layers)
    ) / sum(x.macs * 32 * 32 for x in layers)
    ok, ratio = fits(shared, [0] * n, [w] * n, [a] * n)
    assert ratio == pytest.approx(expected, rel=1e-12)
    assert ok == (expected <= 1 / 128)


def test_least_uniform_pruning_uses_the_activation_widths(shared):
    n = shared.num_layers
    # At 8-bit activations 2-bit weights need pruning to reach 1/128; at 2-bit activations they
    # need none, and 8-bit weights with 2-bit activations need less pruning than with 8-bit ones.
    assert any(least_uniform_pruning(shared, [0] * n, [5] * n))
    assert least_uniform_pruning(shared, [0] * n, [0] * n) == [0] * n
    low = least_uniform_pruning(shared, [5] * n, [0] * n)
    high = least_uniform_pruning(shared, [5] * n, [5] * n)
    assert low is not None and (high is None or sum(low) < sum(high))


def test_uniform_baseline_plays_every_fitting_wxay_pair(tmp_path, shared):
    search = Search(tmp_path, RunSettings("uniform", 50, 0), _env(shared))
    BASELINES["uniform"](search, 0)
    n = shared.num_layers
    fitting = [p for p in level_pairs(shared) if fits(shared, [0] * n, [p[0]] * n, [p[1]] * n)[0]]
    records = _lines(tmp_path)
    assert len(records) == len(fitting) >= 2
    inner = [i for i in range(n) if i not in shared.graph.input_layers]
    for record, (w, a) in zip(records, fitting, strict=True):
        assert record["budget_met"] and all(min(p["bits"]) > 0 for p in record["policy"])
        widths = _widths(record)
        assert {widths[i] for i in inner} == {(shared.bits[w], ACTS[a])}


def test_two_stage_and_greedy_search_activation_widths(tmp_path, shared):
    for name in ("two-stage", "greedy"):
        search = Search(tmp_path / name, RunSettings(name, 80, 0), _env(shared))
        BASELINES[name](search, 0)
        assert all(r["budget_met"] for r in search.records), name
    two_stage = _lines(tmp_path / "two-stage")
    acts = {_widths(r)[1][1] for r in two_stage}
    assert acts == set(ACTS)  # every activation width is tried with some pruning that fits
    greedy = _lines(tmp_path / "greedy")
    # Greedy raises either kind of width one layer at a time: some probe differs from the start
    # only in one layer's activation width.
    # It starts from the most accurate of its starts: the uniform-width (two-stage) policies.
    starts = [
        r
        for r in greedy
        if len({w for w, _ in _widths(r)}) == 1 and len({a for _, a in _widths(r)[1:]}) == 1
    ]
    start = _widths(max(starts, key=lambda r: r["accuracy"]))
    assert any(
        sum(a != b for a, b in zip(_widths(r), start, strict=True)) == 1
        and any(x[1] != y[1] for x, y in zip(_widths(r), start, strict=True))
        for r in greedy[1:]
    )


def test_two_level_is_deterministic_and_starts_from_two_stage(tmp_path, shared):
    runs = []
    for name in ("a", "b"):
        search = Search(tmp_path / name, RunSettings("two-level", 40, 2), _env(shared))
        run_two_level(search, 2)
        assert search.count == 40
        runs.append(_lines(tmp_path / name))
    assert runs[0] == runs[1]
    assert all(r["budget_met"] for r in runs[0])
    # The warm start plays the two-stage baseline's first policies, in its order.
    search = Search(tmp_path / "two-stage", RunSettings("two-stage", 12, 0), _env(shared))
    BASELINES["two-stage"](search, 0)
    assert [r["policy"] for r in runs[0][:12]] == [r["policy"] for r in _lines(search.out)]


def test_two_level_activation_head_explores_and_learns(tmp_path, shared):
    config = TwoLevelConfig(warm_start=False, refine_fraction=0.0, batch_episodes=8)
    search = Search(tmp_path, RunSettings("two-level", 32, 0), _env(shared))
    agent = _Agent(search, 0, config)
    before = [p.detach().clone() for p in agent.net.act.parameters()]
    agent.run()
    records = _lines(tmp_path)
    inner = [i for i in range(shared.num_layers) if i not in shared.graph.input_layers]
    sampled = {_widths(r)[i][1] for r in records for i in inner}
    assert len(sampled) >= 4  # every activation width can be sampled, not only the widest
    assert all(_widths(r)[0][1] == 8 for r in records)  # the network input stays at 8 bits
    after = list(agent.net.act.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # trained


def test_uniform_choices_carry_activation_levels(shared):
    n = shared.num_layers
    choices = uniform_choices(shared, [0] * n, [1] * n, [3] * n)
    assert {c.act_level for c in choices} == {3}
    assert {c.act_level for c in uniform_choices(shared, [0] * n, [1] * n)} == {None}


@pytest.mark.parametrize("agent", ["ddpg", "maskable-ppo"])
def test_sb3_agents_run_on_v1(tmp_path, agent):
    summary = run_search(
        agent, tmp_path, 10, env_id="jpq_env/JPQWeightsActs-v0", progress=False, warmup_episodes=3
    )
    records = _lines(tmp_path)
    assert summary["evaluations"] == 10 == len(records)
    assert summary["env"]["id"] == "jpq_env/JPQWeightsActs-v0"
    assert len({w[1] for r in records for w in _widths(r)}) >= 2  # activation widths vary


def test_two_level_updates_stay_finite_at_the_sparsity_boundaries(tmp_path, shared):
    # A sparsity sampled at exactly 0 or 1 (float32 underflow at extreme Beta concentrations)
    # once gave -inf log-probabilities, NaN gradients and NaN weights in a long learning phase.
    config = TwoLevelConfig(
        warm_start=False, refine_fraction=0.0, batch_episodes=4, surrogate=False
    )
    search = Search(tmp_path, RunSettings("two-level", 8, 0), _env(shared))
    agent = _Agent(search, 0, config)
    agent.run()
    batch = agent.elite[:4]
    for ep, u in zip(batch, (0.0, 1.0, 0.0, 1.0), strict=False):
        ep.layer_u = [u] * len(ep.layer_u)
    agent._update(batch)
    assert all(torch.isfinite(p).all() for p in agent.net.parameters())
    agent.net.sparsity(torch.zeros(1, batch[0].layer_obs[0].shape[0]))  # still a valid Beta
