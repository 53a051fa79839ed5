"""The codec: every record round-trips both ways, and every kind of bad input is refused."""

from __future__ import annotations

import json
import math

import msgpack
import pytest

from batchfarm.actors.codec import (
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_FRAME_BYTES,
    decode_body,
    decode_frame,
    encode_body,
    encode_frame,
    to_dict,
)
from batchfarm.actors.errors import MessageError
from batchfarm.actors.messages import (
    AbandonedRun,
    Command,
    Completion,
    ErrorInfo,
    Heartbeat,
    Metrics,
    OutputRef,
    Sample,
    TaskBody,
    Timings,
    WorkerStatus,
)

TASK = TaskBody(
    job="j-20261122-0001",
    stage="transcode",
    part=7,
    handler="transcode",
    inputs=["jobs/j-20261122-0001/inputs/clip 7 (é).mp4"],
    params={"height": 720, "preset": "h264-720p", "extra": [1, 2.5, None, True, {"a": "b"}]},
    max_attempts=4,
    time_limit_s=600.0,
    enqueued_at=1_795_000_000.25,
)
COMPLETION = Completion(
    job="j-20261122-0001",
    stage="transcode",
    part=7,
    ok=False,
    node="node-a",
    worker=1,
    attempt=2,
    started_at=1.5,
    finished_at=9.25,
    outputs=[OutputRef(key="jobs/j-20261122-0001/transcode/7/out.mp4", size=123, sha256="ab" * 32)],
    error=ErrorInfo(type="FfmpegError", message="exit 1", stderr_tail="moov atom not found"),
    final=True,
    timings=Timings(queue_wait_s=0.5, fetch_s=0.25, compute_s=6.0, upload_s=0.5),
    cpu_s=5.75,
    bytes_in=1000,
    bytes_out=123,
    meta={"duration": 20.0},
)
HEARTBEAT = Heartbeat(
    node="node-a",
    sent_at=100.0,
    state="draining",
    host="ip-10-0-0-1",
    cpu_percent=187.5,
    rss_bytes=10**9,
    workers=[WorkerStatus(index=0, pid=4242, state="busy", core=0, task="j/s/1", progress=0.5)],
    dropped=3,
)
METRICS = Metrics(
    node="node-a", sent_at=100.0, samples=[Sample("batchfarm_worker_busy", 1.0, {"core": "0"})]
)
COMMAND = Command(name="pause", id="c1", args={"force": True})
ABANDONED = AbandonedRun(
    job="j-20261122-0001",
    stage="transcode",
    part=7,
    ok=False,
    node="node-a",
    worker=1,
    attempt=2,
    started_at=1.5,
    finished_at=9.25,
    timings=Timings(compute_s=7.75),
)
ALL = [TASK, COMPLETION, HEARTBEAT, METRICS, COMMAND, ABANDONED]


@pytest.mark.parametrize("record", ALL, ids=lambda r: r.KIND)
def test_every_record_round_trips_as_frame_and_body(record):
    assert decode_frame(encode_frame(record)) == record
    assert decode_body(encode_body(record)) == record
    assert decode_body(encode_body(record).encode()) == record


def test_task_body_is_plain_versioned_json():
    """Any SQS client can read and write a task body: it is JSON with a kind and a version."""
    body = json.loads(encode_body(TASK))
    assert body["kind"] == "task"
    assert body["v"] == 1
    assert body["job"] == TASK.job
    assert body["inputs"] == TASK.inputs
    # Written by hand, as another client would, with only the required fields.
    minimal = '{"kind":"task","v":1,"job":"j1","stage":"s","part":0,"handler":"checksum"}'
    decoded = decode_body(minimal, TaskBody)
    assert isinstance(decoded, TaskBody)
    assert decoded.task_id == "j1/s/0"
    assert decoded.output_prefix == "jobs/j1/s/0/"
    assert decoded.max_attempts == 3


def test_unknown_fields_are_ignored_within_a_version():
    body = to_dict(TASK) | {"added_in_a_later_release": 1}
    assert decode_body(json.dumps(body)) == TASK


def test_expect_rejects_another_kind():
    with pytest.raises(MessageError, match="expected task") as info:
        decode_body(encode_body(COMMAND), TaskBody)
    assert info.value.reason == "kind"


def test_an_abandoned_run_is_refused_where_only_a_completion_is_read():
    """A manager older than abandoned runs reads completions only: it refuses one by name."""
    with pytest.raises(MessageError, match="got a abandoned message, expected completion") as info:
        decode_body(encode_body(ABANDONED), Completion)
    assert info.value.reason == "kind"
    # A reader of either decodes it as the completion of a run that has no outcome.
    decoded = decode_body(encode_body(ABANDONED))
    assert isinstance(decoded, Completion)
    assert isinstance(decoded, AbandonedRun)


