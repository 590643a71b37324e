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
        {"agent": "random", "budget": 1 / 64, "episodes": 300, "seed": s, "val": v, "seconds": t}
        for s, (v, t) in enumerate([(0.40, 3.0), (0.42, 4.0), (0.47, 8.0)])
    ] + [
        {"agent": "random", "budget": 1 / 64, "episodes": 1000, "seed": 0, "val": 0.5,
         "seconds": 12.25},
        {"agent": "uniform", "budget": 1 / 64, "episodes": 300, "seed": 0, "val": 0.8437,
         "seconds": 0.1},
    ]  # fmt: skip
    lines = leaderboard(rows)
    assert "| agent | 300 episodes | 1,000 episodes |" in lines
    vals = [40.0, 42.0, 47.0]
    mean, sd = statistics.mean(vals), statistics.stdev(vals)
    assert f"| random | {mean:.2f} ± {sd:.2f} (3) | 50.00 ± 0.00 (1) |" in lines
    assert "| uniform | 84.37 ± 0.00 (1) | - |" in lines
    # what a search costs: mean wall seconds per agent and length, searches in brackets
    costs = lines[lines.index("### Seconds per search") :]
    assert "| random | 5.0 (3) | 12.2 (1) |" in costs  # (3 + 4 + 8) / 3; 12.25 to one place
    assert "| uniform | 0.1 (1) | - |" in costs
    assert not any(line.startswith("| two-level") for line in lines)  # no rows: no line


def _checked(agent, n, seed, predicted, real, spread, budget=1 / 64):
    return {
        "agent": agent,
        "budget": budget,
        "episodes": n,
        "seed": seed,
        "predicted_val": predicted,
        "predicted_val_std": spread,
        "real_val": real,
        "predicted_test": predicted - 0.02,
        "real_test": real - 0.03,
    }


def test_validation_picks_the_named_agents_lengths_and_seeds_with_a_policy():
    from benchmarks.jpq_bench import validation_runs

    log = [
        {"agent": a, "budget": 1 / 64, "episodes": n, "seed": s, "val": 0.5, "bench": "d1"}
        for a in ("two-level", "random")
        for n in (300, 1000, 10000)
        for s in range(4)
    ] + [{"agent": "greedy", "budget": 1 / 64, "episodes": 300, "seed": 0, "val": None}]
    log.append({**log[0], "bench": "d2"})  # the same search logged twice: the last row counts
    runs = validation_runs(log, agents=["two-level", "greedy"], lengths=[300, 1000], seeds=3)
    assert [(r["agent"], r["episodes"], r["seed"]) for r in runs] == [
        ("two-level", n, s) for n in (300, 1000) for s in range(3)
    ]  # random not asked, seed 3 and 10,000 not asked, greedy's search found no policy
    assert set(runs[0]) == {"agent", "budget", "episodes", "seed", "bench"}
    assert runs[0]["bench"] == "d2" and [r["bench"] for r in runs[1:]] == ["d1"] * 5


def test_validation_table_gives_the_gap_per_agent_and_length_and_the_spreads_rank_correlation():
    from benchmarks.jpq_bench import validation_table

    rows = [
        _checked("two-level", 1000, 0, 0.89, 0.87, 0.004),
        _checked("two-level", 1000, 1, 0.893, 0.867, 0.003),
        _checked("two-level", 300, 0, 0.8794, 0.8786, 0.0005),
        _checked("greedy", 300, 0, 0.8865, 0.8864, 0.0006),
        _checked("two-level", 1000, 0, 0.7, 0.6, 0.01, budget=1 / 128),
    ]
    lines = validation_table(rows[:4])
    gaps = [-2.0, -2.6]  # real - predicted, points
    mean, sd = statistics.mean(gaps), statistics.stdev(gaps)
    row = next(x for x in lines if x.startswith("| 1/64 | two-level | 1,000 | 2 |"))
    assert f"| {mean:.2f} ± {sd:.2f} |" in row
    assert "| 89.15 ± 0.21 | 86.85 ± 0.21 |" in row  # predicted and real held-out
    assert next(x for x in lines if x.startswith("| 1/64 | greedy | 300 | 1 |"))
    # Over-predictions 2.0, 2.6, 0.08, 0.01 and spreads 0.4, 0.3, 0.05, 0.06: ranks
    # (3, 4, 2, 1) and (4, 3, 1, 2): Spearman 1 - 6 * (1 + 1 + 1 + 1) / (4 * 15) = 0.6.
    assert lines[-1].endswith("(predicted - real): 1/64 0.600 (4 policies).")
    assert validation_table([]) == []
    assert "sha256 prefix: rows): not recorded: 4." in lines[3]
    rows[0]["weights"] = "e08b753fdd72"
    assert "rows): e08b753fdd72: 1, not recorded: 3." in validation_table(rows[:4])[3]
    # Budgets are not pooled: the 1/128 search has its own line, 1/64's lines are unchanged.
    both = validation_table(rows)
    assert both[-2].startswith(
        "| 1/128 | two-level | 1,000 | 1 | 70.00 ± 0.00 | 60.00 ± 0.00 | -10.00 ± 0.00 |"
    )
    assert row in both


def test_rerun_table_compares_reruns_with_the_recorded_rows_over_the_same_seeds():
    from benchmarks.jpq_bench import rerun_table

    def row(agent, seed, val, cpu=None, n=300):
        return {
            "agent": agent,
            "budget": 1 / 64,
            "episodes": n,
            "seed": seed,
            "val": val,
            "cpu": cpu,
        }

    recorded = [row("two-level", s, v) for s, v in enumerate([0.88, 0.87, 0.86])]
    recorded.append(row("greedy", 0, 0.885))
    reruns = [
        row("two-level", 0, 0.89, "EPYC, avx512"),
        row("two-level", 1, 0.87, "EPYC, avx512"),  # identical
        row("greedy", 0, 0.885, "EPYC, avx512"),  # identical
        row("greedy", 5, 0.5, "EPYC, avx512"),  # no recorded row: left out
    ]
    lines = rerun_table(recorded, reruns)
    two = next(x for x in lines if x.startswith("| two-level |"))
    # Seeds 0 and 1 only (seed 2 was not rerun): recorded 88 and 87, rerun 89 and 87.
    rec = f"{statistics.mean([88, 87]):.2f} ± {statistics.stdev([88, 87]):.2f}"
    new = f"{statistics.mean([89, 87]):.2f} ± {statistics.stdev([89, 87]):.2f}"
    assert two == (
        f"| two-level | 1/64 | 300 | EPYC, avx512 (recorded: not recorded) | 2 | {rec} | {new} "
        "| 1 of 2 |"
    )
    greedy = next(x for x in lines if x.startswith("| greedy |"))
    assert greedy.endswith("| 1 | 88.50 ± 0.00 | 88.50 ± 0.00 | 1 of 1 |")
    assert lines.index(two) < lines.index(greedy)  # the leaderboard's agent order
    assert rerun_table(recorded, []) == []
