"""The output directory of a search: left as it was when the run cannot start, listed at its end.

A search claims its directory (``jpq_agents.search.claim_directory``: created if missing, then
locked) before it builds the task, so that a second search on a busy directory stops at once. A
run that then fails on its arguments (an unknown task module, a bad factory, a bad task option)
must not leave an empty directory behind: ``remove_empty`` removes the folders this run created
(``missing_dirs`` before it started), deepest first, and only those still empty (a run that got
as far as writing ``run.json`` keeps its directory and its files).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["listing", "missing_dirs", "remove_empty"]


def missing_dirs(out: Path) -> list[Path]:
    """``out`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    path = Path(out).absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_empty(created: list[Path]) -> None:
    """Remove the folders ``created`` (``missing_dirs`` before the run), deepest first, while empty.

    Call it once the run let go of everything it held in them (the run lock's file).
    """
    for path in created:
        try:
            path.rmdir()  # only an empty folder: never anything a run wrote
        except FileNotFoundError:
            continue
        except OSError:
            break  # not empty (or not ours to remove): keep it and the folders above it


def listing(out: Path) -> str:
    """The names in ``out``, sorted, folders with a trailing ``/``; hidden names left out."""
    names = sorted(
        p.name + ("/" if p.is_dir() else "") for p in Path(out).iterdir() if p.name[0] != "."
    )
    return ", ".join(names) or "(none)"
