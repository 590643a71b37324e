"""``jpq report``: the model's costs and the FP32 and uniform-width accuracies."""

import re

import pytest

from jpq_agents.cli import main
from jpq_env import Conventions, LocalEvaluator, Policy, load_task, measure


def test_report_prints_the_core_numbers(capsys: pytest.CaptureFixture[str]):
    assert main(["report", "--task", "digits", "--quiet"]) == 0
    out = capsys.readouterr().out
    task = load_task("digits")
    ev = LocalEvaluator(task)
    macs = ev.graph.total_macs
    assert f"MACs {macs:,}" in out and f"BOPs {macs * 1024:,}" in out
    assert f"accuracy val {ev.fp32_accuracy:.2%}" in out
    w4a4 = Policy.uniform(ev.graph, 4, 4, Conventions(input_bits=8))
    row = next(line for line in out.splitlines() if line.strip().startswith("W4A4"))
    assert f"{measure(ev.graph, w4a4).bops:,}" in row
    assert re.search(rf"{ev.accuracy(w4a4):.2%}".replace(".", r"\."), row)
    for name in ev.graph.names:
        assert name in out


def test_unknown_task_is_a_clear_error(capsys: pytest.CaptureFixture[str]):
    assert main(["report", "--task", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
