"""Bad inputs on the command line, each refused with an error naming the problem.

Part of the catalogue of bad inputs (``pytest tests -k bad_inputs --collect-only -q`` lists it):
policy files (never choosing code to import), ``--out`` paths (a ``jpq search`` that cannot start
leaves no ``--out`` folders), result directories and their evaluation logs edited, linked or
cut (no result lost or silently wrong), seeds and devices.

Covered next to their modules and not repeated here: a bad ``jpq search`` argument on the command
line (``tests/agents/cli/test_search.py::test_bad_search_arguments``: unknown agent, budget 0 or
above 1, episodes 0), ``jpq evaluate`` on a missing, non-JSON or other-model policy file and
``jpq search`` into a directory holding another run (``tests/agents/cli/test_search.py``), a
malicious checkpoint (``tests/repo/test_safe_loading.py``), a torn or edited evaluation log
(``tests/agents/test_search.py``), missing digits checkpoints (``tests/tasks/test_digits.py``), a
baseline that runs out of policies before its budget
(``tests/agents/test_baselines.py::test_baselines_that_run_out_of_policies_say_why``,
``tests/agents/cli/test_search.py::test_a_baseline_that_stops_early_says_so_and_why``), the files
line of ``jpq search`` (``tests/agents/cli/test_search.py::test_search_lists_the_files_it_wrote``),
a kernel left without live inputs (``tests/core/graph/test_channels.py``).
"""

# ruff: noqa: E501 - the catalogue is a table, one case per line
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jpq_agents.cli import main
from jpq_agents.run import run_search
from jpq_agents.search import LOG_NAME, RUN_NAME
from jpq_env import LayerGraph, LayerPolicy, Policy, PolicyError, load_task
from jpq_env.envs import JPQEnv
from tests.policy_edits import with_field


@pytest.fixture(scope="module")
def env() -> JPQEnv:
    return JPQEnv()


@pytest.fixture(scope="module")
def policy_json(env: JPQEnv) -> dict[str, Any]:
    return Policy.uniform(env.graph, 8, 8, env.conventions).to_json()


def test_hand_edited_policy_through_the_cli(tmp_path, policy_json, capsys):
    path = tmp_path / "policy.json"
    path.write_text(with_field(("layers", 2, "bits", 0), 40)(policy_json))
    assert main(["evaluate", str(path)]) == 2
    assert "weight bit-width 40 is outside the allowed set" in capsys.readouterr().err


