"""Checked reads of a handler's parameters: a structural allowlist, never free-form values.

Every failure is a permanent :class:`TaskError` naming the handler, the parameter, the value
and what was expected: no retry can fix a bad parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from batchfarm.actors.errors import TaskError

#: A plain file name: no folders, no leading dot or dash, nothing a shell or ffmpeg reads.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class ParamError(TaskError):
    """A handler parameter that is unknown or holds the wrong value (always permanent).

    ``name``, ``value`` and ``expected`` say which and why, so the manager can report it at
    submit time against the spec's own field (``stages[0].params.height``).
    """

    def __init__(self, handler: str, name: str, value: object, expected: str) -> None:
        super().__init__(
            f"{handler}: param {name} = {_show(value)}: expected {expected}", permanent=True
        )
        self.name = name
        self.value = value
        self.expected = expected


class UnknownParamError(ParamError):
    """Parameters the handler does not take (a typo must fail, not be ignored)."""

    def __init__(self, handler: str, unknown: list[str], known: list[str]) -> None:
        TaskError.__init__(
            self,
            f"{handler}: unknown param {', '.join(unknown)}: expected only "
            f"{', '.join(known) or 'none'}",
            permanent=True,
        )
        self.name = unknown[0]
        self.value = None
        self.expected = f"only {', '.join(known) or 'none'}"
        self.known = known


def bad_param(handler: str, name: str, value: object, expected: str) -> TaskError:
    """The error for a parameter whose value is not what was expected."""
    return ParamError(handler, name, value, expected)


def _show(value: object) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


class Params:
    """A handler's parameters, read through checks; unknown names are refused up front.

    A typo (``heigth``) must fail the task, not be silently ignored.
    """

    def __init__(self, handler: str, params: Mapping[str, Any], allowed: Collection[str]) -> None:
        self.handler = handler
        self.params = params
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise UnknownParamError(handler, unknown, sorted(allowed))

    def __contains__(self, name: str) -> bool:
        return name in self.params

    def error(self, name: str, value: object, expected: str) -> TaskError:
        """The error for parameter ``name`` holding ``value`` instead of ``expected``."""
        return bad_param(self.handler, name, value, expected)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        """An integer from ``low`` to ``high``; booleans and floats are refused."""
        value = self.params.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(name, value, f"an integer from {low} to {high}")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        """A number from ``low`` to ``high``; booleans are refused."""
        value = self.params.get(name, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not low <= value <= high:
            raise self.error(name, value, f"a number from {low:g} to {high:g}")
        return float(value)

    def choice(self, name: str, default: str, choices: Collection[str]) -> str:
        """One of a fixed set of strings."""
        value = self.params.get(name, default)
        if not isinstance(value, str) or value not in choices:
            raise self.error(name, value, "one of " + ", ".join(choices))
        return value

    def match(self, name: str, default: str, pattern: re.Pattern[str], expected: str) -> str:
        """A string matching ``pattern`` in full."""
        value = self.params.get(name, default)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise self.error(name, value, expected)
        return value

    def file_name(self, name: str, default: str, suffix: str = "") -> str:
        """A plain file name (no folders), ending with ``suffix`` if one is given."""
        expected = (
            "a plain file name: 1 to 128 letters, digits, '_', '.' or '-', starting with a"
            " letter or digit" + (f", ending in {suffix}" if suffix else "")
        )
        value = self.match(name, default, FILE_NAME, expected)
        if suffix and (not value.endswith(suffix) or value == suffix):
            raise self.error(name, value, expected)
        return value
