"""Ctrl-C, SIGTERM and SIGHUP stop a ``jpq`` command where it is, with the shell's exit codes.

SIGTERM and SIGHUP raise ``Terminated``, a ``KeyboardInterrupt``, where the process is, so the
work unwinds (closing files, releasing a run's lock) exactly as on Ctrl-C; the command then
exits with 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

__all__ = ["Terminated", "exit_code", "interruption", "stop_signals_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the process is, so that it stops as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``Terminated``; the old handlers come back after.

    Outside the main thread signals cannot be handled there, and are left alone.
    """
    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interruption(exc: BaseException) -> str:
    """What stopped the command: "interrupted" (Ctrl-C) or "stopped by SIGTERM" (or SIGHUP)."""
    if isinstance(exc, Terminated):
        return f"stopped by {signal.Signals(exc.signum).name}"
    return "interrupted"


def exit_code(exc: BaseException) -> int:
    """The exit status of a command stopped by ``exc``: 128 + the signal's number."""
    return 128 + exc.signum if isinstance(exc, Terminated) else 130