def test_search_output_that_is_a_file_is_named(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    for out in (tmp_path / "afile", tmp_path / "afile" / "run"):
        argv = ["search", "--agent", "random", "--episodes", "2", "--out", str(out), "--quiet"]
        assert main(argv) == 2
        assert f"cannot use '{out}' as the output directory" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "mine"


SEARCH_ARGUMENTS = [
    pytest.param(["--task", "no_such_package_xyz.tasks:make"], "cannot import module 'no_such_package_xyz.tasks'", id="search-task-module-unknown"),
    pytest.param(["--task", "tests.bad_tasks:missing"], "module 'tests.bad_tasks' has no function 'missing'", id="search-task-factory-missing"),
    pytest.param(["--task", "tests.bad_tasks:raises"], "the dataset server is down", id="search-task-factory-raises"),
    pytest.param(["--task-option", "nope=1"], r"task 'digits' does not take the options \['nope'\]", id="search-task-option-unknown"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), SEARCH_ARGUMENTS)
def test_search_that_cannot_start_leaves_no_directory(tmp_path, capsys, extra, message):
    """The folders --out names are created to lock the run: one that cannot start removes them."""
    out = tmp_path / "runs" / "run"
    argv = ["search", "--agent", "random", "--episodes", "2", "--out", str(out), "--quiet"]
    assert main([*argv, *extra]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # neither run/ nor runs/ is left behind
    out.mkdir(parents=True)  # a folder the user made is the user's: it stays, empty
    assert main([*argv, *extra]) == 2
    assert out.is_dir() and list(out.iterdir()) == []


def _random_run(out: Path, episodes: int, *extra: str) -> int:
    argv = ["search", "--agent", "random", "--episodes", str(episodes), "--out", str(out)]
    return main([*argv, "--quiet", *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust") / "run"
    assert _random_run(out, 6) == 0
    return out


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.mark.parametrize("command", ["evaluate", "finetune", "export"])
def test_a_policy_file_never_chooses_code_to_import(
    tmp_path, policy_json, monkeypatch, capsys, command
):
    monkeypatch.chdir(tmp_path)
    evil = {**policy_json, "task": "os:system", "env": {"task_options": {"command": "touch PWNED"}}}
    (tmp_path / "evil.json").write_text(json.dumps(evil))
    argv = [command, "evil.json"] + (["--out", "out.pt"] if command != "evaluate" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "names the task factory 'os:system': a policy file never chooses code to import" in err
    assert "--task os:system" in err  # how to run it, if the user trusts it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.json"]  # no PWNED, no out.pt


def test_a_factory_the_user_names_runs_with_the_files_options(tmp_path, capsys):
    task = load_task("tests.bad_tasks:good")
    graph = LayerGraph.from_module(task.model, task.example_input)
    data = {
        **Policy.uniform(graph, 8, 8).to_json(),
        "task": "tests.bad_tasks:good",
        "env": {"task_options": {}},
    }
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert main(["evaluate", str(tmp_path / "p.json")]) == 2
    assert "never chooses code" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "p.json"), "--task", "tests.bad_tasks:good"]) == 0
    assert "test accuracy" in capsys.readouterr().out


POLICY_FILE_FIELDS = [
    pytest.param(lambda d: {**d, "env": {"task_options": [1, 2]}}, "'env.task_options' must be an object of named options, got [1, 2]", id="policy-task-options-a-list"),
    pytest.param(lambda d: {**d, "env": [1]}, "'env' must be an object", id="policy-env-a-list"),
    pytest.param(lambda d: {**d, "task": 3}, "'task' must be a string, got 3", id="policy-task-a-number"),
    pytest.param(lambda d: {**d, "env": {"bn_recalibration": "no"}}, "env.bn_recalibration must be True or False, got 'no'", id="policy-recalibration-a-string"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), POLICY_FILE_FIELDS)
def test_bad_policy_file_field_is_named_by_the_cli(tmp_path, policy_json, capsys, edit, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(edit(policy_json)))
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "is nested too deeply", id="policy-nested-100000-deep"),
        pytest.param(b'{"schema": 1, "\xff": 2}', "is not UTF-8 text", id="policy-undecodable"),
    ],
)  # fmt: skip
def test_unreadable_policy_file_is_named(tmp_path, capsys, content, message):
    path = tmp_path / "p.json"
    path.write_bytes(content)
    assert main(["evaluate", str(path)]) == 2
    assert f"policy file '{path}' {message}" in capsys.readouterr().err


