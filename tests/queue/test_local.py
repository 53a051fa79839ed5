"""What only the embedded queue has: its file, its stored attributes, its handles and threads."""

from __future__ import annotations

import os
import pickle
import sqlite3
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest

from batchfarm.actors.backends.queue import Outgoing
from batchfarm.actors.backends.queue.local import SCHEMA_VERSION, LocalQueue
from batchfarm.actors.errors import QueueError


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


# -- the file --------------------------------------------------------------------------------


def test_a_path_in_a_missing_directory_is_a_clear_error(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "queue.db"
    with pytest.raises(QueueError, match="cannot open") as caught:
        LocalQueue(path, "tasks")
    assert str(path) in str(caught.value)


def test_a_directory_as_the_path_is_a_clear_error(tmp_path):
    with pytest.raises(QueueError) as caught:
        LocalQueue(tmp_path, "tasks")
    assert str(tmp_path) in str(caught.value)


def test_a_file_that_is_not_a_database_is_a_clear_error(db):
    db.write_bytes(b"this is not an SQLite database, just some text. " * 200)
    with pytest.raises(QueueError, match="expected an SQLite database") as caught:
        LocalQueue(db, "tasks")
    assert str(db) in str(caught.value)


def test_a_file_from_a_newer_schema_is_refused(db):
    LocalQueue(db, "tasks").close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(QueueError, match="schema version"):
        LocalQueue(db, "tasks")


def test_the_file_is_in_wal_mode_and_holds_many_queues(db):
    with LocalQueue(db, "one") as one, LocalQueue(db, "two") as two:
        one.send("1")
        two.send_batch([Outgoing("2"), Outgoing("2")])
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        counts = dict(conn.execute("SELECT queue, count(*) FROM messages GROUP BY queue"))
    finally:
        conn.close()
    assert counts == {"one": 1, "two": 2}


def test_message_ids_are_distinct_version_4_uuids(db):
    with LocalQueue(db, "tasks") as queue:
        ids = [i for _ in range(50) for i in queue.send_batch([Outgoing("x")] * 10)]
    assert len(set(ids)) == 500
    for message_id in ids:
        parsed = uuid.UUID(message_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, message_id)


# -- attributes ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "3"])
def test_max_receives_must_be_a_positive_integer_or_none(db, bad):
    with pytest.raises(QueueError, match="max_receives"):
        LocalQueue(db, "tasks", max_receives=bad)


def test_the_last_opener_sets_max_receives_for_every_handle(db):
    with LocalQueue(db, "q", max_receives=1) as early:
        early.send("m")
        with LocalQueue(db, "q", max_receives=3):
            # The early handle now follows the stored 3, not its own 1.
            for expected_count in (1, 2, 3):
                (got,) = early.receive(visibility_s=30)
                assert got.receive_count == expected_count
                early.change_visibility(got.receipt, 0)
            assert early.receive() == []
            assert early.depth().dead == 1


def test_a_dead_letter_queue_may_be_four_characters_longer_than_a_name(db):
    name = "n" * 76
    with LocalQueue(db, name, max_receives=1) as queue, queue.dead_letters() as dlq:
        assert dlq.name == name + "-dlq"
        assert dlq.max_receives is None


# -- handles ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "receipt",
    [
        "",
        "1",
        "1:",
        ":0000000000000000",
        "x:0000000000000000",
        "1:000000000000000g",
        "1:00000000000000000",
        "1:ffffffffffffffff",
        "\u0661:0000000000000000",  # an Arabic-Indic digit one
    ],
)
def test_malformed_receipts_are_reported_invalid(db, receipt):
    with LocalQueue(db, "tasks") as queue:
        queue.send("x")
        assert queue.delete_batch([receipt]).failed == {receipt: "invalid"}
        assert queue.change_visibility_batch([(receipt, 0)]).failed == {receipt: "invalid"}
        assert queue.depth().visible == 1


def test_a_receipt_twice_in_one_batch_is_refused(db):
    with LocalQueue(db, "tasks") as queue:
        queue.send("x")
        (got,) = queue.receive()
        with pytest.raises(QueueError, match="twice"):
            queue.delete_batch([got.receipt, got.receipt])
        assert queue.depth().in_flight == 1


def test_a_closed_queue_refuses_calls_and_closes_twice(db):
    queue = LocalQueue(db, "tasks")
    queue.close()
    queue.close()
    with pytest.raises(QueueError, match="closed"):
        queue.send("x")


def test_a_queue_cannot_be_sent_to_another_process(db):
    with LocalQueue(db, "tasks") as queue, pytest.raises(QueueError, match="each process"):
        pickle.dumps(queue)


def test_a_queue_used_after_fork_refuses(db, monkeypatch):
    with LocalQueue(db, "tasks") as queue:
        real_pid = os.getpid()
        monkeypatch.setattr(os, "getpid", lambda: real_pid + 1)
        with pytest.raises(QueueError, match="each process"):
            queue.depth()


def test_threads_sharing_one_handle_take_each_message_once(db):
    sent = [f"m{i}" for i in range(400)]
    received: list[str] = []
    errors: list[BaseException] = []
    with LocalQueue(db, "shared") as queue:

        def produce(part: list[str]) -> None:
            for start in range(0, len(part), 10):
                queue.send_batch([Outgoing(b) for b in part[start : start + 10]])

        def consume() -> None:
            try:
                while got := queue.receive(10, wait_s=0.5, visibility_s=60):
                    queue.delete_batch([m.receipt for m in got]).raise_for_failures()
                    received.extend(m.body for m in got)
            except BaseException as exc:  # noqa: BLE001 - reported to the test thread
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(sent[i::2],)) for i in range(2)]
        threads += [threading.Thread(target=consume) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    counts = Counter(received)
    assert sorted(counts) == sorted(sent)
    assert max(counts.values()) == 1
