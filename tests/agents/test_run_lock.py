"""Crash safety: a search killed at any moment leaves only complete files, and resumes exactly.

The end-to-end test runs ``jpq search`` in a subprocess, kills it with SIGKILL once its log shows
progress, checks what is left on disk, then resumes it and compares with an uninterrupted run.
Smaller tests cover the log's repair rules and the atomic writers.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jpq_agents.run_lock import LOCK_NAME, RunLock
from jpq_agents.search import LOG_NAME, RUN_NAME, RunSettings, Search, SearchError
from jpq_env.atomic import atomic_file, save_atomic, write_atomic
from jpq_env.envs import JPQEnv

ROOT = Path(__file__).resolve().parents[1]
EPISODES = 100
FILES = {
    "run.json",
    "evaluations.jsonl",
    "policy.json",
    "reference.jsonl",
    "pareto.png",
    "summary.json",
    "tensorboard",
}


def _search_command(out: Path, resume: bool = False, episodes: int = EPISODES) -> list[str]:
    cmd = [sys.executable, "-m", "jpq_agents.cli", "search", "--agent", "random", "--episodes"]
    cmd += [str(episodes), "--out", str(out), "--quiet", "--seed", "1"]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _log_lines(out: Path) -> list[bytes]:
    path = out / LOG_NAME
    return path.read_bytes().split(b"\n") if path.exists() else [b""]


def _check_left_behind(out: Path, episodes: int = EPISODES) -> int:
    """Every visible file is complete; returns the number of complete log records."""
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert visible <= FILES, visible
    # A killed search leaves its lock file (the kernel has dropped the lock itself).
    for hidden in (p for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_NAME):
        # A temporary file of an interrupted atomic write: never read, named after its target.
        assert hidden.name[1:].rsplit(".", 1)[0] in FILES, hidden.name
    settings = json.loads((out / RUN_NAME).read_text())
    assert settings["episodes"] == episodes and settings["agent"] == "random"
    if (out / "policy.json").exists():
        assert json.loads((out / "policy.json").read_text())["schema"] == 1
    lines = _log_lines(out)
    complete, tail = lines[:-1], lines[-1]
    for i, line in enumerate(complete):
        assert json.loads(line)["episode"] == i
    assert tail == b"" or not tail.endswith(b"}")  # at most a torn last write, no newline
    return len(complete)


@pytest.mark.slow
def test_a_killed_search_leaves_complete_files_and_resumes_exactly(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = subprocess.Popen(_search_command(whole), env=_env(), cwd=tmp_path)
    proc = subprocess.Popen(
        _search_command(killed), env=_env(), cwd=tmp_path, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while len(_log_lines(killed)) < 31:  # 30 complete records: well under way
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no progress in the log"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    logged = _check_left_behind(killed)
    assert 30 <= logged < EPISODES
    assert not (killed / "summary.json").exists()  # it really died in the middle

    # A torn last line, as a crash inside the write would leave it.
    with (killed / LOG_NAME).open("ab") as f:
        f.write(b'{"episode": ' + str(logged).encode() + b', "agent": "ran')
    resumed = subprocess.run(
        _search_command(killed, resume=True),
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "dropped a last line cut short by an interrupted run" in resumed.stderr
    assert reference.wait(timeout=600) == 0

    assert _check_left_behind(killed) == EPISODES
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["evaluations"] == EPISODES
    # Resuming by replay reaches exactly the uninterrupted run: same log, same best policy.
    assert _log_lines(killed) == _log_lines(whole)
    assert (killed / "policy.json").read_text() == (whole / "policy.json").read_text()
    assert not [p for p in killed.iterdir() if p.name.startswith(".")]  # nothing stale


# ---- the log's repair rules -------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared() -> JPQEnv:
    return JPQEnv()


def _run(out: Path, shared: JPQEnv, episodes: int, resume: bool = False) -> Search:
    search = Search(
        out, RunSettings("random", episodes, 0), JPQEnv(evaluator=shared.evaluator), resume=resume
    )
    search.env.action_space.seed(0)
    while not search.done:
        search.env.reset()
        done = False
        while not done:
            done = search.env.step(search.env.action_space.sample())[2]
    return search


def test_torn_or_invalid_last_line_is_dropped_with_a_warning(tmp_path, shared):
    _run(tmp_path, shared, 3)
    good = (tmp_path / LOG_NAME).read_bytes()
    for torn in (b'{"episode": 3, "acc', b'{"episode": 3, "acc\n', b"\x00\x00\x00\n"):
        (tmp_path / LOG_NAME).write_bytes(good + torn)
        with pytest.warns(UserWarning, match=rf"dropped a last line .*\({len(torn)} bytes\)"):
            search = Search(
                tmp_path,
                RunSettings("random", 3, 0),
                JPQEnv(evaluator=shared.evaluator),
                resume=True,
            )
        assert (tmp_path / LOG_NAME).read_bytes() == good  # cut back to the complete lines
        assert [r["episode"] for r in search._replay] == [0, 1, 2]


def test_a_corrupt_line_before_the_last_stops_the_resume(tmp_path, shared):
    _run(tmp_path, shared, 3)
    lines = (tmp_path / LOG_NAME).read_bytes().split(b"\n")
    for bad in (b"garbage", lines[2]):  # not JSON; a record out of order
        edited = b"\n".join([lines[0], bad, *lines[2:]])
        (tmp_path / LOG_NAME).write_bytes(edited)
        with pytest.raises(SearchError, match=r"line 2 of .* is not a valid record"):
            Search(
                tmp_path,
                RunSettings("random", 3, 0),
                JPQEnv(evaluator=shared.evaluator),
                resume=True,
            )
        assert (tmp_path / LOG_NAME).read_bytes() == edited  # left for the user to inspect


# ---- the atomic writers -----------------------------------------------------------------------


class _Unsaveable:
    def __reduce__(self):
        raise RuntimeError("this object cannot be saved")


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    write_atomic(target, '{"old": 1}')
    with pytest.raises(RuntimeError, match="crash mid-write"), atomic_file(target) as f:
        f.write('{"new": ')
        raise RuntimeError("crash mid-write")
    assert target.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    with pytest.raises(RuntimeError, match="cannot be saved"):  # torch.save fails midway
        save_atomic({"w": torch.zeros(3), "bad": _Unsaveable()}, tmp_path / "result.json")
    assert target.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def _direct_writes(source: str) -> list[str]:
    """Calls of torch.save, json.dump, Path.write_text and Path.write_bytes in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else ""
            attr = node.func.attr
            if attr in {"write_text", "write_bytes"} or (name, attr) in {
                ("torch", "save"),
                ("json", "dump"),
            }:
                found.append(f"{name or '...'}.{attr} line {node.lineno}")
    return found


