"""Bad inputs of a search, each refused with an error naming the problem.

Part of the catalogue of bad inputs (``pytest tests -k bad_inputs --collect-only -q`` lists it):
names of agents and environments, result directories of another run, a full disk, a test split
with bad labels (found before the search starts), RL Zoo ``policy_kwargs`` (parsed, never run).
"""

# ruff: noqa: E501 - the catalogue is a table, one case per line
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jpq_agents.baselines import BASELINES
from jpq_agents.run import AGENTS, run_search
from jpq_agents.search import LOG_NAME, RUN_NAME, RunSettings, Search, SearchError
from jpq_env import TaskError
from jpq_env.envs import JPQEnv
from tests import bad_tasks


@pytest.fixture(scope="module")
def env() -> JPQEnv:
    return JPQEnv()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"agent": "nope"}, "unknown agent 'nope': choose one of", id="unknown-agent"),
        pytest.param({"env_id": "nope/Nope-v0"}, "unknown environment id 'nope/Nope-v0'", id="unknown-env-id"),
        pytest.param({"episodes": 0}, "episodes must be at least 1", id="episodes-zero"),
    ],
)  # fmt: skip
def test_bad_search_name_is_named(tmp_path, kwargs, message):
    args = {"agent": "random", "out": tmp_path / "run", "episodes": 2, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        run_search(**args)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_search_that_fails_after_it_started_keeps_its_directory(tmp_path, monkeypatch):
    """Once an evaluation is logged the run is kept (``--resume`` continues it); a run that
    fails before its first evaluation leaves nothing, so that the corrected rerun starts."""

    def broken_later(search: Search, seed: int, opts: dict[str, Any]) -> None:
        BASELINES["random"](search, seed)  # both evaluations logged
        raise RuntimeError("the agent broke")

    def broken_at_once(search: Search, seed: int, opts: dict[str, Any]) -> None:
        search.env.reset(seed=seed)
        raise RuntimeError("the agent broke")

    monkeypatch.setitem(AGENTS, "random", broken_later)
    with pytest.raises(RuntimeError, match="the agent broke"):
        run_search("random", tmp_path / "run", 2, progress=False)
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {RUN_NAME, LOG_NAME}
    monkeypatch.setitem(AGENTS, "random", broken_at_once)
    with pytest.raises(RuntimeError, match="the agent broke"):
        run_search("random", tmp_path / "early", 2, progress=False)
    assert not (tmp_path / "early").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError, match="the agent broke"):
        run_search("random", tmp_path / "kept", 2, progress=False)
    assert list((tmp_path / "kept").iterdir()) == []  # the user's folder stays, empty


def _search(out: Path, env: JPQEnv, agent: str = "random", resume: bool = False) -> Search:
    fresh = JPQEnv(evaluator=env.evaluator)  # resume wraps the evaluator: keep the fixture clean
    return Search(out, RunSettings(agent, 2, 0), fresh, resume=resume)


@pytest.mark.parametrize(
    ("prepare", "resume", "message"),
    [
        pytest.param(lambda d: (d / RUN_NAME).write_text("{}"), False, "already holds a run: pass --resume", id="results-dir-holds-a-run"),
        pytest.param(lambda d: (d / LOG_NAME).write_text("{}\n"), True, f"holds no run \\({RUN_NAME} is missing\\): it holds {LOG_NAME}", id="resume-without-run-file"),
        pytest.param(lambda d: (d / RUN_NAME).write_text('{"agent": "greedy", "episodes": 2, "seed": 0, "env": {}}'), True, "holds a run with other settings", id="resume-other-settings"),
        pytest.param(lambda d: (d / RUN_NAME).write_text('{"agent": "ran'), True, f"{RUN_NAME}' is not valid JSON", id="resume-truncated-run-file"),
        pytest.param(lambda d: (d / RUN_NAME).write_text("[]"), True, f"{RUN_NAME}' holds list, not a run's settings", id="resume-run-file-a-list"),
        pytest.param(lambda d: (d / RUN_NAME).write_text("null"), True, f"{RUN_NAME}' holds NoneType, not a run's settings", id="resume-run-file-null"),
        pytest.param(lambda d: (d / RUN_NAME).write_text('{"agent": "random", "episodes": "2", "seed": 0, "env": {}}'), True, r"needs 'episodes' \(int\), got '2'", id="resume-run-file-episodes-a-string"),
        pytest.param(lambda d: (d / RUN_NAME).write_bytes(b'{"agent": "\xff"}'), True, "is not UTF-8 text", id="resume-run-file-undecodable"),
        pytest.param(lambda d: [(d / n).write_text("mine") for n in ("policy.json", "summary.json", "reference.jsonl")], False, "is not empty and holds no run", id="out-holds-the-users-files"),
    ],
)  # fmt: skip
def test_results_directory_of_another_run_is_named(tmp_path, env: JPQEnv, prepare, resume, message):
    prepare(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(SearchError, match=message):
        _search(tmp_path, env, resume=resume)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing overwritten


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import os

    from jpq_env.atomic import write_atomic

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    search = Search(tmp_path / "run", RunSettings("random", 2, 0), JPQEnv())
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"cannot write '.*summary.json': No space left on device"):
        write_atomic(tmp_path / "summary.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary file left behind
    info = {
        "accuracy": 0.5,
        "accuracy_fp32": 0.9,
        "bops_ratio": 0.01,
        "size_ratio": 0.1,
        "budget_met": True,
        "policy": [],
    }
    with pytest.raises(
        SearchError, match=r"cannot append episode 0 to '.*evaluations.jsonl': No space left"
    ):
        search.record(info, 0.0)
    search.release()


def test_a_bad_test_label_fails_before_the_search(tmp_path, monkeypatch):
    monkeypatch.setattr(
        bad_tasks,
        "late_bad_label",
        lambda: bad_tasks._task(test=bad_tasks.OddSample(8, 6, shape=False)),
        raising=False,
    )
    with pytest.raises(TaskError, match=r"the test split has labels outside \[0, 4\)"):
        run_search(
            "random",
            tmp_path / "run",
            2,
            env_kwargs={"task": "tests.bad_tasks:late_bad_label"},
            progress=False,
        )
    assert not (tmp_path / "run" / LOG_NAME).exists()  # before the first evaluation


def test_rl_zoo_policy_kwargs_are_parsed_never_run():
    from jpq_agents.sb3 import policy_kwargs

    assert policy_kwargs("dict(net_arch=[64, 64])") == {"net_arch": [64, 64]}
    assert policy_kwargs('{"net_arch": dict(pi=[32], vf=[16])}') == {
        "net_arch": {"pi": [32], "vf": [16]}
    }
    for code in [
        '__import__("os").system("touch PWNED")',
        "().__class__.__bases__",
        'dict(a=open("f"))',
    ]:
        with pytest.raises(ValueError, match="only dict"):
            policy_kwargs(code)
