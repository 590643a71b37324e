"""Runs shared by the command line's tests: made once per session (per xdist worker)."""

from pathlib import Path

import pytest

from jpq_agents.cli import main


@pytest.fixture(scope="session")
def search_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A default ``jpq search`` (two-level, JPQWeightsActs-v0) of 12 evaluations at 1/32 BOPs.

    Its tests are in the xdist group "search_run", so that one worker makes it.
    """
    out = tmp_path_factory.mktemp("search") / "run"
    argv = ["search", "--episodes", "12", "--out", str(out), "--quiet", "--budget-bops", "1/32"]
    assert main(argv) == 0
    return out
