"""The three queues the queue benchmark compares, behind one small adapter each.

- ``batchfarm``: :class:`LocalQueue`, as the grid uses it.
- ``raw``: the medium's floor. Plain SQLite on a minimal table (id, body, visible_at and an
  index on visible_at), doing what a queue must in the same transactions as LocalQueue: one
  ``BEGIN IMMEDIATE`` transaction per send batch, one to claim a batch (SELECT the first
  due rows, UPDATE their visible_at), one to delete it. Same pragmas: WAL, the same busy
  timeout, ``synchronous=FULL`` for sends and ``NORMAL`` for consumers.
- ``peer``: persist-queue's ``SQLiteAckQueue`` in its fastest configuration for this work
  at the same durability: sends as ``put`` (it has no batch put; each is one FULL commit,
  SQLite's default), ``get`` + ``ack`` on consumer connections switched to
  ``synchronous=NORMAL`` (as LocalQueue's consumers are), and acked rows cleared after
  each batch (otherwise every ``get`` rescans all acked rows).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

from batchfarm.actors.backends.queue import Outgoing
from batchfarm.actors.backends.queue.local import LocalQueue
from batchfarm.actors.backends.queue.localdb import BUSY_TIMEOUT_S

SYSTEMS = ("batchfarm", "raw", "peer")
QUEUE_NAME = "bench"
VISIBILITY_S = 60.0


class Adapter(Protocol):
    """What the benchmark does with a queue: send 10, take up to 10, acknowledge them."""

    def send_batch(self, bodies: list[str]) -> None: ...

    def take(self, count: int) -> list[tuple[Any, str]]:
        """Up to ``count`` (handle, body) pairs; an empty list when the queue is drained."""
        ...

    def ack(self, handles: list[Any]) -> None: ...

    def close(self) -> None: ...


class BatchfarmAdapter:
    def __init__(self, directory: Path, consumer: bool) -> None:
        self.queue = LocalQueue(directory / "queue.db", QUEUE_NAME)

    def send_batch(self, bodies: list[str]) -> None:
        self.queue.send_batch([Outgoing(body) for body in bodies])

    def take(self, count: int) -> list[tuple[Any, str]]:
        got = self.queue.receive(count, wait_s=0, visibility_s=VISIBILITY_S)
        return [(m.receipt, m.body) for m in got]

    def ack(self, handles: list[Any]) -> None:
        self.queue.delete_batch(handles).raise_for_failures()

    def close(self) -> None:
        self.queue.close()


class RawAdapter:
    def __init__(self, directory: Path, consumer: bool) -> None:
        self.conn = sqlite3.connect(
            directory / "raw.db", timeout=BUSY_TIMEOUT_S, isolation_level=None
        )
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {'NORMAL' if consumer else 'FULL'}")
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS q "
            "(id INTEGER PRIMARY KEY, body TEXT NOT NULL, visible_at REAL NOT NULL)"
        )
        self.conn.execute("CREATE INDEX IF NOT EXISTS q_due ON q (visible_at)")
        self.conn.execute("COMMIT")

    def send_batch(self, bodies: list[str]) -> None:
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT INTO q (body, visible_at) VALUES (?, ?)", [(b, now) for b in bodies]
        )
        self.conn.execute("COMMIT")

    def take(self, count: int) -> list[tuple[Any, str]]:
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        rows: list[tuple[int, str]] = self.conn.execute(
            "SELECT id, body FROM q WHERE visible_at <= ? ORDER BY visible_at LIMIT ?",
            (now, count),
        ).fetchall()
        self.conn.executemany(
            "UPDATE q SET visible_at = ? WHERE id = ?",
            [(now + VISIBILITY_S, row_id) for row_id, _ in rows],
        )
        self.conn.execute("COMMIT")
        return list(rows)

    def ack(self, handles: list[Any]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        marks = ", ".join("?" * len(handles))
        self.conn.execute(f"DELETE FROM q WHERE id IN ({marks})", handles)
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class PeerAdapter:
    def __init__(self, directory: Path, consumer: bool) -> None:
        import persistqueue

        self._empty = persistqueue.Empty
        self.queue = persistqueue.SQLiteAckQueue(
            str(directory / "peer"), name=QUEUE_NAME, multithreading=False, auto_resume=False
        )
        if consumer:
            # Its one connection; it has no option for this (SQLite's default is FULL).
            self.queue._conn.execute("PRAGMA synchronous = NORMAL")

    def send_batch(self, bodies: list[str]) -> None:
        for body in bodies:
            self.queue.put(body)

    def take(self, count: int) -> list[tuple[Any, str]]:
        got: list[tuple[Any, str]] = []
        for _ in range(count):
            try:
                item = self.queue.get(block=False, raw=True)
            except self._empty:
                break
            got.append((item["pqid"], item["data"]))
        return got

    def ack(self, handles: list[Any]) -> None:
        for pqid in handles:
            self.queue.ack(id=pqid)
        self.queue.clear_acked_data(max_delete=None, keep_latest=None)

    def close(self) -> None:
        self.queue.close()


def open_adapter(system: str, directory: Path, consumer: bool) -> Adapter:
    """Open ``system``'s queue in ``directory`` as a sender or a consumer."""
    adapters: dict[str, type[BatchfarmAdapter | RawAdapter | PeerAdapter]] = {
        "batchfarm": BatchfarmAdapter,
        "raw": RawAdapter,
        "peer": PeerAdapter,
    }
    return adapters[system](directory, consumer)
