"""Smoke runs of the benchmark scripts (their --quick modes write no result file)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


# Benchmark name: fewest columns its quick mode's table rows have.
QUICK = {
    "apply_vs_proxy": 6,
    "speed": 3,
    "agents_quality": 6,
    "agents_vs_baselines": 2,
    "reward_designs": 7,
    "byom_episode": 10,
    "soak": 10,
    "proxy": 3,
    "two_level_ablation": 5,
    "cifar_workload": 0,  # prints its record as JSON, no table
    "export": 5,
}


@pytest.mark.parametrize("name", sorted(QUICK))
def test_quick_mode_runs_and_prints_a_table_row(name: str):
    if name == "cifar_workload" and not (SHARED / "cifar10-jpeg.tar.gz").is_file():
        pytest.skip(f"the JPEG copy of CIFAR-10 is not in {SHARED}")
    results = sorted((ROOT / "benchmarks" / "results").glob("*"))
    mtimes = [p.stat().st_mtime for p in results]
    out = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    if QUICK[name]:
        assert rows and all(line.count("|") >= QUICK[name] + 1 for line in rows)
    assert [p.stat().st_mtime for p in results] == mtimes  # quick mode leaves results alone


@pytest.mark.slow
def test_ray_scaling_quick_mode_runs(monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'jpq-env[ray]'")
    monkeypatch.setitem(QUICK, "ray_scaling", 7)  # whole-search table: 7 columns
    test_quick_mode_runs_and_prints_a_table_row("ray_scaling")


def test_recorded_results_exist_and_report_their_targets():
    """Every table with a "target met" column answers yes or no on every row.

    Targets are reported in the results, not enforced by tests (timings depend on the machine).
    """
    for name in ("apply_vs_proxy", "speed", "byom_episode"):
        text = (ROOT / "benchmarks" / "results" / f"{name}.md").read_text()
        assert "Produced by `python -m benchmarks." in text
        tables = [t for t in text.split("\n\n") if t.startswith("| ") and "target met" in t]
        assert tables, name
        for table in tables:
            rows = [line for line in table.splitlines() if "---" not in line][1:]
            assert len(rows) >= 2, name  # at least two tasks or searches
            assert all(row.rstrip().endswith(("| yes |", "| no |")) for row in rows), name


def test_recorded_soak_kept_the_model_and_memory():
    text = (ROOT / "benchmarks" / "results" / "soak.md").read_text()
    assert "Produced by `python -m benchmarks.soak" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| jpq_env/")]
    assert rows
    for env_id, episodes, unchanged, _, _, growth, *_ in (map(str.strip, r) for r in rows):
        assert episodes == "10,000" and unchanged == "yes", env_id
        assert abs(float(growth.rstrip("%"))) <= 5.0, env_id


def test_recorded_ray_scaling_meets_its_target():
    text = (ROOT / "benchmarks" / "results" / "ray_scaling.md").read_text()
    assert "Produced by `python -m benchmarks.ray_scaling" in text
    episodes, searches = text.split("## Whole searches")

    def table_rows(part: str) -> list[str]:
        return [line for line in part.splitlines() if line.startswith("| ") and "---" not in line]

    rows = table_rows(episodes)
    assert len(rows) == 7  # header, then in process and pools of 1 and 2 at 20 and 200 ms
    targets = [row for row in rows[1:] if not row.rstrip().endswith("| - |")]
    assert [row.split("|")[1:4] for row in targets] == [[" 200 ", " Ray pool ", " 2 "]]
    assert targets[0].rstrip().endswith("| yes |")
    # Whole searches: every pooled search logged exactly the in-process records.
    pooled = [row for row in table_rows(searches)[1:] if "Ray pool" in row]
    assert {row.split("|")[1].strip() for row in pooled} == {"two-level", "greedy"}
    assert len(pooled) == 4 and all(row.rstrip().endswith("| yes |") for row in pooled)


def test_reward_design_measures_against_hand_computed_values():
    from benchmarks.reward_designs import best_curve, evaluations_to_within, rank_correlation

    records = [
        {"accuracy": 0.9, "budget_met": False},  # over budget: not counted
        {"accuracy": 0.5, "budget_met": True},
        {"accuracy": 0.7, "budget_met": True},
        {"accuracy": 0.6, "budget_met": True},
        {"accuracy": 0.75, "budget_met": True},
    ]
    curve = best_curve(records)
    assert curve == [0.0, 0.5, 0.7, 0.7, 0.75]
    assert evaluations_to_within(curve, 0.05) == 3  # 0.7 is within 0.05 of 0.75
    assert evaluations_to_within(curve, 0.01) == 5
    # Kendall tau-b by hand: pairs of (1, 2, 3, 4) and (1, 3, 2, 4): 5 concordant, 1 discordant.
    assert rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(rank_correlation([0.9, 0.9, 0.9], [0.8, 0.7, 0.9]))  # a plateau: undefined
    assert np.isnan(rank_correlation([0.1, 0.2], [0.5, 0.5]))


def test_ablation_learners_run_with_and_without_the_learning_signals():
    from benchmarks import two_level_ablation as ablation
    from jpq_agents.run import LEARNER_ENV

    def kwargs(variant: str) -> dict:
        return ablation.env_kwargs({"case": "digits:v1:1/128", "variant": variant})

    assert kwargs("default") == {"task": "digits", "budget_bops": 1 / 128, "sensitivity": True}
    assert ablation._register("ppo-no-signals") == "ppo"
    # Without signals: every signal the learner gets by default is turned off.
    off = kwargs("ppo-no-signals")
    assert set(LEARNER_ENV["ppo"]) <= set(off)
    assert not any(off[k] for k in LEARNER_ENV["ppo"])
    assert "sensitivity" not in kwargs("ppo")  # run_search gives the defaults


def _square(run: dict) -> dict:
    return {**run, "value": run["x"] ** 2}


def test_grid_rows_name_the_command_and_threads_that_produced_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import json

    from benchmarks import common

    monkeypatch.setattr(sys, "argv", ["/x/benchmarks/two_level_ablation.py", "--cases", "a"])
    monkeypatch.setenv("JPQ_THREADS", "1")
    log = tmp_path / "runs.jsonl"
    key = lambda r: (str(r["x"]),)  # noqa: E731
    rows = common.run_grid([{"x": 2}, {"x": 3}], log, _square, key)
    wanted = "JPQ_THREADS=1 python -m benchmarks.two_level_ablation --cases a"
    assert [r["command"] for r in rows] == [wanted, wanted]
    assert [json.loads(line)["command"] for line in log.read_text().splitlines()] == [wanted] * 2
    assert [r["value"] for r in rows] == [4, 9]
    # A second invocation finds the rows done and keeps their command; a new row gets its own,
    # with OMP_NUM_THREADS when that is what decides the thread count.
    monkeypatch.delenv("JPQ_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(sys, "argv", ["/x/benchmarks/two_level_ablation.py"])
    rows = common.run_grid([{"x": 2}, {"x": 4}], log, _square, key)
    new = "OMP_NUM_THREADS=2 python -m benchmarks.two_level_ablation"
    assert [r["command"] for r in rows] == [wanted, new]
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert common.command() == "python -m benchmarks.two_level_ablation"


def test_ablation_report_lists_the_commands_of_the_rows_that_record_them():
    from benchmarks import two_level_ablation as ablation

    rows = [{"command": "c1"}, {"command": "c1"}, {"command": "c2"}, {}]
    text = ablation._commands(rows)
    assert "`c1` (2 rows)" in text and "`c2` (1 row)" in text and "; 1 row predates" in text
    assert ablation._commands([{}]) == ""
