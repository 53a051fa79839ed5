"""The embedded queue's SQLite side: its schema, its statements, and opening the file in WAL.

See :mod:`.local` for the data model; every statement here runs inside its transactions.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from batchfarm.actors.backends.queue import MAX_BATCH
from batchfarm.actors.errors import QueueError

#: How long a call waits for another process's write transaction before failing.
BUSY_TIMEOUT_S = 30.0

SCHEMA = (
    """CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        max_receives INTEGER CHECK (max_receives IS NULL OR max_receives >= 1)
    ) WITHOUT ROWID""",
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        body TEXT NOT NULL,
        sent_at REAL NOT NULL,
        visible_at REAL NOT NULL,
        receive_count INTEGER NOT NULL DEFAULT 0,
        receipt INTEGER
    )""",
    # Receive takes the earliest due messages of one queue: a range scan on this index.
    "CREATE INDEX messages_due ON messages (queue, visible_at)",
)

INSERT = (
    "INSERT INTO messages (queue, message_id, body, sent_at, visible_at) VALUES (?, ?, ?, ?, ?)"
)
# The first due messages of a queue, each with the queue's stored max_receives. Claiming is
# this SELECT and then an UPDATE by id: SQLite runs that pair several times faster than
# one UPDATE ... WHERE id IN (SELECT ...).
DUE = """
    SELECT id, message_id, body, receive_count, sent_at,
           (SELECT max_receives FROM queues WHERE name = ?1)
    FROM messages WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at LIMIT ?3"""
TAKE = """
    UPDATE messages SET receive_count = receive_count + 1, visible_at = ?, receipt = ?
    WHERE id = ?"""
# A message goes to the dead-letter queue keeping its id, body, sent_at and receive count
# (SQS keeps the count too).
MOVE = "UPDATE messages SET queue = ?, visible_at = ?, receipt = NULL WHERE id = ?"
NEXT_DUE = "SELECT min(visible_at) FROM messages WHERE queue = ?"
# Delete by (id, receipt) pairs, one statement per batch size. "+queue" keeps SQLite from
# scanning the queue's index instead of looking each message up by id (it prefers the
# index once the OR has many terms).
DELETE_BY_RECEIPT = tuple(
    "DELETE FROM messages WHERE +queue = ? AND ("
    + " OR ".join(["(id = ? AND receipt = ?)"] * size)
    + ") RETURNING id, receipt"
    for size in range(MAX_BATCH + 1)
)
SET_VISIBILITY = "UPDATE messages SET visible_at = ? WHERE id = ? AND receipt = ? AND +queue = ?"
DEPTH = """
    SELECT coalesce(sum(visible_at <= :now), 0),
           coalesce(sum(visible_at > :now AND receive_count > 0), 0),
           coalesce(sum(visible_at > :now AND receive_count = 0), 0),
           (SELECT count(*) FROM messages WHERE queue = :dlq)
    FROM messages WHERE queue = :queue"""


def open_db(path: Path) -> sqlite3.Connection:
    """Connect to the file in WAL mode, or raise QueueError naming the path."""
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise QueueError(
            f"local queue {path}: cannot open ({exc}); expected a writable file path "
            "in an existing directory"
        ) from exc
    try:
        mode = set_wal(conn)
        if mode != "wal":
            raise QueueError(
                f"local queue {path}: journal mode is {mode!r}; expected 'wal' (the file "
                "system must support shared memory, as local disks do)"
            )
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error as exc:
        conn.close()
        raise QueueError(
            f"local queue {path}: cannot use the file ({exc}); expected an SQLite "
            "database made by batchfarm, or a path where one can be created"
        ) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def set_wal(conn: sqlite3.Connection) -> str:
    """Switch to WAL mode (a no-op once the file is in it); return the mode in force.

    Switching a new file takes an exclusive lock, and SQLite reports a busy file here at
    once instead of calling the busy handler, so processes opening a new file together
    retry for up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