def test_a_policy_with_nothing_left_is_evaluated(tmp_path, env: JPQEnv, capsys):
    # Every kernel but the output layer's pruned: the output layer loses all its inputs too.
    policy = Policy.uniform(env.graph, 0, 8)
    layers = list(policy.layers)
    last = layers[-1]
    layers[-1] = LayerPolicy(last.name, np.full(len(last.bits), 8), last.act_bits)
    data = Policy(tuple(layers), policy.fingerprint).to_json()
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert main(["evaluate", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "BOPs 0 = 0.00000 of FP32 (0)" in out
    assert "test accuracy" in out


def test_a_resumed_run_never_shrinks(finished_run, capsys):
    before = _files(finished_run)
    assert _random_run(finished_run, 3, "--resume") == 2
    err = capsys.readouterr().err
    assert "cannot resume with 3 episodes: the run in" in err and "was started for 6" in err
    assert "--episodes 6 or more" in err
    assert _files(finished_run) == before


def test_out_holding_the_users_files_is_refused(tmp_path, capsys):
    for name in ("policy.json", "summary.json", "reference.jsonl"):
        (tmp_path / name).write_text(f"the user's {name}")
    before = _files(tmp_path)
    for resume in ([], ["--resume"]):
        assert _random_run(tmp_path, 2, *resume) == 2
        err = capsys.readouterr().err
        assert "is not empty and holds no run (run.json is missing): it holds policy.json" in err
    assert _files(tmp_path) == before


def test_an_empty_out_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["search", "--agent", "random", "--episodes", "2", "--out", "", "--quiet"]
    assert main(argv) == 2
    assert "out must name a directory, got ''" in capsys.readouterr().err
    assert not (tmp_path / LOG_NAME).exists() and not (tmp_path / RUN_NAME).exists()


def _edit_log(run: Path, target: Path, line: int, change: Callable[[dict[str, Any]], None]) -> None:
    for name in ("run.json", LOG_NAME, "policy.json"):
        (target / name).write_bytes((run / name).read_bytes())
    records = [json.loads(x) for x in (target / LOG_NAME).read_text().splitlines()]
    change(records[line])
    (target / LOG_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))


LOG_EDITS = [
    pytest.param(lambda r: r.pop("policy"), r"evaluations.jsonl:2: 'policy' must be a list of layers", id="log-record-without-policy"),
    pytest.param(lambda r: r.update(accuracy="high"), r"evaluations.jsonl:2: 'accuracy' must be a number in \[0, 1\], got 'high'", id="log-accuracy-a-string"),
    pytest.param(lambda r: r.update(accuracy=float("nan")), r"'accuracy' must be a number in \[0, 1\], got nan", id="log-accuracy-nan"),
    pytest.param(lambda r: r.update(budget_met="yes"), r"'budget_met' must be true or false", id="log-budget-met-a-string"),
    pytest.param(lambda r: r["policy"][0].update(bits="8"), r"'policy' must be a list of layers", id="log-bits-a-string"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), LOG_EDITS)
def test_an_edited_log_record_is_named(finished_run, tmp_path, capsys, change, message):
    _edit_log(finished_run, tmp_path, 1, change)
    before = _files(tmp_path)
    assert _random_run(tmp_path, 6, "--resume") == 2
    assert re.search(message, capsys.readouterr().err)
    assert _files(tmp_path) == before


def test_an_edited_accuracy_never_becomes_the_result(finished_run, tmp_path, capsys):
    records = [json.loads(x) for x in (finished_run / LOG_NAME).read_text().splitlines()]
    within = [r["episode"] for r in records if r["budget_met"]]
    assert within, "the fixture run needs a policy within budget"
    _edit_log(finished_run, tmp_path, within[0], lambda r: r.update(accuracy=0.999))
    before = _files(tmp_path)
    assert _random_run(tmp_path, 6, "--resume") == 2
    err = capsys.readouterr().err
    assert (
        f"episode {within[0]} of" in err
        and "claims held-out accuracy 0.999, the proxy gives" in err
    )
    assert _files(tmp_path) == before  # policy.json still the real best


def test_an_untouched_log_resumes_to_the_same_files(finished_run, tmp_path):
    _edit_log(finished_run, tmp_path, 0, lambda r: None)
    assert _random_run(tmp_path, 6, "--resume") == 0
    assert (tmp_path / "policy.json").read_bytes() == (finished_run / "policy.json").read_bytes()


def test_equivalent_settings_resume_and_a_difference_is_named(finished_run, tmp_path, capsys):
    _edit_log(finished_run, tmp_path, 0, lambda r: None)
    assert _random_run(tmp_path, 6, "--resume", "--budget-bops", "1/128", "--device", "cpu") == 0
    capsys.readouterr()
    assert _random_run(tmp_path, 6, "--resume", "--budget-bops", "1/64") == 2
    err = capsys.readouterr().err
    assert "env.budget_bops is 0.0078125 there, 0.015625 here" in err


def test_result_files_are_readable_by_others(finished_run):
    for name in ("policy.json", "summary.json", "run.json", LOG_NAME, "reference.jsonl"):
        mode = (finished_run / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~_umask(), (name, oct(mode))


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("seed", ["-1", str(2**32), "one"])
def test_a_bad_seed_is_refused_before_any_work(tmp_path, capsys, seed):
    with pytest.raises(SystemExit) as stop:
        _random_run(tmp_path / "run", 2, "--seed", seed)
    assert stop.value.code == 2
    assert "--seed" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
        run_search("random", tmp_path / "lib", 2, seed=-1)


def test_finetune_into_a_directory_fails_before_training(tmp_path, policy_json, capsys):
    (tmp_path / "p.json").write_text(json.dumps(policy_json))
    (tmp_path / "weights").mkdir()
    assert main(["finetune", str(tmp_path / "p.json"), "--out", str(tmp_path / "weights")]) == 2
    assert f"--out '{tmp_path / 'weights'}' is a directory" in capsys.readouterr().err
    assert list((tmp_path / "weights").iterdir()) == []


@pytest.mark.slow
def test_sigterm_stops_a_search_with_the_resume_hint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "jpq_agents.cli",
        "search",
        "--agent",
        "random",
        "--episodes",
        "100000",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    deadline = time.monotonic() + 120
    while (
        not ((out / LOG_NAME).exists() and (out / LOG_NAME).stat().st_size)
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err


def _copy_run(run: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for p in run.iterdir():
        if p.is_file() and not p.name.startswith("."):
            (target / p.name).write_bytes(p.read_bytes())
    return target


def test_a_lock_link_in_a_run_folder_never_writes_through(finished_run, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's data")
    for resume in (["--resume"], []):
        run = tmp_path / f"run{len(resume)}"
        if resume:
            _copy_run(finished_run, run)
        else:
            run.mkdir()
        (run / ".lock").symlink_to(precious)
        assert _random_run(run, 6, *resume) == 2
        assert ".lock' is a symbolic link" in capsys.readouterr().err
        assert precious.read_text() == "the user's data"


def test_a_run_file_that_is_a_link_is_refused(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    (run / LOG_NAME).unlink()
    (run / LOG_NAME).symlink_to(tmp_path / "elsewhere.jsonl")
    assert _random_run(run, 6, "--resume") == 2
    assert "holds symbolic links (evaluations.jsonl)" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere.jsonl").exists()


def test_finetune_and_export_never_overwrite_their_inputs(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    policy = run / "policy.json"
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"the user's model")
    data = json.loads(policy.read_text())
    data["env"]["task_options"] = {"weights": str(weights)}
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(data))
    before = _files(run)
    cases = [
        (["export", str(policy), "--out", str(policy)], "is an input of this command"),
        (["export", str(policy), "--out", str(run / LOG_NAME)], "is a file of the run in"),
        (["finetune", str(mine), "--out", str(weights)], "is an input of this command"),
        (["export", str(policy), "--out", str(weights)], "exists: pass --force to replace it"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert _files(run) == before and weights.read_bytes() == b"the user's model"
    out = tmp_path / "model.pt"
    assert main(["export", str(policy), "--out", str(out)]) == 0
    assert main(["export", str(policy), "--out", str(out)]) == 2  # a second time: refused
    assert main(["export", str(policy), "--out", str(out), "--force"]) == 0


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda r: r.update(accuracy=0.0), id="log-best-lowered"),
        pytest.param(lambda r: r.update(proxy_complete=False, proxy_images=10), id="log-best-marked-raced"),
    ],
)  # fmt: skip
def test_a_log_edited_to_demote_the_best_is_refused(finished_run, tmp_path, capsys, edit):
    best = json.loads((finished_run / "policy.json").read_text())["episode"]
    _edit_log(finished_run, tmp_path, best, edit)
    before = _files(tmp_path)
    assert _random_run(tmp_path, 6, "--resume") == 2
    err = capsys.readouterr().err
    assert f"episode {best}" in err and "edited" in err
    assert _files(tmp_path) == before


@pytest.mark.parametrize("device", ["meta", "xpu", "hpu"])
def test_an_unsupported_device_is_one_line(tmp_path, capsys, device):
    assert main(["report", "--device", device, "--quiet"]) == 2
    assert f"unsupported device '{device}'" in capsys.readouterr().err


def test_resume_of_an_unknown_env_id_says_so(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    settings = json.loads((run / RUN_NAME).read_text())
    settings["env"]["id"] = "os:system"
    (run / RUN_NAME).write_text(json.dumps(settings))
    assert _random_run(run, 6, "--resume") == 2
    err = capsys.readouterr().err
    assert "env.id 'os:system' there is not a registered environment" in err
    assert "budget_bops" not in err


def test_smaller_audit_cases(tmp_path, policy_json, capsys):
    with pytest.raises(SystemExit):
        main(["search", "--agent", "ddpg", "--warmup-episodes", "-5", "--out", str(tmp_path / "r")])
    assert "--warmup-episodes: must be at least 0" in capsys.readouterr().err
    with pytest.raises(PolicyError, match="schema 1 expected"):
        Policy.from_json({**policy_json, "schema": True})
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**policy_json, "env": {"task": "digits-deep"}, "task": "digits"}))
    assert main(["evaluate", str(path)]) == 2
    assert "'task' is 'digits' but 'env.task' is 'digits-deep'" in capsys.readouterr().err


def test_a_policy_departing_from_the_search_conventions_is_noted(tmp_path, env: JPQEnv, capsys):
    policy = Policy.uniform(env.graph, 8, 8, env.conventions)
    data = policy.to_json()
    data["layers"][0]["act_bits"] = 2  # the network input is pinned at 8 bits in a search
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert main(["evaluate", str(tmp_path / "p.json")]) == 0
    assert "departs from its search's conventions in conv1" in capsys.readouterr().err
    (tmp_path / "q.json").write_text(json.dumps(policy.to_json()))
    assert main(["evaluate", str(tmp_path / "q.json")]) == 0
    assert "departs" not in capsys.readouterr().err
