"""The benchmarks' shared helpers (``benchmarks/common.py``): grid rows stamped with the command
and the thread variable that produced them."""

import sys
from pathlib import Path

import pytest


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
