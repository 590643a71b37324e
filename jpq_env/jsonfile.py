"""Reading the project's JSON files (policies, run settings, logs) with errors that name the file.

Every reader of a file a user may have edited, downloaded or truncated goes through
``read_json``, so that an unreadable, undecodable, malformed or absurdly nested file gives one
clear message naming the file instead of a ``UnicodeDecodeError``, ``RecursionError`` or
``KeyError`` from deep inside the code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jpq_env.errors import ArgumentError

__all__ = ["MAX_BYTES", "loads", "read_json"]

MAX_BYTES = 256 * 2**20
"""Largest JSON file read (256 MB): a policy of ResNet-50 is well under 1 MB."""

Error = type[Exception]


def loads(text: str | bytes, where: str, *, error: Error = ArgumentError) -> Any:
    """Parse JSON ``text`` read from ``where`` (a file, or a file and line).

    Raises:
        error: If the text is not UTF-8, not JSON, or nested too deeply to parse.
    """
    try:
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise error(f"{where} is nested too deeply to be a file of jpq-env") from None


def read_json(path: str | os.PathLike[str], what: str, *, error: Error = ArgumentError) -> Any:
    """The JSON value in ``path``, a ``what`` ("policy file", "run settings"), checked as read.

    Raises:
        error: If the file cannot be read, is larger than ``MAX_BYTES``, or is not JSON; the
            message names ``what`` and the file.
    """
    where = f"{what} '{path}'"
    try:
        size = Path(path).stat().st_size
        if size > MAX_BYTES:
            raise error(f"{where} is {size:,} bytes, more than any file of jpq-env")
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise error(f"{where} is a directory, not a file") from None
    except OSError as exc:
        raise error(f"cannot read {where}: {exc.strerror}") from None
    return loads(data, where, error=error)
