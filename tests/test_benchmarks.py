"""Smoke runs of the benchmark scripts (their --quick modes write no result file)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["apply_vs_proxy", "env_speed", "agents_quality"])
def test_quick_mode_runs_and_prints_a_table_row(name: str):
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
    assert rows and all(line.count("|") >= 7 for line in rows)
    assert [p.stat().st_mtime for p in results] == mtimes  # quick mode leaves results alone


def test_recorded_results_exist_and_meet_their_targets():
    for name in ("apply_vs_proxy", "env_speed"):
        text = (ROOT / "benchmarks" / "results" / f"{name}.md").read_text()
        assert "Produced by `python -m benchmarks." in text
        rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
        assert len(rows) >= 3  # header and at least two tasks
        assert all(row.rstrip().endswith("| yes |") for row in rows[1:]), name
