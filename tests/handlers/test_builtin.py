"""The noop and checksum handlers."""

from __future__ import annotations

import hashlib
import random
import threading
import time

import pytest

from batchfarm.actors.errors import TaskCancelled, TaskError
from batchfarm.actors.handlers import builtin
from batchfarm.actors.handlers.builtin import checksum, noop


def test_noop_returns_at_once(make_ctx):
    harness = make_ctx("noop")
    started = time.monotonic()
    assert noop(harness.ctx) == {}
    assert time.monotonic() - started < 0.05


def test_noop_sleeps_reporting_progress(make_ctx):
    harness = make_ctx("noop", params={"sleep_s": 0.3})
    started = time.monotonic()
    assert noop(harness.ctx) == {}
    assert 0.3 <= time.monotonic() - started < 1.0
    assert len(harness.progress) >= 3
    assert harness.progress == sorted(harness.progress)
    assert harness.progress[-1] == 1.0


def test_noop_sleep_stops_when_cancelled(make_ctx):
    harness = make_ctx("noop", params={"sleep_s": 60})
    threading.Timer(0.2, harness.cancel.set).start()
    started = time.monotonic()
    with pytest.raises(TaskCancelled):
        noop(harness.ctx)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sleep_s": -1}, "noop: param sleep_s = -1: expected a number from 0 to 86400"),
        ({"sleep_s": "1"}, 'noop: param sleep_s = "1": expected a number'),
        ({"sleep_s": True}, "noop: param sleep_s = true: expected a number"),
        ({"sleep_s": 1e9}, "noop: param sleep_s = 1000000000.0: expected a number"),
        ({"sleep": 1}, "noop: unknown param sleep: expected only sleep_s"),
    ],
)
def test_noop_bad_params_are_permanent(make_ctx, params, message):
    with pytest.raises(TaskError) as caught:
        noop(make_ctx("noop", params=params).ctx)
    assert str(caught.value).startswith(message)
    assert caught.value.permanent is True


@pytest.fixture
def files(tmp_path):
    rng = random.Random(7)
    folder = tmp_path / "inputs"
    folder.mkdir()
    made = []
    for name, size in [("empty.bin", 0), ("one.bin", 1), ("big.bin", 10_000 * 3 + 5)]:
        path = folder / name
        path.write_bytes(rng.randbytes(size))
        made.append(path)
    return made


def test_checksum_matches_hashlib_and_streams(make_ctx, files, monkeypatch):
    # Small chunks: the big file takes four reads, each reported as progress.
    monkeypatch.setattr(builtin, "CHUNK", 10_000)
    keys = ["in/empty", "in/one", "in/big"]
    harness = make_ctx("checksum", inputs=files, keys=keys)
    meta = checksum(harness.ctx)
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    assert meta == {"sha256": dict(zip(keys, digests, strict=True)), "bytes": 30_006}
    # One report per chunk read (the empty file has none), then the final 1.0.
    done = [1, 10_001, 20_001, 30_001, 30_006, 30_006]
    assert harness.progress == pytest.approx([d / 30_006 for d in done])
    assert list(harness.ctx.output_dir.iterdir()) == []


def test_checksum_can_write_a_manifest(make_ctx, files):
    keys = ["in/a", "in/b", "in/c"]
    harness = make_ctx("checksum", params={"manifest": "SHA256SUMS"}, inputs=files, keys=keys)
    meta = checksum(harness.ctx)
    written = (harness.ctx.output_dir / "SHA256SUMS").read_text()
    assert written == "".join(f"{meta['sha256'][k]}  {k}\n" for k in keys)


def test_checksum_stops_between_chunks_when_cancelled(make_ctx, files, monkeypatch):
    monkeypatch.setattr(builtin, "CHUNK", 1000)
    calls = 0

    def cancelled() -> bool:
        nonlocal calls
        calls += 1
        return calls > 5

    harness = make_ctx("checksum", inputs=files, cancelled=cancelled)
    with pytest.raises(TaskCancelled):
        checksum(harness.ctx)
    assert 0 < harness.progress[-1] < 0.25


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"manifest": "../escape"}, 'checksum: param manifest = "../escape": expected a plain'),
        ({"manifest": 3}, "checksum: param manifest = 3: expected a plain file name"),
        ({"algorithm": "md5"}, "checksum: unknown param algorithm: expected only manifest"),
    ],
)
def test_checksum_bad_params_are_permanent(make_ctx, files, params, message):
    with pytest.raises(TaskError) as caught:
        checksum(make_ctx("checksum", params=params, inputs=files).ctx)
    assert str(caught.value).startswith(message)
    assert caught.value.permanent is True


def test_checksum_refuses_keys_that_do_not_match_the_files(make_ctx, files):
    with pytest.raises(TaskError, match="3 input keys but 2 local files"):
        checksum(make_ctx("checksum", inputs=files[:2], keys=["a", "b", "c"]).ctx)