def test_the_direct_write_scan_finds_calls_not_strings():
    code = 'torch.save(x, p)\njson.dump(d, f)\nPath(p).write_text("t")\nmsg = "torch.save(m, p)"\n'
    assert [w.split(" line")[0] for w in _direct_writes(code)] == [
        "torch.save",
        "json.dump",
        "....write_text",
    ]


def test_writers_in_the_source_are_atomic():
    """Result, log and checkpoint writers go through jpq_env.atomic (or the fsynced log append)."""
    direct = []
    for p in sorted([*(ROOT / "jpq_env").rglob("*.py"), *(ROOT / "agents").rglob("*.py")]):
        if p.name not in {"atomic.py", "train_digits.py"}:
            direct += [f"{p.relative_to(ROOT)}: {w}" for w in _direct_writes(p.read_text())]
    assert direct == []


# ---- one writer per directory -----------------------------------------------------------------


def test_a_second_process_cannot_search_in_a_directory_in_use(tmp_path, capsys):
    """The newcomer's case: a --resume into a folder another search is writing to is refused."""
    from jpq_agents.cli import main

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from jpq_agents.run_lock import RunLock; "
            "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); sys.stdin.read()",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        argv = ["search", "--agent", "random", "--episodes", "2", "--out", str(out), "--quiet"]
        assert main([*argv, "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"'{out}' is in use: process {holder.pid} is running a search there" in err
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # nothing written
        with pytest.raises(SearchError, match="is in use"):
            Search(out, RunSettings("random", 2, 0), JPQEnv())
    finally:
        holder.kill()
        holder.wait(timeout=60)
    # A killed holder's lock goes with it: the lock file it left is taken over.
    assert (out / LOCK_NAME).exists()
    assert main(argv) == 0
    assert len(_log_lines(out)) == 3  # 2 records and the final newline
    assert not (out / LOCK_NAME).exists()  # released, file removed


def _other_process_can_lock(directory: Path) -> bool:
    code = (
        "import sys; from pathlib import Path\n"
        "from jpq_agents.run_lock import RunLock, RunLockedError\n"
        "try:\n    RunLock(Path(sys.argv[1])).acquire()\nexcept RunLockedError:\n    sys.exit(3)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(directory)], env=_env(), cwd=ROOT)
    assert done.returncode in (0, 3)
    return done.returncode == 0


def test_the_lock_is_counted_within_a_process_and_takes_over_a_stale_file(tmp_path):
    (tmp_path / LOCK_NAME).write_text("99999999\n")  # left by a killed search: no flock on it
    outer, inner = RunLock(tmp_path), RunLock(tmp_path)
    outer.acquire()
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    inner.acquire()  # run_search's claim, then its Search's; or a resume after an exception
    inner.release()
    inner.release()  # once only: a second call must not release the outer claim
    assert not _other_process_can_lock(tmp_path)  # the outer claim still holds
    outer.release()
    assert not (tmp_path / LOCK_NAME).exists()
    assert _other_process_can_lock(tmp_path)


def test_a_search_in_a_directory_removed_and_made_again_is_locked_again(tmp_path, shared):
    out = tmp_path / "run"
    first = Search(out, RunSettings("random", 2, 0), JPQEnv(evaluator=shared.evaluator))
    shutil.rmtree(out)  # the user deletes the run while this process still holds it
    with Search(out, RunSettings("random", 2, 0), JPQEnv(evaluator=shared.evaluator)):
        assert (out / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        assert not _other_process_can_lock(out)
        first.release()  # the stale claim's release leaves the new lock alone
        assert not _other_process_can_lock(out)
    assert _other_process_can_lock(out)


def test_a_lock_taken_on_a_file_its_holder_just_removed_is_taken_again(tmp_path, monkeypatch):
    """The previous holder unlinks the file as it lets go; a lock on the unlinked file is void."""
    from jpq_agents import run_lock

    real, calls = run_lock.fcntl.flock, []

    def racing(fd: int, op: int) -> None:
        real(fd, op)
        calls.append(os.fstat(fd).st_ino)
        if len(calls) == 1:  # between our open() and flock(), the holder lets go and a third
            (tmp_path / LOCK_NAME).unlink()  # process creates a new file at the path
            (tmp_path / LOCK_NAME).write_text("")

    monkeypatch.setattr(run_lock.fcntl, "flock", racing)
    lock = RunLock(tmp_path)
    lock.acquire()
    held = run_lock._HELD[lock.path].handle
    assert len(calls) == 2 and calls[0] != calls[1]
    assert os.fstat(held.fileno()).st_ino == os.stat(tmp_path / LOCK_NAME).st_ino == calls[1]
    lock.release()


def test_without_flock_a_search_runs_unguarded_with_a_warning(tmp_path, monkeypatch):
    from jpq_agents import run_lock

    def unsupported(fd: int, op: int) -> None:
        raise OSError(37, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", unsupported)
    with pytest.warns(UserWarning, match=r"cannot lock .*\(No locks available\): nothing stops"):
        lock = RunLock(tmp_path)
        lock.acquire()
    lock.release()


@pytest.mark.slow
def test_ctrl_c_stops_a_search_with_a_hint_to_resume(tmp_path):
    out = tmp_path / "interrupted"
    # Far more episodes than the test waits for: on a busy machine the poll below can sleep
    # through many evaluations, and a search that finishes first exits 0 before the signal.
    episodes = 100 * EPISODES
    proc = subprocess.Popen(
        _search_command(out, episodes=episodes),
        env=_env(),
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        # A test suite started in the background (`cmd &`, nohup) inherits SIGINT ignored, and
        # Python then installs no KeyboardInterrupt handler: the child gets Ctrl-C as a terminal
        # would deliver it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300
        while len(_log_lines(out)) < 6:
            assert proc.poll() is None, proc.stderr.read()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no progress in the log"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Run the same command with --resume to continue from them." in err
    assert "Traceback" not in err
    assert 5 <= _check_left_behind(out, episodes) < episodes
    assert not (out / LOCK_NAME).exists()  # released on the way out
