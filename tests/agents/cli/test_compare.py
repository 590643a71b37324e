"""``jpq compare``: runs grouped by agent with mean ± sd over seeds and learning curves; every run
also writes SB3's Monitor CSV (``monitor.csv``), which SB3's plotting tools read.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from jpq_agents.cli import main
from tests.episodes import log_records

CHEAP = ["--env-option", "val_images=64", "--episodes", "12", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("compare")
    out = []
    for agent in ("random", "greedy"):
        for seed in (0, 1):
            run = root / f"{agent}-{seed}"
            assert (
                main(["search", "--agent", agent, "--seed", str(seed), "--out", str(run), *CHEAP])
                == 0
            )
            out.append(run)
    return out


def _best_so_far(run: Path) -> float:
    ok = [
        r["accuracy"] for r in log_records(run) if r["budget_met"] and r.get("proxy_complete", True)
    ]
    return max(ok)


def test_compare_groups_runs_by_agent_with_mean_and_sd_over_seeds(runs, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert main(["compare", *map(str, runs), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    for agent in ("random", "greedy"):
        mine = [r for r in runs if r.name.startswith(agent)]
        best = np.array([_best_so_far(r) for r in mine]) * 100
        tests = [
            json.loads((r / "summary.json").read_text())["best"]["accuracy_test"] for r in mine
        ]
        row = next(line for line in out.splitlines() if line.startswith(f"| {agent} "))
        assert "BOPs 1/128" in row  # the env's default budget, as the run recorded it
        assert "| 2 (0, 1) | 12 |" in row
        assert f"{best.mean():.2f} ± {best.std(ddof=1):.2f}" in row
        t = np.array(tests) * 100
        assert f"{t.mean():.2f} ± {t.std(ddof=1):.2f}" in row
    assert png.stat().st_size > 20_000 and f"learning curves: {png}" in out


def test_compare_refuses_what_is_not_a_run(tmp_path, runs, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert main(["compare", str(runs[0]), "--out", str(runs[0] / "pareto.png")]) == 2
    assert "is a file of the run" in capsys.readouterr().err


def test_every_run_writes_a_monitor_file_in_sb3s_format(runs):
    """What ``stable_baselines3.common.monitor.load_results`` reads (it needs pandas): a ``#``
    line of JSON with ``t_start`` and ``env_id``, then ``r,l,t`` rows, one per episode."""
    import csv

    for run in runs:
        lines = (run / "monitor.csv").read_text().splitlines()
        header = json.loads(lines[0].removeprefix("#"))
        assert (
            set(header) >= {"t_start", "env_id"} and header["env_id"] == "jpq_env/JPQWeightsActs-v0"
        )
        rows = list(csv.DictReader(lines[1:]))
        records = log_records(run)
        assert [float(row["r"]) for row in rows] == [r["reward"] for r in records]
        layers = len(records[0]["policy"])
        assert {row["l"] for row in rows} == {str(2 * layers)}  # two native steps per layer
        times = [float(row["t"]) for row in rows]
        assert times == sorted(times) and times[0] >= 0
