"""The one codec: records to msgpack frames (ZeroMQ) and JSON bodies (task queues), and back.

Decoding never trusts its input: sizes are checked before parsing, msgpack's limits are set
far below its 100 MiB default, extension types are refused, and the decoded value is checked
field by field against the record's annotations. Whatever is wrong surfaces as one
:class:`~batchfarm.actors.errors.MessageError`, whose ``reason`` a receiver counts before it
drops the message and goes on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import msgpack

from batchfarm.actors.codec_columns import Columns, encode_columns, fast_check
from batchfarm.actors.errors import MessageError
from batchfarm.actors.messages import TOP_LEVEL, Record

#: Largest ZeroMQ frame a receiver accepts (sockets set ZMQ_MAXMSGSIZE to the same).
MAX_FRAME_BYTES = 1024 * 1024
#: Largest task-queue body, in UTF-8 bytes; larger parameters go to the blob store.
MAX_BODY_BYTES = 256 * 1024
#: Deepest nesting of free-form JSON values (params, args, meta).
MAX_DEPTH = 32
#: Most elements in one list or map inside a message.
MAX_ITEMS = 100_000

R = TypeVar("R", bound=Record)


# ---------------------------------------------------------------------------------------
# Encoding


def to_dict(record: Record) -> dict[str, Any]:
    """The record as plain values, tagged with its kind and version."""
    out: dict[str, Any] = {"kind": record.KIND, "v": record.VERSION}
    out.update(_plain(record))
    return out


def encode_frame(record: Record) -> bytes:
    """Encode a record as a msgpack frame for ZeroMQ (its columnar lists column-wise)."""
    out: dict[str, Any] = {"kind": record.KIND, "v": record.VERSION}
    out.update(_plain(record, columnar=True))
    data: bytes = msgpack.packb(out, use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise MessageError(
            "size", f"{record.KIND} frame of {len(data)} bytes; at most {MAX_FRAME_BYTES}"
        )
    return data


#: Made once: ``json.dumps`` with these options builds an encoder per call.
_BODY_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_body(record: Record) -> str:
    """Encode a record as compact JSON text for a task-queue body."""
    text = _BODY_JSON.encode(to_dict(record))
    # A character is at most 4 UTF-8 bytes: short bodies need no count.
    size = len(text) if 4 * len(text) <= MAX_BODY_BYTES else len(text.encode("utf-8"))
    if size > MAX_BODY_BYTES:
        raise MessageError(
            "size",
            f"{record.KIND} body of {size} bytes; at most {MAX_BODY_BYTES} "
            "(put large parameters in the blob store and pass params_ref)",
        )
    return text


#: A record class's fields as (name, sent column-wise in frames), made once per class.
_PLAIN_FIELDS: dict[type[Record], tuple[tuple[str, bool], ...]] = {}
#: Values that are already plain: most of a record's fields, so they are tried first.
_SCALARS = frozenset((str, int, float, bool, type(None)))


def _plain(value: Any, columnar: bool = False) -> Any:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Record):
        fields = _PLAIN_FIELDS.get(type(value))
        if fields is None:
            fields = _PLAIN_FIELDS[type(value)] = tuple(
                (f.name, bool(f.metadata.get("columnar"))) for f in dataclasses.fields(value)
            )
        out = {}
        for name, is_columnar in fields:
            item = getattr(value, name)
            if type(item) in _SCALARS:
                out[name] = item
            elif columnar and is_columnar:
                columns = encode_columns(item)
                out[name] = (
                    {key: _plain(column) for key, column in columns.items()}
                    if isinstance(columns, dict)
                    else columns
                )
            else:
                out[name] = _plain(item, columnar)
        return out
    if isinstance(value, list | tuple | Columns):
        return [_plain(v, columnar) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v, columnar) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------
# Decoding


def _refuse_ext(code: int, data: bytes) -> Any:
    raise MessageError("format", f"msgpack extension type {code} is not accepted")


def decode_frame(data: bytes, expect: type[R] | None = None) -> Record:
    """Decode a msgpack frame into a record (of type ``expect`` if given)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageError("format", f"frame is {type(data).__name__}, expected bytes")
    if len(data) > MAX_FRAME_BYTES:
        raise MessageError("size", f"frame of {len(data)} bytes; at most {MAX_FRAME_BYTES}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            timestamp=0,
            max_str_len=MAX_FRAME_BYTES,
            max_bin_len=MAX_FRAME_BYTES,
            max_array_len=MAX_ITEMS,
            max_map_len=MAX_ITEMS,
            max_ext_len=MAX_FRAME_BYTES,  # ext_hook refuses them by name
        )
    except MessageError:
        raise
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as e:
        # ExtraData, FormatError, StackError, limits and bad UTF-8 all land here.
        raise MessageError("format", f"not a msgpack frame: {type(e).__name__}: {e}") from None
    return from_dict(value, expect)


