"""Atomic file writes: a temporary file in the target's directory, flushed, then renamed.

A reader (or a run resumed after a crash) sees either the previous file or the complete new one,
never a half-written one: ``os.replace`` is atomic on POSIX and Windows within one file system.
Temporary files are hidden (``.NAME.XXXX``) and removed if the write fails; a process killed in the
middle can leave one behind, harmless (it is never read) and matched by ``.NAME.*``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_file", "save_atomic", "write_atomic"]


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    Raises:
        FileNotFoundError: If the directory of ``path`` does not exist (named in the message).
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"cannot write '{target}': directory '{target.parent}' does not exist"
        )
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write '{target}': {exc.strerror}") from exc
    try:
        # mkstemp makes the file private (0600); results are ordinary files (0666 - umask).
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if str(target) in str(exc):
            raise
        raise OSError(exc.errno, f"cannot write '{target}': {exc.strerror}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (never a half-written file)."""
    with atomic_file(path) as f:
        f.write(text)


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically: never a half-written checkpoint."""
    import torch

    with atomic_file(path, "wb") as f:
        torch.save(obj, f)
