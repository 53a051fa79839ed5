"""One exception tree for batchfarm.

Every error batchfarm raises on purpose is a :class:`BatchfarmError`, with one subtree per
part, so callers can catch a part's failures without catching programming errors.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable


class BatchfarmError(Exception):
    """Base of every error batchfarm raises on purpose."""


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"


#: Passed as a :class:`ConfigError`'s value when there is no value to show (a missing file).
NO_VALUE: object = _NoValue()


class ConfigError(BatchfarmError):
    """A config file, environment variable or value is not what was expected.

    The message is one line naming where the value came from, the key, the value and what
    was expected, so an operator can fix it without reading code.
    """

    def __init__(self, source: str, key: str, value: object, expected: str) -> None:
        self.source = source
        self.key = key
        self.value = value
        self.expected = expected
        shown = "" if value is NO_VALUE else f" = {_show(value)}"
        super().__init__(f"{source}: {key}{shown}: {expected}")


def _show(value: object) -> str:
    # Show strings as TOML writes them ("auto", not 'auto'): the operator compares with the file.
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class MessageError(BatchfarmError):
    """A frame or queue body could not be decoded or failed validation.

    ``reason`` is a short fixed word (``size``, ``format``, ``schema``, ``version``, ...) fit to
    be a metric label; the message says what exactly was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"bad message ({reason}): {detail}")


class BackendError(BatchfarmError):
    """A backend (task queue, blob store, analytics store, scaler) failed."""


class QueueError(BackendError):
    """The task queue refused or failed a call."""


class StaleReceiptError(QueueError):
    """A receipt handle no longer holds its message (received again, deleted or unknown)."""


class BlobError(BackendError):
    """The blob store refused or failed a call."""


class BlobKeyError(BlobError, ValueError):
    """An object key is not a valid key."""


class BlobNotFoundError(BlobError, KeyError):
    """No object exists under the key."""

    def __str__(self) -> str:
        # KeyError would quote the whole message; keep it readable.
        return str(self.args[0]) if self.args else "blob not found"


class StoreError(BackendError):
    """The analytics store failed a read or write."""


class TaskError(BatchfarmError):
    """A task failed. Handlers raise it (or let any exception escape) to fail their task.

    ``permanent`` marks a failure no retry can fix (bad input, an unknown parameter): the
    task fails at once. Otherwise the task runs again after a backoff, until its attempts
    or the queue's receive limit run out. ``stderr_tail`` carries the last lines a tool
    wrote, so the failure can be acted on without the worker's logs.
    """

    def __init__(self, message: str, *, permanent: bool = False, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.permanent = permanent
        self.stderr_tail = stderr_tail


class TaskCancelled(TaskError):
    """A running task was stopped before it finished.

    ``reason`` says why: ``time_limit`` (it ran too long), ``lease_lost`` (its message went to
    another worker), ``paused`` (a forced pause) or ``drain`` (the drain's grace ran out).
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or f"task stopped: {reason}")
        self.reason = reason


class UnknownHandlerError(TaskError):
    """A task names a handler that is neither built in, registered, nor importable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class SpecError(BatchfarmError):
    """A job spec (a file, a stored spec or command-line flags) is not what was expected.

    One line, like :class:`ConfigError`: where the spec came from, the field's path
    (``stages[1].params.height``), its value and what was expected. A job whose spec fails
    is refused before anything is uploaded or queued.
    """

    def __init__(self, source: str, field: str, value: object, expected: str) -> None:
        self.source = source
        self.field = field
        self.value = value
        self.expected = expected
        shown = "" if value is NO_VALUE else f" = {_show(value)}"
        super().__init__(f"{source}: {field}{shown}: {expected}")


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the option closest to a misspelt ``name``, or ``""``."""
    close = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
