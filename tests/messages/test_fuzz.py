"""Property tests: random bytes and mutated valid messages never raise anything but ours."""

from __future__ import annotations

import json

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchfarm.actors.codec import decode_body, decode_frame, encode_body, encode_frame, to_dict
from batchfarm.actors.errors import MessageError
from batchfarm.actors.messages import Record
from tests.messages.test_codec import ALL

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID_FRAMES = [encode_frame(r) for r in ALL]
VALID_BODIES = [encode_body(r) for r in ALL]

# Anything msgpack or JSON can carry, including what our schemas refuse.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
frame_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-(2**63), 2**64 - 1), inner, max_size=4)
    ),
    max_leaves=20,
)


def decodes_or_refuses(decode, data) -> None:
    """The only allowed outcomes: a record, or our MessageError."""
    try:
        result = decode(data)
    except MessageError as e:
        reason = e.reason
    else:
        assert isinstance(result, Record)
        return
    assert reason in {"size", "format", "schema", "kind", "version"}


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_as_frame(data):
    decodes_or_refuses(decode_frame, data)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_as_body(data):
    decodes_or_refuses(decode_body, data)


@FUZZ
@given(st.text(max_size=2048))
def test_random_text_as_body(text):
    decodes_or_refuses(decode_body, text)


@FUZZ
@given(st.sampled_from(VALID_FRAMES), st.data())
def test_mutated_valid_frames(frame, data):
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if not mutated:
            break
        at = data.draw(st.integers(0, len(mutated) - 1))
        if op == "flip":
            mutated[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del mutated[at:]
        elif op == "insert":
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del mutated[at]
    decodes_or_refuses(decode_frame, bytes(mutated))


@FUZZ
@given(st.sampled_from(VALID_BODIES), st.data())
def test_mutated_valid_bodies(body, data):
    chars = list(body)
    for _ in range(data.draw(st.integers(1, 8))):
        if not chars:
            break
        at = data.draw(st.integers(0, len(chars) - 1))
        op = data.draw(st.sampled_from(["replace", "cut", "insert"]))
        if op == "replace":
            chars[at] = data.draw(st.characters())
        elif op == "cut":
            del chars[at:]
        else:
            chars[at:at] = data.draw(st.text(min_size=1, max_size=4))
    decodes_or_refuses(decode_body, "".join(chars))


@FUZZ
@given(st.sampled_from(ALL), st.data())
def test_valid_messages_with_a_field_replaced(record, data):
    """Structure-aware mutation: keep the shape, put any value in any field."""
    as_dict = to_dict(record)
    key = data.draw(st.sampled_from(sorted(as_dict)))
    as_dict[key] = data.draw(frame_values)
    decodes_or_refuses(decode_frame, msgpack.packb(as_dict, use_bin_type=True))
    json_dict = to_dict(record)
    json_dict[key] = data.draw(json_values)
    decodes_or_refuses(decode_body, json.dumps(json_dict))
