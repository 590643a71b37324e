"""The command line as users of other RL tools expect it: --version, ``jpq list``, help on every
option (without importing torch).
"""

import argparse
import re
import subprocess
import sys

import pytest

from jpq_agents.catalogue import AGENT_NAMES
from jpq_agents.cli import _parser, main


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
    assert "jpq_env/JPQWeightsActs-v0" in out
    assert "jpq_env/JPQ-v1" not in out  # a renamed id still works but is not offered
    # The bench ids: the generic one always, a named one only where its bench file ships.
    assert "  jpq_env/JPQBench-v0  " in out and "  jpq_env/JPQBench-ResNet20-v0  " in out
    assert "JPQBench-Digits-v0" not in out  # no digits bench ships


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
            assert "(default: 0)" in " ".join(text.split())  # --seed: a zero is a default too
        if name == "finetune":
            said = " ".join(text.split())
            assert "(default: 0.01 lsq, 0.001 ste)" in said and "(default: 3)" in said
            assert "(default: lsq)" in said and "(default: 0.5 with lsq)" in said
        flat = " ".join(text.split())  # a default said once, never "(default: None)"
        assert "(default: None)" not in flat and "(default: [])" not in flat, name
        assert not re.search(r"default[^()]*\)\s*\(default", flat, re.IGNORECASE), name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "--task", "digts"], "unknown task 'digts' (did you mean 'digits'?)"),
        (["search", "--reward", "gallen"], "reward design 'gallen' (did you mean 'galen'?)"),
        (["search", "--env", "jpq_env/JPQWeightsAct-v0"], "(did you mean 'jpq_env/JPQWeightsActs-v0'?)"),  # noqa: E501
    ],
)  # fmt: skip
def test_bad_inputs_a_mistyped_name_gets_a_suggestion(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*argv, "--episodes", "2", "--quiet", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_inputs_a_mistyped_choice_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--agent", "two-levle"])
    assert "invalid choice: 'two-levle' (did you mean 'two-level'?)" in capsys.readouterr().err


def test_bad_inputs_a_mistyped_option_shows_its_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--episods", "3"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: jpq search ")
    assert "unrecognized arguments: --episods 3 (did you mean '--episodes'?)" in err


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
