"""``jpq search``: the files a search writes, its summary, a baseline that stops early, the
environment's default budget, bad arguments, a directory holding another run, a finished run
replayed.
"""

import contextlib
import io
import json
from pathlib import Path

import pytest

from jpq_agents.cli import main
from jpq_env import LocalEvaluator, Policy, load_task


def test_search_writes_every_file_and_a_summary(search_run: Path, capsys):
    for name in (
        "run.json",
        "evaluations.jsonl",
        "policy.json",
        "reference.jsonl",
        "pareto.png",
        "summary.json",
    ):
        assert (search_run / name).exists(), name
    summary = json.loads((search_run / "summary.json").read_text())
    assert summary["evaluations"] == 12 and summary["agent"] == "two-level"
    assert (
        summary["env"]["id"] == "jpq_env/JPQWeightsActs-v0"
    )  # activation widths are decided by default
    assert summary["best"]["bops_ratio"] <= 1 / 32 + 1e-12
    policy = Policy.from_json(json.loads((search_run / "policy.json").read_text()))
    evaluator = LocalEvaluator(load_task("digits"))
    assert summary["best"]["accuracy_test"] == evaluator.test_accuracy(policy)


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory) -> tuple[Path, str]:
    """A two-stage search asked for more evaluations than it has policies to try."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("two-stage") / "run"
    argv = ["search", "--agent", "two-stage", "--episodes", "300", "--out", str(out), "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(argv) == 0
    return out, stdout.getvalue()


def test_a_baseline_that_stops_early_says_so_and_why(two_stage_run, search_run):
    assert "stopped_early" not in json.loads((search_run / "summary.json").read_text())  # budget
    out, printed = two_stage_run
    summary = json.loads((out / "summary.json").read_text())
    n = summary["evaluations"]
    assert n < 300 and summary["stopped_early"].startswith("nothing left to try: it played")
    assert f"{n} of 300 (stopped early)" in printed
    assert f"stopped early, after {n} of 300 evaluations: {summary['stopped_early']}" in printed


def test_the_summary_labels_the_best_policys_costs_as_shares_of_fp32(two_stage_run):
    from jpq_agents.cli.output import one_in

    out, printed = two_stage_run
    best = json.loads((out / "summary.json").read_text())["best"]
    bops, size = best["bops_ratio"], best["size_ratio"]
    rows = [" ".join(line.split()) for line in printed.splitlines()]
    assert f"best BOPs / FP32 BOPs {bops:.5f} ({one_in(bops)})" in rows
    assert f"best size / FP32 size {size:.4f} ({one_in(size)})" in rows
    # The old labels read like the FP32 model's own costs.
    assert "BOPs of FP32" not in printed and "size of FP32" not in printed


def test_search_lists_the_files_it_wrote(two_stage_run):
    out, printed = two_stage_run
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    assert {"run.json", "reference.jsonl", "tensorboard/"} <= set(names)
    assert printed.rstrip().splitlines()[-1] == f"files in {out}: {', '.join(names)}"


def test_search_defaults_to_the_environments_budget(tmp_path):
    import gymnasium as gym

    for extra, target in (([], 1 / 128), (["--env", "jpq_env/JPQWeights-v0"], 1 / 64)):
        out = tmp_path / str(len(extra))
        assert main(["search", "--episodes", "2", "--out", str(out), "--quiet", *extra]) == 0
        env_kwargs = dict(json.loads((out / "summary.json").read_text())["env"])
        env = gym.make(env_kwargs.pop("id"), **env_kwargs).unwrapped
        assert "budget_bops" not in env_kwargs and env.budget.targets["bops"] == target


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "--agent", "nope"], "invalid choice: 'nope'"),
        (["search", "--budget-bops", "1.5"], "a budget must lie in (0, 1]"),
        (["search", "--budget-bops", "0"], "a budget must lie in (0, 1]"),
        (["search", "--budget-bops", "1/0"], "not a fraction: '1/0'"),
        (["search", "--budget-size", "1/0.0"], "not a fraction: '1/0.0'"),
        (["search", "--episodes", "0"], "must be at least 1"),
    ],
)
def test_bad_search_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_search_refuses_a_directory_holding_another_run(search_run, capsys):
    before = (search_run / "evaluations.jsonl").read_text()
    assert main(["search", "--episodes", "3", "--out", str(search_run), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (search_run / "evaluations.jsonl").read_text() == before


def _cli(argv: list[str]) -> tuple[int, str]:
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = main(argv)
    return code, stdout.getvalue()


def test_a_finished_run_run_again_says_it_is_a_replay_and_a_two_stage_best_is_named(tmp_path):
    out = str(tmp_path / "run")
    argv = ["search", "--agent", "two-stage", "--episodes", "40", "--out", out, "--quiet"]
    argv += ["--env", "jpq_env/JPQWeights-v0", "--env-option", "val_images=32"]
    code, first = _cli(argv)
    assert code == 0 and "replayed" not in first
    summary = json.loads(Path(out, "summary.json").read_text())
    assert "replayed_from_log" not in summary
    reference = [json.loads(x) for x in Path(out, "reference.jsonl").read_text().splitlines()]
    best_policy = json.loads(Path(out, "policy.json").read_text())
    key = [[p["act_bits"], p["bits"]] for p in best_policy["layers"]]
    same = [
        p["label"] for p in reference if [[q["act_bits"], q["bits"]] for q in p["policy"]] == key
    ]
    assert same and summary["best"]["same_as"] == same[0]  # the two-stage agent's best is one
    assert f"the best policy is the reference policy '{same[0]}'" in first
    assert json.loads(Path(out, "run.json").read_text())["env"]["val_images"] == 32
    code, again = _cli([*argv, "--resume"])
    n = summary["evaluations"]
    assert code == 0
    assert f"resumed: {n} evaluations replayed from the log (not re-scored), 0 new" in again
    assert "already finished" in again
    assert json.loads(Path(out, "summary.json").read_text())["replayed_from_log"] == n