@pytest.mark.parametrize(
    "change", [{"ok": True}, {"final": True}, {"error": {"type": "E", "message": "m"}}]
)
def test_an_abandoned_run_with_an_outcome_is_refused(change):
    body = to_dict(ABANDONED) | change
    with pytest.raises(MessageError, match="an abandoned run has no outcome") as info:
        decode_body(json.dumps(body))
    assert info.value.reason == "schema"


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        ({"v": 2}, "version", "task version 2; this batchfarm reads version 1"),
        ({"v": "1"}, "version", "version '1'"),
        ({"kind": "nope"}, "kind", "unknown message kind 'nope'"),
        ({"part": "7"}, "schema", "task.part is str, expected an integer"),
        ({"part": True}, "schema", "task.part is bool, expected an integer"),
        ({"part": -1}, "schema", "part is -1, expected 0 or more"),
        ({"job": "../etc"}, "schema", "job is '../etc'"),
        ({"stage": ""}, "schema", "stage is ''"),
        ({"inputs": "a"}, "schema", "task.inputs is a str, expected a list"),
        ({"inputs": [1]}, "schema", "task.inputs[0] is a int, expected text"),
        ({"max_attempts": 0}, "schema", "max_attempts is 0"),
        ({"time_limit_s": -5}, "schema", "time_limit_s is -5.0"),
        ({"enqueued_at": None}, "schema", "task.enqueued_at is null, expected a finite number"),
        ({"params": []}, "schema", "task.params is a list, expected a map"),
    ],
)
def test_bad_fields_are_named(change, reason, words):
    body = json.dumps(to_dict(TASK) | change)
    with pytest.raises(MessageError) as info:
        decode_body(body)
    assert info.value.reason == reason
    assert words in str(info.value)


def test_missing_required_field_is_named():
    body = to_dict(TASK)
    del body["handler"]
    with pytest.raises(MessageError, match=r"task\.handler is missing"):
        decode_body(json.dumps(body))


def test_nested_records_are_checked():
    body = to_dict(COMPLETION)
    body["outputs"][0]["size"] = "big"
    with pytest.raises(MessageError, match=r"completion\.outputs\[0\]\.size is str"):
        decode_body(json.dumps(body))
    body = to_dict(HEARTBEAT)
    body["workers"][0]["state"] = "dancing"
    with pytest.raises(MessageError, match=r"heartbeat\.workers\[0\]\.state is 'dancing'"):
        decode_frame(msgpack.packb(body))


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_are_refused(text):
    body = encode_body(TASK).replace('"enqueued_at":1795000000.25', f'"enqueued_at":{text}')
    with pytest.raises(MessageError) as info:
        decode_body(body)
    assert info.value.reason == "format"


def test_nan_in_a_frame_is_refused():
    body = to_dict(HEARTBEAT) | {"cpu_percent": math.nan}
    with pytest.raises(MessageError, match="finite number"):
        decode_frame(msgpack.packb(body))


def test_repeated_json_keys_are_refused():
    with pytest.raises(MessageError, match="repeated key"):
        decode_body('{"kind":"task","kind":"completion"}')


def test_free_form_values_are_bounded_in_depth():
    deep: object = 1
    for _ in range(MAX_DEPTH + 2):
        deep = [deep]
    body = to_dict(TASK) | {"params": {"deep": deep}}
    with pytest.raises(MessageError, match="nests deeper"):
        decode_body(json.dumps(body))
    # json's own recursion limit also surfaces as our error, not RecursionError.
    with pytest.raises(MessageError):
        decode_body("[" * 100_000)


def test_free_form_values_refuse_binary_and_extension_types():
    with pytest.raises(MessageError, match="expected a JSON value"):
        decode_frame(msgpack.packb(to_dict(COMMAND) | {"args": {"b": b"\x00"}}, use_bin_type=True))
    ext = msgpack.packb(to_dict(COMMAND) | {"args": {"x": msgpack.ExtType(5, b"hi")}})
    with pytest.raises(MessageError, match="extension type 5"):
        decode_frame(ext)
    stamp = msgpack.packb(to_dict(COMMAND) | {"args": {"t": msgpack.Timestamp(1)}})
    with pytest.raises(MessageError):
        decode_frame(stamp)


def test_sizes_are_capped_before_parsing():
    with pytest.raises(MessageError) as info:
        decode_frame(b"\x00" * (MAX_FRAME_BYTES + 1))
    assert info.value.reason == "size"
    with pytest.raises(MessageError) as info:
        decode_body("x" * (MAX_BODY_BYTES + 1))
    assert info.value.reason == "size"
    # A lying length header (an array claiming 2**32-1 elements) fails fast.
    with pytest.raises(MessageError):
        decode_frame(b"\xdd\xff\xff\xff\xff")


def test_encoding_a_body_too_large_says_what_to_do():
    big = TaskBody(job="j", stage="s", part=0, handler="h", params={"x": "y" * MAX_BODY_BYTES})
    with pytest.raises(MessageError, match="params_ref"):
        encode_body(big)


@pytest.mark.parametrize(
    "data", [b"", b"\xc1", b"\x91", b"\x81\x01\x02", b'"just text"', b"\x93\x01\x02\x03trailing"]
)
def test_garbage_frames_raise_our_error(data):
    with pytest.raises(MessageError):
        decode_frame(data)


def test_non_utf8_body_bytes_are_refused():
    with pytest.raises(MessageError, match="not UTF-8"):
        decode_body(b'{"kind":"\xff"}')
