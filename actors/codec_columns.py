"""Lists of records that travel column-wise: one list per field instead of a map per record.

A 64-worker heartbeat sent row-wise is 64 maps of 13 fields, which the codec checks one value
at a time in Python (about 1.5 ms). Sent as columns, msgpack builds the lists in C and each
column is checked with a few C-level calls (``set(map(type, column))``, ``min``, ``max``,
``math.fsum``): a list whose values all pass is taken as is, and only a list that fails is
walked value by value, to name the first bad value in the same words the row-wise check uses.

Decoded, the list is a :class:`Columns`: a read-only sequence of the records that builds them
only when they are read one by one, and hands out whole columns (:meth:`Columns.column`) to
the readers that only need a field or two of every record (the manager's telemetry).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from typing import Any, Literal, TypeVar, overload

from batchfarm.actors.messages import Record

R = TypeVar("R", bound=Record)

#: Checks a whole column at once: the values (converted if need be) when every one is
#: right, None when one may not be (the caller then checks them one by one).
FastCheck = Callable[[list[Any]], list[Any] | None]

_INT_MIN, _INT_END = -(2**63), 2**64


class Columns(Sequence[R]):
    """Records of one class held as columns; records are built on first read, once.

    ``columns`` maps field names to lists of ``length`` values, already checked and
    converted; a field without a column has its default in every record.
    """

    __slots__ = ("_cls", "_columns", "_length", "_records")

    def __init__(self, cls: type[R], length: int, columns: dict[str, list[Any]]) -> None:
        self._cls = cls
        self._length = length
        self._columns = columns
        self._records: list[R] | None = None

    @classmethod
    def of(cls, records: Sequence[R]) -> Columns[R] | None:
        """The records as columns, or None for an empty sequence (no class to tell)."""
        if isinstance(records, Columns):
            return records
        if not records:
            return None
        kind = type(records[0])
        columns = {f.name: [getattr(r, f.name) for r in records] for f in dataclasses.fields(kind)}
        return Columns(kind, len(records), columns)

    @property
    def record_class(self) -> type[R]:
        """The class of the records."""
        return self._cls

    def column(self, name: str) -> list[Any]:
        """Every record's value of field ``name``, in order (do not change the list)."""
        found = self._columns.get(name)
        if found is None:
            found = self._columns[name] = _defaults(self._cls, name, self._length)
        return found

    def sent_columns(self) -> dict[str, list[Any]]:
        """The columns that were sent or filled in so far, by field name."""
        return self._columns

    def _built(self) -> list[R]:
        records = self._records
        if records is None:
            make = self._cls
            names = [f.name for f in dataclasses.fields(make)]
            rows = zip(*(self.column(name) for name in names), strict=True)
            if "__slots__" in make.__dict__ or hasattr(make, "__post_init__"):
                records = [make(**dict(zip(names, row, strict=True))) for row in rows]
            else:
                # The values are checked already; a frozen dataclass's __init__ sets each
                # field through object.__setattr__, four times slower for 64 workers.
                records = []
                for row in rows:
                    record = object.__new__(make)
                    record.__dict__.update(zip(names, row, strict=True))
                    records.append(record)
            self._records = records
        return records

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> R: ...

    @overload
    def __getitem__(self, index: slice) -> list[R]: ...

    def __getitem__(self, index: int | slice) -> R | list[R]:
        return self._built()[index]

    def __iter__(self) -> Iterator[R]:
        return iter(self._built())

    def __eq__(self, other: object) -> bool:
        # Equal to any sequence of the same records, as the list it stands for would be.
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == self._length and self._built() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a list is not hashable either

    def __repr__(self) -> str:
        return repr(self._built())


def _defaults(cls: type[Record], name: str, length: int) -> list[Any]:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                return [f.default_factory() for _ in range(length)]
            if f.default is not dataclasses.MISSING:
                return [f.default] * length
            break
    raise KeyError(f"{cls.__name__} has no field {name!r} with a default")


def encode_columns(records: Sequence[Record]) -> dict[str, list[Any]] | list[Any]:
    """Records as columns for a frame (an empty list stays one).

    A column whose values all equal the field's default is left out; the first field's
    always stays, so the length is known.
    """
    table = Columns.of(records)
    if table is None:
        return []
    out: dict[str, list[Any]] = {}
    for i, f in enumerate(dataclasses.fields(table.record_class)):
        column = table.column(f.name)
        if i and _all_default(f, column):
            continue
        out[f.name] = column
    return out


def _all_default(f: dataclasses.Field[Any], column: list[Any]) -> bool:
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    elif f.default is not dataclasses.MISSING:
        default = f.default
    else:
        return False
    # Same type too: 0 == False, and a bool column must not come back as ints.
    return column.count(default) == len(column) and {type(v) for v in column} <= {type(default)}


# ---------------------------------------------------------------------------------------
# Whole-column checks


def fast_check(hint: Any) -> FastCheck | None:
    """The whole-column check for a field's type hint, or None where there is none."""
    if hint is str:
        return _strings
    if hint is int:
        return _ints
    if hint is float:
        return _floats
    if hint is bool:
        return _bools
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal and all(isinstance(a, str) for a in args):
        allowed = frozenset(args)

        def literal(column: list[Any]) -> list[Any] | None:
            return column if _types(column) <= {str} and allowed.issuperset(column) else None

        return literal
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = fast_check(next(a for a in args if a is not type(None)))
        return None if inner is None else _nullable(inner)
    if origin is list and args == (str,):
        return _string_lists
    if origin is dict and args == (str, str):
        return _string_maps
    return None


def _types(column: list[Any]) -> set[type]:
    return set(map(type, column))


def _strings(column: list[Any]) -> list[Any] | None:
    return column if _types(column) <= {str} else None


def _bools(column: list[Any]) -> list[Any] | None:
    return column if _types(column) <= {bool} else None


def _ints(column: list[Any]) -> list[Any] | None:
    if not _types(column) <= {int}:
        return None
    if column and (min(column) < _INT_MIN or max(column) >= _INT_END):
        return None
    return column


def _floats(column: list[Any]) -> list[Any] | None:
    kinds = _types(column)
    if not kinds <= {int, float}:
        return None
    try:
        total = math.fsum(column)  # inf or nan anywhere makes the sum so
    except (OverflowError, ValueError):
        return None  # huge values, or inf and -inf: the slow path names the bad one
    if not math.isfinite(total):
        return None
    return list(map(float, column)) if int in kinds else column


def _string_lists(column: list[Any]) -> list[Any] | None:
    if not _types(column) <= {list}:
        return None
    return column if _types(list(chain.from_iterable(column))) <= {str} else None


def _string_maps(column: list[Any]) -> list[Any] | None:
    if not _types(column) <= {dict}:
        return None
    keys = chain.from_iterable(map(dict.keys, column))
    values = chain.from_iterable(map(dict.values, column))
    return column if set(map(type, keys)) | set(map(type, values)) <= {str} else None


def _nullable(inner: FastCheck) -> FastCheck:
    def nullable(column: list[Any]) -> list[Any] | None:
        if None not in column:
            return inner(column)
        present = [v for v in column if v is not None]
        checked = inner(present)
        if checked is None:
            return None
        if checked is present:
            return column
        values = iter(checked)
        return [None if v is None else next(values) for v in column]

    return nullable
