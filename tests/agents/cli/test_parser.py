"""The command line as users of other RL tools expect it: --version, list, help, validate."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jpq_agents.catalogue import AGENT_NAMES
from jpq_agents.cli import _parser, main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("validate") / "run"
    argv = ["search", "--agent", "random", "--episodes", "5", "--out", str(out), "--quiet"]
    assert main([*argv, "--env", "jpq_env/JPQWeights-v0"]) == 0  # the default budget, 1/64
    return out


def test_version_names_the_installed_package(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"jpq {metadata.version('jpq-env')}"


def test_list_names_tasks_agents_rewards_and_env_ids(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("digits-deep", "resnet20-cifar", "two-level", "cmaes-warm", "galen", "haq"):
        assert f"  {name}" in out, name
    assert "jpq_env/JPQWeightsActs-v0" in out and "jpq_env/JPQ-v1  renamed" in out


def test_the_agent_names_are_the_runners():
    from jpq_agents.run import AGENTS

    assert sorted(AGENT_NAMES) == sorted(AGENTS)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_has_help_and_shows_its_default():
    parser = _parser()
    for name, sub in _subparsers(parser).items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"jpq {name} {action.dest} has no help"
        text = sub.format_help()
        if name == "search":
            assert "(default: two-level)" in text and "(default: 300)" in text
        if name == "finetune":
            assert "(default: 0.001)" in text and "(default: 3)" in text


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom jpq_agents.cli import main\n"
        "try:\n    main(['search', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'gymnasium' in sys.modules, file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "False False"
    assert "--agent" in out.stdout


def test_validate_replays_a_run_and_its_policy_file(run_dir, capsys):
    assert main(["validate", str(run_dir)]) == 0
    assert (
        "5 evaluations replayed: accuracy, BOPs and size match the log" in capsys.readouterr().out
    )
    assert main(["validate", str(run_dir / "policy.json")]) == 0
    assert "1 evaluations replayed" in capsys.readouterr().out


def test_validate_names_the_first_mismatching_episode(run_dir, tmp_path, capsys):
    import shutil

    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    log = copy / "evaluations.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records[2]["accuracy"] += 1e-9  # one logged score off by a hair
    records[3]["size_ratio"] *= 2
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["validate", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "mismatch at episode 2: accuracy logged" in err
    policy = json.loads((copy / "policy.json").read_text())
    policy["bops_ratio"] /= 2
    (copy / "policy.json").write_text(json.dumps(policy))
    assert main(["validate", str(copy / "policy.json")]) == 1
    assert f"episode {policy['episode']}: bops_ratio logged" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "missing")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_the_summary_says_versions_date_speed_and_the_defaulted_budget(run_dir):
    from importlib import metadata

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["budget"] == {"bops": 1 / 64}
    assert summary["versions"]["torch"] == metadata.version("torch")
    assert summary["versions"]["jpq-env"] == metadata.version("jpq-env")
    assert summary["date"].endswith("+00:00") and summary["date"][:2] == "20"
    assert summary["seconds_per_evaluation"] == pytest.approx(summary["seconds"] / 5, abs=0.01)
