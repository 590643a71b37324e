"""Test-wide set-up: caches the library writes go to a temporary folder, never the user's home."""

import os
import tempfile

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir():
    """``JPQ_CACHE_DIR`` (the sensitivity tables' disk cache) in a folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="jpq-cache-") as folder:
        old = os.environ.get("JPQ_CACHE_DIR")
        os.environ["JPQ_CACHE_DIR"] = folder
        yield folder
        if old is None:
            os.environ.pop("JPQ_CACHE_DIR", None)
        else:
            os.environ["JPQ_CACHE_DIR"] = old
