import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jpq_agents.cli import main
from jpq_env import LocalEvaluator, Policy, load_task
from jpq_env.export.packed import load_compressed
from jpq_env.export.packing import read_container
from jpq_env.proxy.data import iter_batches

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search") / "run"
    assert (
        main(["search", "--episodes", "12", "--out", str(out), "--quiet", "--budget-bops", "1/32"])
        == 0
    )
    return out


def test_search_writes_every_file_and_a_summary(run_dir: Path, capsys):
    for name in (
        "run.json",
        "evaluations.jsonl",
        "policy.json",
        "reference.jsonl",
        "pareto.png",
        "summary.json",
    ):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["evaluations"] == 12 and summary["agent"] == "two-level"
    assert (
        summary["env"]["id"] == "jpq_env/JPQWeightsActs-v0"
    )  # activation widths are decided by default
    assert summary["best"]["bops_ratio"] <= 1 / 32 + 1e-12
    policy = Policy.from_json(json.loads((run_dir / "policy.json").read_text()))
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


def test_a_baseline_that_stops_early_says_so_and_why(two_stage_run, run_dir):
    assert "stopped_early" not in json.loads((run_dir / "summary.json").read_text())  # budget
    out, printed = two_stage_run
    summary = json.loads((out / "summary.json").read_text())
    n = summary["evaluations"]
    assert n < 300 and summary["stopped_early"].startswith("nothing left to try: it played")
    assert f"{n} of 300 (stopped early)" in printed
    assert f"stopped early, after {n} of 300 evaluations: {summary['stopped_early']}" in printed


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


def test_evaluate_and_export_agree(run_dir: Path, capsys, tmp_path):
    policy_file = run_dir / "policy.json"
    assert main(["evaluate", str(policy_file)]) == 0
    out = capsys.readouterr().out
    policy = Policy.from_json(json.loads(policy_file.read_text()))
    task = load_task("digits")
    expected = LocalEvaluator(task).test_accuracy(policy)
    assert f"test accuracy {expected:.2%}" in out
    for name in ("conv1", "conv4", "fc2"):
        assert name in out
    ckpt = tmp_path / "model.pt"
    assert main(["export", str(policy_file), "--out", str(ckpt)]) == 0
    header, tensors = read_container(ckpt)  # bit-packed levels (format v2)
    assert header["format"] == "jpq-compressed-v2" and tensors["payload"].dtype == torch.uint8
    model = load_compressed(ckpt, task.model, task.example_input)
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in iter_batches(task.test, 512))
    assert correct / len(task.test) == expected


def test_finetune_reports_before_and_after(run_dir: Path, capsys, tmp_path):
    out = tmp_path / "tuned.pt"
    assert main(["finetune", str(run_dir / "policy.json"), "--epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "before fine-tuning" in text and out.exists()
    state = torch.load(out, weights_only=True)
    policy = Policy.from_json(json.loads((run_dir / "policy.json").read_text()))
    pruned = policy.layers[1].bits == 0
    if pruned.any():  # masks stay fixed: pruned kernels are still zero after training
        assert state["conv2.weight"][torch.from_numpy(pruned)].abs().max() == 0


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


def test_bad_policy_files_are_named(tmp_path, run_dir, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["evaluate", str(bad)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    bad.write_text(json.dumps({"schema": 1, "layers": "x"}))
    assert main(["evaluate", str(bad)]) == 2
    assert "fingerprint" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir / "policy.json"), "--task", "digits-deep"]) == 2
    assert "made for another model" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.json")]) == 2
    assert "cannot read policy file" in capsys.readouterr().err


def test_search_refuses_a_directory_holding_another_run(run_dir, capsys):
    before = (run_dir / "evaluations.jsonl").read_text()
    assert main(["search", "--episodes", "3", "--out", str(run_dir), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run_dir / "evaluations.jsonl").read_text() == before


def test_rl_zoo_trains_with_the_project_hyperparameters(tmp_path):
    conf = str(ROOT / "agents" / "jpq_agents" / "hyperparams" / "ppo.yml")
    cmd = [
        sys.executable, "-m", "rl_zoo3.train", "--gym-packages", "jpq_env",
        "--env", "jpq_env/JPQWeights-v0", "--algo", "ppo", "--conf-file", conf,
        "-n", "96", "--log-folder", str(tmp_path), "--eval-freq", "-1", "--seed", "0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the checkout, installed or not
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert list(tmp_path.rglob("*.zip"))


def test_a_broken_export_is_named(tmp_path):
    task = load_task("digits")
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable jpq-env export"):
        load_compressed(bad, task.model, task.example_input)
    with pytest.raises(ValueError, match="no export at"):
        load_compressed(tmp_path / "missing.pt", task.model, task.example_input)
