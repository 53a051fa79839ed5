"""Checked reads of a job spec's values: each failure a SpecError naming the field's path.

``at`` is the path of the table being read (``stages[1]``, ``""`` for the top), ``source``
where the spec came from; both go into the error, with the value and what was expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time
from typing import Any

from batchfarm.actors.codec import MAX_DEPTH
from batchfarm.actors.errors import NO_VALUE, SpecError, did_you_mean

#: Latest start a spec may ask for, in seconds from submission (``after``).
MAX_AFTER_S = 366 * 86_400
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?")


class Table:
    """One table of a spec being read: its keys checked, then checked reads of its values."""

    def __init__(self, source: str, value: Any, at: str, allowed: Sequence[str]) -> None:
        if not isinstance(value, dict):
            raise SpecError(source, at or "spec", value, "expected a table (a JSON object)")
        for key in value:
            if key not in allowed:
                hint = did_you_mean(str(key), allowed)
                expected = f"unknown key: expected one of {', '.join(allowed)}{hint}"
                raise SpecError(source, join(at, str(key)), NO_VALUE, expected)
        self.source = source
        self.values: dict[str, Any] = value
        self.at = at

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, default: Any = None) -> Any:
        """The raw value of ``key``, or ``default``."""
        return self.values.get(key, default)

    def path(self, key: str) -> str:
        """The path of ``key`` in the spec, for messages."""
        return join(self.at, key)

    def error(self, key: str, value: Any, expected: str) -> SpecError:
        """The error for ``key`` holding ``value``; ``expected`` starts "expected ..."."""
        return SpecError(self.source, self.path(key), value, expected)

    def text(self, key: str, default: str, expected: str) -> str:
        """``key``'s value (or ``default``) as a string; ``expected`` says what it should be."""
        value = self.values.get(key, default)
        if not isinstance(value, str):
            raise self.error(key, value, f"expected {expected}")
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        """``key``'s value as an integer from ``low`` to ``high`` (booleans refused)."""
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, value, f"expected an integer from {low} to {high}")
        return value

    def number(self, key: str, default: int | float | None = None) -> int | float:
        """``key``'s value (or ``default``) as a finite number (booleans refused)."""
        value = self.values.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.error(key, value, "expected a finite number")
        return value


def text_list(source: str, value: Any, at: str) -> list[str]:
    """A list of non-empty strings."""
    if not isinstance(value, list):
        raise SpecError(source, at, value, "expected a list of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise SpecError(source, f"{at}[{index}]", item, "expected a non-empty string")
    return value


def json_table(source: str, value: Any, at: str) -> dict[str, Any]:
    """A table of JSON values, what a task body can carry (params)."""
    if not isinstance(value, dict):
        raise SpecError(source, at, value, "expected a table of params")
    checked: dict[str, Any] = _json_value(source, value, at, 0)
    return checked


def _json_value(source: str, value: Any, at: str, depth: int) -> Any:
    # TOML dates and times, and nan or inf, have no JSON form: refuse them here, not in a task.
    if depth > MAX_DEPTH:
        raise SpecError(source, at, NO_VALUE, f"expected at most {MAX_DEPTH} levels of nesting")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(source, at, value, "expected a finite number")
        return value
    if isinstance(value, list):
        return [_json_value(source, v, f"{at}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _json_value(source, v, f"{at}.{k}", depth + 1) for k, v in value.items()}
    expected = "expected text, a number, true or false, a list or a table (write dates as text)"
    raise SpecError(source, at, str(value), expected)


def start_time(source: str, value: Any, at: str = "start_at") -> float:
    """``start_at`` or ``deadline``: a TOML date-time or ISO 8601 text with its zone, in epoch s."""
    expected = 'expected a date and time with its zone, such as "2026-12-03T20:00:00Z"'
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise SpecError(source, at, value, expected) from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        shown = value.isoformat() if isinstance(value, date | time | datetime) else value
        raise SpecError(source, at, shown, expected)
    return value.timestamp()


def duration(source: str, value: Any, at: str = "after") -> float:
    """Seconds, or text such as ``"90s"``, ``"15m"``, ``"2h"`` or ``"1d12h"``."""
    expected = f'expected a duration such as "90s", "15m", "2h" or "1d12h", up to {MAX_AFTER_S}s'
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        seconds = float(value)
    elif (
        isinstance(value, str)
        and (match := _DURATION.fullmatch(value.strip()))
        and any(match.groups())
    ):
        days, hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = days * 86_400 + hours * 3_600 + minutes * 60 + secs
    if seconds is None or not 0 <= seconds <= MAX_AFTER_S:
        raise SpecError(source, at, value, expected)
    return seconds


def choices(options: Iterable[object]) -> str:
    """``one of "a", "b"``."""
    return "one of " + ", ".join(f'"{option}"' for option in options)


def join(at: str, key: str) -> str:
    """The path of ``key`` in the table at ``at``."""
    return f"{at}.{key}" if at else key
