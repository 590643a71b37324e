"""Hand edits of a policy file: functions from a policy's JSON dict to the edited file's text."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Edit = Callable[[dict[str, Any]], str]


def edited(fn: Callable[[dict[str, Any]], object]) -> Edit:
    """The file's text after ``fn`` changed a copy of the dict in place."""

    def edit(data: dict[str, Any]) -> str:
        data = json.loads(json.dumps(data))
        fn(data)
        return json.dumps(data)

    return edit


def with_field(path: tuple[Any, ...], value: Any) -> Edit:
    """The file's text with the entry at ``path`` (keys and list indices) set to ``value``."""

    def put(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edited(put)
