"""Smoke runs of the benchmark scripts: each ``--quick`` mode runs, writes no result file, and
prints table rows of the report's width; the rows of a table with a "target met" column answer
yes or no (the measured verdicts are the scripts' business, not the tests': timings depend on the
machine).
"""

import subprocess
import sys

import pytest

from tests import ROOT

SHARED = ROOT.parent / "shared" / "data"

# Benchmark name: (fewest columns its quick mode's table rows have, rows that end with a "target
# met" verdict: yes or no).
QUICK = {
    "apply_vs_proxy": (6, 2),  # digits and resnet18
    "speed": (3, 6),  # four tasks, two searches (the parallel rows have no target)
    "agents_quality": (6, 0),
    "agents_vs_baselines": (2, 0),
    "reward_designs": (7, 0),
    "byom_episode": (10, 2),  # resnet18 at 224 and at 32 pixels
    "soak": (10, 2),  # JPQWeights-v0 and JPQWeightsActs-v0
    "proxy": (3, 0),
    "two_level_ablation": (5, 0),
    "cifar_workload": (0, 0),  # prints its record as JSON, no table
    "export": (5, 0),
    "compare_digits": (6, 0),  # greedy and random, two seeds each
    "resnet20_grid": (8, 0),  # digits instead of ResNet-20: greedy, random, uniform
    "resnet20_finetune": (9, 0),  # digits, one epoch of the uniform W4A4 policy
    "jpq_bench": (2, 5),  # digits: 48 policies, a fit, 7 agents x 12 episodes (the leaderboard:
    # agent and one search length), the speed-up
}


def _quick_rows(name: str) -> list[str]:
    """The table rows ``python -m benchmarks.NAME --quick`` prints (it must leave results alone)."""
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
    assert [p.stat().st_mtime for p in results] == mtimes  # quick mode leaves results alone
    return [line for line in out.stdout.splitlines() if line.startswith("| ")]


@pytest.mark.parametrize("name", sorted(QUICK))
def test_quick_mode_runs_and_prints_a_table_row(name: str):
    if name == "cifar_workload" and not (SHARED / "cifar10-jpeg.tar.gz").is_file():
        pytest.skip(f"the JPEG copy of CIFAR-10 is not in {SHARED}")
    rows = _quick_rows(name)
    columns, targets = QUICK[name]
    if columns:
        assert rows and all(line.count("|") >= columns + 1 for line in rows)
    verdicts = [r for r in rows if r.rstrip().endswith(("| yes |", "| no |"))]
    assert len(verdicts) == targets, rows


@pytest.mark.slow
def test_ray_scaling_quick_mode_runs_and_the_pooled_search_logs_the_same_records():
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'jpq-env[ray]'")
    rows = _quick_rows("ray_scaling")
    # One evaluation time (20 ms): in process, pools of 1 and 2; then one agent's whole search
    # in process and on a pool of 2, whose last column says whether it logged the same records.
    episodes = [r for r in rows if r.count("|") == 9]
    searches = [r for r in rows if r.count("|") == 8]
    assert len(episodes) == 3 and all(r.rstrip().endswith("| - |") for r in episodes)
    assert len(searches) == 2 and "| in process |" in searches[0] and "| Ray pool |" in searches[1]
    assert searches[1].rstrip().endswith("| yes |"), searches
