"""JPQ-Bench's leaderboard step (``benchmarks/jpq_bench.py``): which searches a run asks for, in
which order, and the table the rows give (cells checked against means computed here)."""

import statistics

import pytest

from benchmarks.jpq_bench import AGENTS, ONCE, agent_runs, leaderboard


def test_a_subset_of_agents_keeps_the_leaderboard_order_and_runs_deterministic_agents_once():
    runs = agent_runs([1000, 10000], 3, [1 / 64], agents=["uniform", "random", "greedy"])
    keys = [(r["episodes"], r["agent"], r["seed"]) for r in runs]
    # Lengths first, then the agents in AGENTS' order (not the order asked), then seeds.
    assert keys == [
        (n, a, s)
        for n in (1000, 10000)
        for a in ("greedy", "random", "uniform")
        for s in ((0,) if a == "uniform" else (0, 1, 2))
    ]
    assert "uniform" in ONCE and "greedy" not in ONCE


def test_every_agent_by_default():
    runs = agent_runs([300], 2, [1 / 64, 1 / 128])
    assert {r["agent"] for r in runs} == set(AGENTS)
    per_budget = sum(1 if a in ONCE else 2 for a in AGENTS)
    assert len(runs) == 2 * per_budget
    assert [r["budget"] for r in runs] == [1 / 64] * per_budget + [1 / 128] * per_budget


def test_an_unknown_agent_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown agents \['dqn'\]"):
        agent_runs([300], 1, [1 / 64], agents=["random", "dqn"])


def test_leaderboard_cells_are_mean_and_sd_over_seeds_per_length():
    rows = [
        {"agent": "random", "budget": 1 / 64, "episodes": 300, "seed": s, "val": v}
        for s, v in enumerate([0.40, 0.42, 0.47])
    ] + [
        {"agent": "random", "budget": 1 / 64, "episodes": 1000, "seed": 0, "val": 0.5},
        {"agent": "uniform", "budget": 1 / 64, "episodes": 300, "seed": 0, "val": 0.8437},
    ]
    lines = leaderboard(rows)
    assert "| agent | 300 episodes | 1,000 episodes |" in lines
    vals = [40.0, 42.0, 47.0]
    mean, sd = statistics.mean(vals), statistics.stdev(vals)
    assert f"| random | {mean:.2f} ± {sd:.2f} (3) | 50.00 ± 0.00 (1) |" in lines
    assert "| uniform | 84.37 ± 0.00 (1) | - |" in lines
    assert not any(line.startswith("| two-level") for line in lines)  # no rows: no line
