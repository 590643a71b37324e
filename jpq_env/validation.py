"""Argument checks at the boundary of jpq-env's public API: one mechanism, one message format.

Every public constructor (``JPQEnv``, ``make_task``, ``LocalEvaluator``, ``Conventions``,
``Budget``, the reward designs, ...) checks its plain arguments here before doing any work, so that
a wrong value fails at once with a message naming the argument, the value and what is allowed,
instead of giving NaN rewards or a one-sample split later:

- ``bool`` is not an integer or a number (``val_size=True`` is not one sample), and a flag is only
  ``True`` or ``False`` (``bn_recalibration="no"`` is not true);
- NaN and inf are not numbers in any range;
- numpy scalars are accepted wherever the Python type is (``np.float32(0.05)``, ``np.int64(4)``).

The error type defaults to ``ValueError``; callers with their own (``TaskError``) pass it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Mapping
from typing import Any, Literal, overload

import numpy as np

from jpq_env.errors import ArgumentError

__all__ = [
    "SEED_MAX",
    "array",
    "choice",
    "did_you_mean",
    "flag",
    "integer",
    "mapping",
    "number",
    "seed",
]

Error = type[Exception]


def _is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def _allowed(kind: str, bounds: str, optional: bool) -> str:
    return " ".join(filter(None, [kind, bounds, "or None" if optional else ""]))


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


SEED_MAX = 2**64 - 1
"""The largest seed: torch's generators take 64 bits (numpy's take any, gymnasium's too)."""


def seed(name: str, value: Any, *, error: Error = ArgumentError) -> int:
    """``value`` as a seed: an integer in ``[0, 2**64 - 1]``, what every generator accepts.

    Raises:
        error: Naming ``name``, rather than torch's ``Overflow when unpacking long``.
    """
    if isinstance(value, (int, np.integer)) and not _is_bool(value) and 0 <= value <= SEED_MAX:
        return int(value)
    raise error(f"{name} must be an integer in [0, 2**64 - 1], got {value!r:.60}")


def flag(name: str, value: Any, *, error: Error = ArgumentError) -> bool:
    """``value`` as a bool; only ``True`` and ``False`` (or numpy's) are flags.

    Raises:
        error: For anything else (``"no"``, ``1``, ``None``).
    """
    if _is_bool(value):
        return bool(value)
    raise error(f"{name} must be True or False, got {value!r}")


@overload
def integer(
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    optional: Literal[False] = False,
    error: Error = ArgumentError,
) -> int: ...
@overload
def integer(
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    optional: Literal[True],
    error: Error = ArgumentError,
) -> int | None: ...
def integer(
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    optional: bool = False,
    error: Error = ArgumentError,
) -> int | None:
    """``value`` as an int in ``[low, high]`` (either bound optional); bools and floats refused.

    Args:
        name: The argument's name as the user writes it.
        value: The value given.
        low: Smallest allowed value (None: unbounded).
        high: Largest allowed value (None: unbounded).
        optional: ``None`` is allowed (and returned).
        error: Exception type to raise.

    Raises:
        error: Naming ``name``, the value and the allowed range.
    """
    if optional and value is None:
        return None
    ok = isinstance(value, (int, np.integer)) and not _is_bool(value)
    if ok and (low is None or value >= low) and (high is None or value <= high):
        return int(value)
    allowed = _allowed("an integer", _interval(low, high, False, False), optional)
    raise error(f"{name} must be {allowed}, got {value!r}")


@overload
def number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: Literal[False] = False,
    allowed: str | None = None,
    error: Error = ArgumentError,
) -> float: ...
@overload
def number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: Literal[True],
    allowed: str | None = None,
    error: Error = ArgumentError,
) -> float | None: ...
def number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    allowed: str | None = None,
    error: Error = ArgumentError,
) -> float | None:
    """``value`` as a finite float within the bounds; bools, strings, NaN and inf refused.

    Args:
        name: The argument's name as the user writes it.
        value: The value given.
        low: Lower bound (None: unbounded).
        high: Upper bound (None: unbounded).
        low_open: The lower bound itself is excluded.
        high_open: The upper bound itself is excluded.
        optional: ``None`` is allowed (and returned).
        allowed: What is allowed, in words, where the interval alone does not say it.
        error: Exception type to raise.

    Raises:
        error: Naming ``name``, the value and what is allowed.
    """
    if optional and value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not _is_bool(value):
        x = float(value)
        inside = math.isfinite(x)
        if low is not None:
            inside = inside and (x > low if low_open else x >= low)
        if high is not None:
            inside = inside and (x < high if high_open else x <= high)
        if inside:
            return x
    what = allowed or _allowed(
        "a finite number", _interval(low, high, low_open, high_open), optional
    )
    raise error(f"{name} must be {what}, got {value!r}")


def did_you_mean(value: Any, choices: Collection[Any]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped string, else ``""``."""
    if not isinstance(value, str):
        return ""
    names = {str(c).lower(): str(c) for c in choices if isinstance(c, str)}
    close = difflib.get_close_matches(value.lower(), list(names), n=1, cutoff=0.6)
    return f" (did you mean {names[close[0]]!r}?)" if close else ""


def choice(name: str, value: Any, choices: Collection[Any], *, error: Error = ArgumentError) -> Any:
    """``value`` if it is one of ``choices`` (same type and value: ``1`` is not ``True``).

    Raises:
        error: ``unknown NAME VALUE (did you mean ...?): choose one of [...]``.
    """
    for option in choices:
        if type(option) is type(value) and option == value:
            return value
    hint = did_you_mean(value, choices)
    raise error(f"unknown {name} {value!r}{hint}: choose one of {list(choices)}")


def mapping(name: str, value: Any, *, error: Error = ArgumentError) -> dict[str, Any]:
    """A mapping with string keys (keyword arguments) as a dict; ``None`` is an empty one.

    Raises:
        error: For a list, a string, or keys that are not strings.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise error(
            f"{name} must be a mapping of names to values (a dict) or None, got "
            f"{type(value).__name__} {value!r}"
        )
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise error(f"{name} must have string keys (keyword arguments), got {bad[0]!r}")
    return dict(value)


def array(value: Any) -> np.ndarray:
    """``value`` as a numpy array; a torch tensor (on any device, with grad or not) included.

    Agents written in torch hand their actions over as tensors; ``np.asarray`` fails on one that
    requires grad or lives on a GPU.
    """
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)
