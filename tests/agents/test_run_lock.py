"""The run lock (``jpq_agents.run_lock``): one search per directory, across processes and within
one, a stale or removed lock file taken over, and no lock without ``flock``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jpq_agents.run_lock import LOCK_NAME, RunLock
from jpq_agents.search import LOG_NAME, RunSettings, Search, SearchError
from jpq_env.envs import JPQEnv
from tests import ROOT


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _log_lines(out: Path) -> list[bytes]:
    path = out / LOG_NAME
    return path.read_bytes().split(b"\n") if path.exists() else [b""]


@pytest.fixture(scope="module")
def shared() -> JPQEnv:
    return JPQEnv()


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
