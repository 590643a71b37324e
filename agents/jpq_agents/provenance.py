"""What a run's ``summary.json`` says about where it came from: versions, date, budget, speed."""

from __future__ import annotations

import datetime
from importlib import metadata
from typing import Any

__all__ = ["PACKAGES", "provenance"]

PACKAGES = ("jpq-env", "torch", "gymnasium", "stable-baselines3", "sb3-contrib", "numpy")
"""The distributions whose versions a summary records (``null`` for one not installed)."""


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance(budget: dict[str, float], seconds: float, evaluations: int) -> dict[str, Any]:
    """The summary's provenance fields.

    Args:
        budget: The environment's budget targets (``Budget.targets``: the defaulted ones too).
        seconds: Wall time of the search.
        evaluations: Evaluations it made (replayed ones included).
    """
    return {
        "budget": dict(budget),
        "seconds_per_evaluation": round(seconds / evaluations, 4) if evaluations else None,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {name: _version(name) for name in PACKAGES},
    }