def decode_body(text: str | bytes, expect: type[R] | None = None) -> Record:
    """Decode a task-queue body (JSON text) into a record (of type ``expect`` if given)."""
    if isinstance(text, bytes | bytearray):
        if len(text) > MAX_BODY_BYTES:
            raise MessageError("size", f"body of {len(text)} bytes; at most {MAX_BODY_BYTES}")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise MessageError("format", f"body is not UTF-8: {e}") from None
    if not isinstance(text, str):
        raise MessageError("format", f"body is {type(text).__name__}, expected text")
    if len(text) > MAX_BODY_BYTES:  # characters ≤ bytes: a cheap first bound
        raise MessageError("size", f"body of {len(text)} characters; at most {MAX_BODY_BYTES}")
    try:
        value = _BODY_DECODER.decode(text)
    except MessageError:
        raise
    except (ValueError, RecursionError) as e:
        raise MessageError("format", f"not a JSON body: {e}") from None
    return from_dict(value, expect)


def _refuse_constant(name: str) -> Any:
    raise MessageError("format", f"JSON constant {name} is not accepted")


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise MessageError("format", "JSON object with a repeated key")
    return out


#: Made once: ``json.loads`` with these options builds a decoder per call.
_BODY_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_no_dupes)


def from_dict(value: Any, expect: type[R] | None = None) -> Record:
    """Check a decoded value against its record's schema and build the record."""
    if not isinstance(value, dict):
        raise MessageError("schema", f"message is a {_name(value)}, expected a map")
    kind, version = value.get("kind"), value.get("v")
    cls = TOP_LEVEL.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(
            "kind", f"unknown message kind {kind!r}; expected one of {sorted(TOP_LEVEL)}"
        )
    if expect is not None and cls is not expect:
        raise MessageError("kind", f"got a {kind} message, expected {expect.KIND}")
    if type(version) is not int or version != cls.VERSION:
        raise MessageError(
            "version", f"{kind} version {version!r}; this batchfarm reads version {cls.VERSION}"
        )
    record = _build(cls, value, cls.KIND)
    problem = record.check()
    if problem:
        raise MessageError("schema", f"{kind}: {problem}")
    return record


# ---------------------------------------------------------------------------------------
# Field-by-field checks, driven by the records' annotations


#: Converts one decoded value to its field's type, given the value's path for errors.
Converter = Callable[[Any, str], Any]

_FIELDS: dict[type[Record], tuple[tuple[str, Converter, bool], ...]] = {}
_CONVERTERS: dict[Any, Converter] = {}


