"""One writer per run directory: an advisory lock so that two searches never share a log.

Two processes appending to the same ``evaluations.jsonl`` would interleave their episodes and
leave a log that can no longer be resumed. A search therefore takes an exclusive ``flock`` on
``DIR/.lock`` before it builds anything for the directory, and keeps it until it ends (or the
process exits: the kernel drops the lock of a killed process, so a lock file a crash leaves behind
locks nothing; the next search takes it over).

Within one process the lock is counted: ``run_search`` and the ``Search`` it builds, or a library
user resuming after an exception, may each take it; it is let go when the last of them releases
it. On a file system without ``flock`` (some network mounts) searches run unguarded, with a
warning.
"""

from __future__ import annotations

import atexit
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from jpq_env.errors import SearchError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, searches are not guarded
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]

LOCK_NAME = ".lock"


class RunLockedError(SearchError):
    """Another process is running a search in the directory."""


@dataclass
class _Held:
    handle: IO[str]
    count: int


_HELD: dict[Path, _Held] = {}


def _is_current(path: Path, handle: IO[str]) -> bool:
    """True if ``handle`` is the file now at ``path`` (not one unlinked or replaced since)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _close(handle: IO[str], path: Path, unlink: bool) -> None:
    """Close a held lock file; remove it first if it is still the one at ``path``."""
    try:
        if unlink and _is_current(path, handle):
            path.unlink(missing_ok=True)  # while still locked: see RunLock.acquire
    finally:
        handle.close()  # closing the descriptor releases the flock


class RunLock:
    """This process's claim on a run directory; ``acquire`` once, ``release`` once (idempotent).

    Args:
        directory: The run directory (must exist).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory.resolve() / LOCK_NAME  # fixed now: a later chdir changes nothing
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or count one more user if this process holds it already.

        Raises:
            RunLockedError: If another live process holds it; its pid is named when known.
        """
        if self.held:
            return
        held = _HELD.get(self.path)
        if held is not None and _is_current(self.path, held.handle):
            held.count += 1
            self.held = True
            return
        count = 1
        if held is not None:  # the directory was removed and made again: the old lock is void
            del _HELD[self.path]
            _close(held.handle, self.path, unlink=False)
            count += held.count
        handle = self._lock()
        if handle is not None:
            _HELD[self.path] = _Held(handle, count)
        self.held = True

    def _lock(self) -> IO[str] | None:
        if fcntl is None:
            return None
        while True:
            handle = self._open()
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                handle.close()
                who = f"process {holder}" if holder.isdigit() else "another process"
                raise RunLockedError(
                    f"'{self.directory}' is in use: {who} is running a search there; wait for "
                    "it to finish, or choose another output directory (nothing was written)"
                ) from None
            except OSError as exc:  # ENOLCK, EOPNOTSUPP: no flock on this file system
                handle.close()
                warnings.warn(
                    f"cannot lock '{self.directory}' ({exc.strerror}): nothing stops another "
                    "search from writing there at the same time",
                    stacklevel=4,
                )
                return None
            # The holder before us unlinks the file as it lets go: a lock on that unlinked
            # file guards nothing, so take the lock again on the file now at the path.
            if _is_current(self.path, handle):
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle

    def _open(self) -> IO[str]:
        """The lock file, never opened through a symbolic link.

        A downloaded run folder could hold a ``.lock`` pointing at any file of the user's, which
        the pid would then overwrite.
        """
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if self.path.is_symlink():
                raise RunLockedError(
                    f"'{self.path}' is a symbolic link, not a lock file: remove it (nothing was "
                    "written)"
                ) from None
            raise OSError(exc.errno, f"cannot open '{self.path}': {exc.strerror}") from exc
        if not os.path.isfile(self.path) or os.path.islink(self.path):
            os.close(fd)
            raise RunLockedError(f"'{self.path}' is not a regular file (nothing was written)")
        return os.fdopen(fd, "r+")

    def release(self) -> None:
        """Count one user less; the last one unlocks the directory and removes the lock file."""
        if not self.held:
            return
        self.held = False
        held = _HELD.get(self.path)
        if held is None:
            return
        held.count -= 1
        if held.count <= 0:
            del _HELD[self.path]
            _close(held.handle, self.path, unlink=True)


@atexit.register
def _release_all() -> None:
    """At exit, let go of the directories a library user never released (no unclosed files)."""
    while _HELD:
        path, held = _HELD.popitem()
        _close(held.handle, path, unlink=True)


def _forget_in_child() -> None:
    """A forked child must neither unlink its parent's lock files nor keep their locks alive."""
    for held in _HELD.values():
        held.handle.close()  # the parent's descriptor keeps the flock
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
