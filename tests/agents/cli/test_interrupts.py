"""A search stopped from outside: killed at any moment it leaves only complete files and resumes
exactly; Ctrl-C stops it with a hint to resume (``jpq_agents.cli.interrupts``).

The end-to-end test runs ``jpq search`` in a subprocess, kills it with SIGKILL once its log shows
progress, checks what is left on disk, then resumes it and compares with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jpq_agents.run_lock import LOCK_NAME
from jpq_agents.search import LOG_NAME, RUN_NAME
from tests import ROOT

EPISODES = 60  # the kill lands after 12 of them: well under way, far from the end
FILES = {
    "run.json",
    "evaluations.jsonl",
    "monitor.csv",
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
        while len(_log_lines(killed)) < 13:  # 12 complete records
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no progress in the log"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    logged = _check_left_behind(killed)
    assert 12 <= logged < EPISODES
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
