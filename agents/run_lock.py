"""One writer per run directory: an advisory lock so that two searches never share a log.

Two processes appending to the same ``evaluations.jsonl`` would interleave their episodes and
leave a log that can no longer be resumed. A search therefore takes an exclusive ``flock`` on
``DIR/.lock`` before it reads or writes anything there, and keeps it until it ends (or the process
exits: the kernel drops the lock of a killed process, so a lock file a crash leaves behind locks
nothing; the next search takes it over).

Within one process the lock is re-entrant: a library user (or a test) may open the same directory
again, e.g. to resume after an exception, without releasing it first.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, searches are not guarded
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLockedError", "lock_run_dir", "unlock_run_dir"]

LOCK_NAME = ".lock"

_HELD: dict[Path, IO[str]] = {}


class RunLockedError(RuntimeError):
    """Another process is running a search in the directory."""


def lock_run_dir(directory: Path) -> bool:
    """Take the directory's lock for this process; False if this process held it already.

    Raises:
        RunLockedError: If another live process holds it; its pid is named when known.
    """
    key = directory.resolve()
    if key in _HELD or fcntl is None:
        return False
    path = key / LOCK_NAME
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise RunLockedError(
                f"'{directory}' is in use: {who} is running a search there; wait for it to "
                "finish, or choose another output directory (nothing was written)"
            ) from None
        # The holder before us unlinks the file as it lets go: a lock on that unlinked file
        # guards nothing, so take the lock again on the file now at the path.
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD[key] = handle
    return True


def unlock_run_dir(directory: Path) -> None:
    """Release the directory's lock if this process holds it, and remove the lock file."""
    key = directory.resolve()
    handle = _HELD.pop(key, None)
    if handle is None:
        return
    (key / LOCK_NAME).unlink(missing_ok=True)  # while still locked: see lock_run_dir
    handle.close()  # closing the descriptor releases the flock


@atexit.register
def _release_all() -> None:
    """At exit, let go of the directories a library user never released (no unclosed files)."""
    for directory in list(_HELD):
        unlock_run_dir(directory)