def _fields(cls: type[Record]) -> tuple[tuple[str, Converter, bool], ...]:
    """(name, converter, required) per field; made once per class, decoding is a hot path."""
    known = _FIELDS.get(cls)
    if known is None:
        hints = typing.get_type_hints(cls)
        known = tuple(
            (
                f.name,
                _columnar(hints[f.name])
                if f.metadata.get("columnar")
                else _converter(hints[f.name]),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        )
        _FIELDS[cls] = known
    return known


def _build(cls: type[Record], value: dict[str, Any], path: str) -> Record:
    kwargs = {}
    for name, convert, required in _fields(cls):
        if name in value:
            kwargs[name] = convert(value[name], f"{path}.{name}")
        elif required:
            raise MessageError("schema", f"{path}.{name} is missing")
    # Unknown fields are ignored: a newer sender may add optional fields within a version.
    return cls(**kwargs)


def _converter(hint: Any) -> Converter:
    """The converter of a type hint, made once: a heartbeat decodes a thousand fields."""
    known = _CONVERTERS.get(hint)
    if known is None:
        known = _CONVERTERS[hint] = _make_converter(hint)
    return known


def _make_converter(hint: Any) -> Converter:
    check = _CHECKS.get(hint)
    if check is not None:
        return check
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = _converter(next(a for a in args if a is not type(None)))  # only "X | None"
        nullable = type(None) in args

        def union(value: Any, path: str) -> Any:
            return None if value is None and nullable else inner(value, path)

        return union
    if origin is Literal:
        allowed = frozenset(args)

        def literal(value: Any, path: str) -> Any:
            if not isinstance(value, str) or value not in allowed:
                raise MessageError("schema", f"{path} is {value!r}, expected one of {list(args)}")
            return value

        return literal
    if origin in (list, Sequence):
        item = _converter(args[0])

        def listed(value: Any, path: str) -> Any:
            if not isinstance(value, list):
                raise MessageError("schema", f"{path} is a {_name(value)}, expected a list")
            return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

        return listed
    if origin is dict:
        entry = _converter(args[1])

        def mapped(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise MessageError("schema", f"{path} is a {_name(value)}, expected a map")
            return {_check_str(k, f"{path} key"): entry(v, f"{path}.{k}") for k, v in value.items()}

        return mapped
    if isinstance(hint, type) and issubclass(hint, Record):
        record = hint

        def nested(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise MessageError("schema", f"{path} is a {_name(value)}, expected a map")
            return _build(record, value, path)

        return nested
    raise TypeError(f"no decoder for {hint!r}")  # a bug in a record, not bad input


def _columnar(hint: Any) -> Converter:
    """A list of records sent row-wise (a list of maps) or column-wise (a map of lists)."""
    rows = _converter(hint)
    (record,) = typing.get_args(hint)
    if not (isinstance(record, type) and issubclass(record, Record)):
        raise TypeError(f"columnar field of {hint!r}: expected a list of records")

    def columnar(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            return rows(value, path)
        return _columns(record, value, path)

    return columnar


#: Per record class: (name, item converter, whole-column check, required) of each field.
_COLUMN_FIELDS: dict[type[Record], tuple[tuple[str, Converter, Any, bool], ...]] = {}


def _columns(cls: type[Record], value: dict[Any, Any], path: str) -> Columns[Record]:
    specs = _COLUMN_FIELDS.get(cls)
    if specs is None:
        hints = typing.get_type_hints(cls)
        specs = _COLUMN_FIELDS[cls] = tuple(
            (name, convert, fast_check(hints[name]), required)
            for name, convert, required in _fields(cls)
        )
    length: int | None = None
    first = ""
    columns: dict[str, list[Any]] = {}
    for name, convert, fast, required in specs:
        column = value.get(name)
        if column is None:
            if required:
                raise MessageError("schema", f"{path} column {name} is missing")
            continue
        if not isinstance(column, list):
            raise MessageError("schema", f"{path}.{name} is a {_name(column)}, expected a list")
        if length is None:
            length, first = len(column), name
        elif len(column) != length:
            raise MessageError(
                "schema",
                f"{path}.{name} has {len(column)} values, expected {length} (as {first} has)",
            )
        checked = fast(column) if fast is not None else None
        if checked is None:
            checked = [convert(v, f"{path}[{i}].{name}") for i, v in enumerate(column)]
        columns[name] = checked
    if length is None:
        raise MessageError("schema", f"{path} has no column; expected at least {specs[0][0]}")
    # Unknown columns are ignored, as unknown fields are.
    return Columns(cls, length, columns)


def _check_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise MessageError("schema", f"{path} is a {_name(value)}, expected text")
    return value


def _check_int(value: Any, path: str) -> int:
    if type(value) is not int or not -(2**63) <= value < 2**64:
        raise MessageError("schema", f"{path} is {_name(value)}, expected an integer")
    return value


def _check_float(value: Any, path: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise MessageError("schema", f"{path} is {_name(value)}, expected a finite number")
    return float(value)


def _check_bool(value: Any, path: str) -> bool:
    if type(value) is not bool:
        raise MessageError("schema", f"{path} is {_name(value)}, expected true or false")
    return value


def _check_json(value: Any, path: str, depth: int = 0) -> Any:
    """A free-form value: null, booleans, numbers, text, lists and string-keyed maps."""
    if depth > MAX_DEPTH:
        raise MessageError("schema", f"{path} nests deeper than {MAX_DEPTH} levels")
    if value is None or type(value) in (bool, str):
        return value
    if type(value) in (int, float):
        return _check_float(value, path) if type(value) is float else _check_int(value, path)
    if isinstance(value, list):
        return [_check_json(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            _check_str(k, f"{path} key"): _check_json(v, f"{path}.{k}", depth + 1)
            for k, v in value.items()
        }
    raise MessageError("schema", f"{path} is {_name(value)}, expected a JSON value")


def _name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_CHECKS: dict[Any, Callable[[Any, str], Any]] = {
    str: _check_str,
    int: _check_int,
    float: _check_float,
    bool: _check_bool,
    Any: _check_json,
}
