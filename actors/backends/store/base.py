"""What every part of the store shares: the engine, transactions and input checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

from sqlalchemy.engine import URL, Connection, Engine

from batchfarm.actors.backends.store.engine import WRITE_OPTION, store_errors
from batchfarm.actors.backends.store.models import REASON_LEN
from batchfarm.actors.errors import StoreError

T = TypeVar("T")


class StoreBase:
    """The engine and URL of a store, and its one way of reading and of writing."""

    _engine: Engine
    _url: URL
    #: Rows written per transaction by the batched writes.
    batch_size: int

    @contextlib.contextmanager
    def _reading(self, operation: str) -> Iterator[Connection]:
        with store_errors(operation, self._url), self._engine.connect() as connection:
            yield connection

    @contextlib.contextmanager
    def _writing(self, operation: str) -> Iterator[Connection]:
        # One transaction: committed when the block ends, rolled back if it raises.
        with store_errors(operation, self._url), self._engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                yield connection

    def _batches(self, items: Iterable[T]) -> Iterator[list[T]]:
        """``items`` in lists of ``batch_size``: one transaction's worth each."""
        return chunks(items, self.batch_size)


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size``."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def check_ident(operation: str, what: str, value: str, limit: int) -> None:
    """Refuse an id that cannot be a part of a task id or does not fit its column."""
    # "/" separates a task id's parts; the limits are the columns' (MySQL would refuse).
    if not value or len(value) > limit or "/" in value:
        raise StoreError(
            f"{operation}: {what} {value!r} must be 1 to {limit} characters without '/'"
        )


def clip(reason: str | None) -> str | None:
    """A reason cut to fit its column."""
    # A reason is for people; a long one is cut rather than failing a whole batch.
    if reason is None or len(reason) <= REASON_LEN:
        return reason
    return reason[: REASON_LEN - 1] + "…"
