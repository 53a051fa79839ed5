"""Columnar lists in frames: heartbeats' workers and metrics' samples travel one list per field."""

from __future__ import annotations

import math

import msgpack
import pytest

from batchfarm.actors.codec import decode_body, decode_frame, encode_body, encode_frame, to_dict
from batchfarm.actors.codec_columns import Columns
from batchfarm.actors.errors import MessageError
from batchfarm.actors.messages import Heartbeat, Metrics, Sample, WorkerStatus

WORKERS = [
    WorkerStatus(index=0, pid=4242, state="busy", core=0, task="j/s/1", progress=0.5, done=3),
    WorkerStatus(index=1, pid=4243, state="idle", core=None, cpu_percent=1, rss_bytes=2**40),
    WorkerStatus(index=2, pid=4244, state="paused", receipts=["r-1", "r-2"]),
]
BEAT = Heartbeat(node="node-a", sent_at=100.0, state="up", workers=WORKERS, dropped=2)


def frame_dict(record: Heartbeat | Metrics) -> dict:
    return msgpack.unpackb(encode_frame(record))


def test_workers_travel_as_columns_and_come_back_equal():
    sent = frame_dict(BEAT)
    assert sent["v"] == 2
    workers = sent["workers"]
    assert workers["index"] == [0, 1, 2]
    assert workers["task"] == ["j/s/1", None, None]
    # A column of defaults only is left out of the frame and filled in on arrival.
    assert "failed" not in workers
    beat = decode_frame(encode_frame(BEAT), Heartbeat)
    assert isinstance(beat.workers, Columns)
    assert beat == BEAT
    assert beat.workers[1].cpu_percent == 1.0
    assert isinstance(beat.workers[1].cpu_percent, float)
    assert [w.receipts for w in beat.workers] == [[], [], ["r-1", "r-2"]]
    assert beat.workers.column("failed") == [0, 0, 0]
    # Re-encoding a decoded record sends the same frame.
    assert frame_dict(beat) == sent


def test_rows_are_still_read_and_bodies_stay_rows():
    assert isinstance(to_dict(BEAT)["workers"], list)
    assert decode_body(encode_body(BEAT)) == BEAT
    rows = to_dict(BEAT)
    assert decode_frame(msgpack.packb(rows)) == BEAT
    empty = Heartbeat(node="n", sent_at=1.0, state="stopping")
    assert frame_dict(empty)["workers"] == []
    assert decode_frame(encode_frame(empty)) == empty


def test_samples_travel_as_columns():
    metrics = Metrics(
        "node-a", 5.0, [Sample("a", 1.0), Sample("b", 2, {"direction": "in"}), Sample("c", -3.5)]
    )
    sent = frame_dict(metrics)
    assert sent["samples"]["name"] == ["a", "b", "c"]
    decoded = decode_frame(encode_frame(metrics), Metrics)
    assert decoded == metrics
    assert decoded.samples[1].labels == {"direction": "in"}


@pytest.mark.parametrize(
    ("field", "values", "words"),
    [
        ("state", ["busy", "dancing", "idle"], r"heartbeat\.workers\[1\]\.state is 'dancing'"),
        ("pid", [1, "2", 3], r"heartbeat\.workers\[1\]\.pid is str, expected an integer"),
        ("pid", [True, 2, 3], r"heartbeat\.workers\[0\]\.pid is bool"),
        ("cpu_percent", [1.0, math.inf, 0.0], r"workers\[1\]\.cpu_percent .*finite number"),
        ("cpu_percent", [math.inf, -math.inf, 0], r"workers\[0\]\.cpu_percent .*finite number"),
        ("progress", [None, math.nan, 0.5], r"workers\[1\]\.progress .*finite number"),
        ("core", [None, 1.5, 2], r"heartbeat\.workers\[1\]\.core is float"),
        ("task", [None, 7, "j/s/1"], r"heartbeat\.workers\[1\]\.task is a int, expected text"),
        ("receipts", [[], ["r"], [5]], r"heartbeat\.workers\[2\]\.receipts\[0\] is a int"),
        ("pid", [1, 2], r"heartbeat\.workers\.pid has 2 values, expected 3"),
        ("pid", "123", r"heartbeat\.workers\.pid is a str, expected a list"),
    ],
)
def test_a_bad_value_in_a_column_is_named_as_in_rows(field, values, words):
    sent = frame_dict(BEAT)
    sent["workers"][field] = values
    with pytest.raises(MessageError, match=words) as info:
        decode_frame(msgpack.packb(sent))
    assert info.value.reason == "schema"


def test_a_missing_required_column_is_named_and_unknown_ones_ignored():
    sent = frame_dict(BEAT)
    sent["workers"]["added_later"] = [1, 2, 3]
    assert decode_frame(msgpack.packb(sent)) == BEAT
    del sent["workers"]["pid"]
    with pytest.raises(MessageError, match=r"heartbeat\.workers column pid is missing"):
        decode_frame(msgpack.packb(sent))


def test_an_old_version_is_refused_by_name():
    sent = frame_dict(BEAT) | {"v": 1}
    with pytest.raises(MessageError, match="heartbeat version 1; this batchfarm reads version 2"):
        decode_frame(msgpack.packb(sent))
