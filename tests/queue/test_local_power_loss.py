"""A power loss undoes a suffix of the embedded queue file's commits, never an earlier one alone.

The worker relies on it: it sends a run's completion event without an fsync
(``send(..., durable=False)``), then deletes the task's message, in the same file. Here the
states a power loss could leave are made by hand: the write-ahead log as the queue wrote it,
with one frame damaged, as when the operating system had not yet written that page back
(whichever order it wrote the others in). Whichever frame it is, no task's message is gone
while the completion event sent before its delete is missing.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

from batchfarm.actors.backends.queue import Outgoing
from batchfarm.actors.backends.queue.local import LocalQueue

COUNT = 6
WAL_HEADER = 32
FRAME_HEADER = 24


def after_power_loss(
    db: bytes, wal: bytes, damaged: int | None, folder: Path
) -> dict[str, set[str]]:
    """The bodies in each queue once the file is opened again, log frame ``damaged`` spoilt."""
    (page_size,) = struct.unpack(">I", wal[8:12])
    log = bytearray(wal)
    if damaged is not None:
        at = WAL_HEADER + damaged * (FRAME_HEADER + page_size) + FRAME_HEADER
        log[at : at + 16] = bytes(b ^ 0xFF for b in log[at : at + 16])
    folder.mkdir()
    (folder / "queue.db").write_bytes(db)
    (folder / "queue.db-wal").write_bytes(bytes(log))
    conn = sqlite3.connect(folder / "queue.db")  # no -shm file: SQLite recovers from the log
    try:
        rows = conn.execute("SELECT queue, body FROM messages").fetchall()
    finally:
        conn.close()
    held: dict[str, set[str]] = {"tasks": set(), "completions": set()}
    for queue, body in rows:
        held[queue].add(body)
    return held


def test_a_delete_never_outlives_the_completion_sent_before_it(tmp_path):
    path = tmp_path / "queue.db"
    names = [f"task-{i}" for i in range(COUNT)]
    with LocalQueue(path, "tasks") as tasks, LocalQueue(path, "completions") as events:
        tasks.send_all([Outgoing(name) for name in names])
        # Start the log afresh, so that every frame in it is one of the settles below.
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        for message in tasks.receive(COUNT, visibility_s=600):
            events.send(f"done {message.body}", durable=False)
            tasks.delete(message.receipt)
        # Read while the queues are open: closing the last one checkpoints the log away.
        db, wal = path.read_bytes(), path.with_name("queue.db-wal").read_bytes()
    (page_size,) = struct.unpack(">I", wal[8:12])
    frames = (len(wal) - WAL_HEADER) // (FRAME_HEADER + page_size)
    assert frames >= 2 * COUNT  # at least a frame per commit

    whole = after_power_loss(db, wal, None, tmp_path / "whole")
    assert whole == {"tasks": set(), "completions": {f"done {name}" for name in names}}
    settled_counts = set()
    for damaged in range(frames):
        held = after_power_loss(db, wal, damaged, tmp_path / f"damaged-{damaged}")
        for name in names:
            if name not in held["tasks"]:
                assert f"done {name}" in held["completions"], f"frame {damaged}: {name}"
        settled_counts.add(len(held["completions"]))
    # The damage fell at every point of the sequence: from nothing settled to all but one.
    assert settled_counts >= set(range(COUNT))
