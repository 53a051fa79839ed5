"""The embedded task queue: SQS semantics on one SQLite file (``local:///path/queue.db``).

Many named queues share one database file; the dead-letter queue of ``q`` is the queue
``q-dlq`` in the same file. Any number of processes and threads on one machine may use the
file at once: every write is a short ``BEGIN IMMEDIATE`` transaction, so two consumers never
take the same message, and a process killed at any moment leaves every transaction either
committed whole or not at all.

A :class:`LocalQueue` object holds one SQLite connection. Threads may share an object (its
calls take turns); processes may not: open a :class:`LocalQueue` in each process.

Schema (``PRAGMA user_version`` = 1)::

    queues(name PRIMARY KEY, max_receives)       -- attributes every process reads
    messages(id INTEGER PRIMARY KEY, queue, message_id, body, sent_at,
             visible_at, receive_count, receipt)  -- index (queue, visible_at)

A message is *visible* when ``visible_at`` has passed; otherwise it is *delayed* if it was
never received and *in flight* if it was. A receive stamps a fresh random ``receipt`` token,
so the handle ``"<id>:<token as 16 hex digits>"`` goes stale once the message is received
again, moved to the dead-letter queue, or deleted.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from batchfarm.actors.backends.queue import (
    DLQ_SUFFIX,
    MAX_BATCH,
    BatchResult,
    Outgoing,
    QueueDepth,
    Received,
    TaskQueue,
    check_outgoing,
    check_queue_name,
    check_receipts,
    check_receive,
    check_visibility,
)
from batchfarm.actors.backends.queue.localdb import (
    DELETE_BY_RECEIPT,
    DEPTH,
    DUE,
    INSERT,
    MOVE,
    NEXT_DUE,
    SCHEMA,
    SET_VISIBILITY,
    TAKE,
    open_db,
)
from batchfarm.actors.errors import QueueError

_T = TypeVar("_T")

#: How often an idle long poll checks whether another connection committed. A check is
#: one ``PRAGMA data_version`` (a counter read, no table access), so waiting costs next
#: to no CPU, and a send wakes a poller within one interval.
POLL_INTERVAL_S = 0.025
SCHEMA_VERSION = 1
#: Most messages :meth:`LocalQueue.send_all` commits in one transaction: a few milliseconds
#: of holding the write lock, which consumers meanwhile wait out.
SEND_ALL_ROWS = 1000

# Receive counts never reach this; it stands for "no dead-letter queue" in comparisons.
_NO_LIMIT = 1 << 62
# Receipt tokens are 63-bit, to fit SQLite's signed 64-bit integers.
_TOKEN_SPAN = 1 << 63
_RECEIPT = re.compile(r"([0-9]{1,18}):([0-9a-f]{16})")
# A random hex digit -> a random UUID variant digit (binary 10xx).
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


class LocalQueue(TaskQueue):
    """One named queue in an SQLite file, with the :class:`TaskQueue` contract.

    ``max_receives`` is stored in the file, and every receive in every process reads the
    stored value: the last process to open the queue sets it for all. ``None`` means no
    dead-letter queue.

    Durability: sends commit with ``synchronous=FULL`` (the WAL is fsynced), so a send that
    returned survives a crash of any process and a power loss. Receives, deletes and
    visibility changes commit with ``synchronous=NORMAL``: they survive any process crash,
    and a power loss can at most undo the last few of them, which only redelivers a message
    (delivery is at least once anyway) and never loses one. This keeps consumers free of
    an fsync per call.

    ``send_batch(..., durable=False)`` commits with ``synchronous=NORMAL`` too. What a power
    loss undoes is always a suffix of the file's commits, whichever queue and process made
    them: every queue in the file shares one write-ahead log and commits append to it one
    at a time; a frame counts only if its salt matches the log's header and its checksum,
    which runs over every frame before it, holds; recovery replays frames from the start
    up to the last commit before the first frame that fails; and a checkpoint fsyncs the
    log before copying it into the database. So a non-durable send is lost only together
    with every later commit: the delete of a task's message never outlives the completion
    event the worker sent before it, and a durable send makes every earlier one durable.
    """

    def __init__(self, path: Path | str, name: str, max_receives: int | None = 5) -> None:
        _check_name(name)
        if max_receives is not None and (
            isinstance(max_receives, bool) or not isinstance(max_receives, int) or max_receives < 1
        ):
            raise QueueError(
                f"queue {name!r}: max_receives {max_receives!r}; expected an integer >= 1 or None"
            )
        self.path = Path(path)
        self.name = name
        self.max_receives = max_receives
        self._dlq_name = name + DLQ_SUFFIX
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # Counts this object's own commits: PRAGMA data_version only sees other connections',
        # so a thread long-polling on a shared object watches this too.
        self._own_commits = 0
        self._conn: sqlite3.Connection | None = open_db(self.path)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        def setup(conn: sqlite3.Connection) -> None:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise QueueError(
                    f"local queue {self.path}: schema version {version}; expected "
                    f"{SCHEMA_VERSION} (the file was written by another batchfarm version)"
                )
            conn.execute(
                "INSERT INTO queues (name, max_receives) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET max_receives = excluded.max_receives",
                (self.name, self.max_receives),
            )

        self._write("open", setup)

    def __repr__(self) -> str:
        return f"LocalQueue({str(self.path)!r}, {self.name!r}, max_receives={self.max_receives})"

    # -- the contract ------------------------------------------------------------------------

    def send_batch(self, messages: Sequence[Outgoing], *, durable: bool = True) -> list[str]:
        """Send up to 10 messages in one transaction; return their ids.

        The transaction is fsynced unless ``durable`` is False (see the class docstring).
        """
        check_outgoing(messages)
        now = time.time()
        ids = _message_ids(len(messages))
        rows = [
            (self.name, message_id, message.body, now, now + message.delay_s)
            for message_id, message in zip(ids, messages, strict=True)
        ]
        self._insert("send_batch", rows, durable=durable)
        return ids

    def send_all(self, messages: Sequence[Outgoing]) -> list[str]:
        """Send any number of messages; return their ids in order (see :meth:`TaskQueue.send_all`).

        Up to :data:`SEND_ALL_ROWS` messages go in one transaction rather than 10, so a large
        job's bodies take few turns at the file's write lock (each turn another process holds
        it costs a wait of a millisecond or more); only the last transaction is fsynced.
        """
        for start in range(0, len(messages), MAX_BATCH):
            check_outgoing(messages[start : start + MAX_BATCH])
        now = time.time()
        ids = _message_ids(len(messages))
        rows = [
            (self.name, message_id, message.body, now, now + message.delay_s)
            for message_id, message in zip(ids, messages, strict=True)
        ]
        for start in range(0, len(rows), SEND_ALL_ROWS):
            last = start + SEND_ALL_ROWS >= len(rows)
            self._insert("send_all", rows[start : start + SEND_ALL_ROWS], durable=last)
        return ids

    def _insert(
        self, call: str, rows: list[tuple[str, str, str, float, float]], durable: bool
    ) -> None:
        """Insert message rows in one transaction, fsynced if ``durable``."""
        self._write(call, lambda conn: conn.executemany(INSERT, rows), durable=durable)

    def receive(
        self, max_messages: int = 1, wait_s: float = 0.0, visibility_s: float = 30.0
    ) -> list[Received]:
        """Take up to ``max_messages`` due messages, long-polling up to ``wait_s`` seconds.

        Messages already received ``max_receives`` times are moved to the dead-letter queue
        on the way instead of being returned.
        """
        check_receive(max_messages, wait_s, visibility_s)
        deadline = time.monotonic() + wait_s
        while True:
            # Read the change counters before looking, so a send that lands between the
            # look and the wait still wakes the wait.
            seen = self._change_marks() if wait_s > 0 else (0, 0)
            received, next_due = self._claim(max_messages, visibility_s)
            if received or wait_s <= 0:
                return received
            if not self._wait_for_due(seen, next_due, deadline):
                return []

    def delete_batch(self, receipts: Sequence[str]) -> BatchResult:
        """Delete up to 10 messages; stale or malformed receipts are reported, not applied."""
        check_receipts("delete_batch", len(receipts))
        keys, failed = _parse_receipts("delete_batch", receipts)
        ok: set[str] = set()
        if keys:
            params: list[object] = [self.name]
            for key in keys.values():
                params += key
            sql = DELETE_BY_RECEIPT[len(keys)]
            deleted = set(
                self._write("delete_batch", lambda conn: conn.execute(sql, params).fetchall())
            )
            ok = {receipt for receipt, key in keys.items() if key in deleted}
        return _result(receipts, ok, failed)

    def change_visibility_batch(self, changes: Sequence[tuple[str, float]]) -> BatchResult:
        """Hide each message for the given seconds from now; 0 hands it back at once."""
        check_receipts("change_visibility_batch", len(changes))
        for _, seconds in changes:
            check_visibility("change_visibility_batch", seconds)
        keys, failed = _parse_receipts("change_visibility_batch", [r for r, _ in changes])
        seconds_by_receipt = dict(changes)
        ok: set[str] = set()
        if keys:

            def change(conn: sqlite3.Connection) -> None:
                now = time.time()
                for receipt, (row_id, token) in keys.items():
                    until = now + seconds_by_receipt[receipt]
                    cursor = conn.execute(SET_VISIBILITY, (until, row_id, token, self.name))
                    if cursor.rowcount == 1:
                        ok.add(receipt)

            self._write("change_visibility_batch", change)
        return _result([r for r, _ in changes], ok, failed)

    def depth(self) -> QueueDepth:
        """Count visible, in-flight, delayed and dead-lettered messages (one snapshot)."""
        params = {"now": time.time(), "queue": self.name, "dlq": self._dlq_name}
        row = self._read("depth", DEPTH, params)
        visible, in_flight, delayed, dead = (int(n) for n in row)
        return QueueDepth(visible=visible, in_flight=in_flight, delayed=delayed, dead=dead)

    def purge(self) -> None:
        """Delete every message in this queue (its dead-letter queue keeps its own)."""
        self._write(
            "purge", lambda conn: conn.execute("DELETE FROM messages WHERE queue = ?", (self.name,))
        )

    def dead_letters(self) -> LocalQueue:
        """This queue's dead-letter queue (``<name>-dlq``, no DLQ of its own), newly opened."""
        return LocalQueue(self.path, self._dlq_name, max_receives=None)

    def close(self) -> None:
        """Close the connection; further calls raise :class:`QueueError`. Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    # -- receiving ---------------------------------------------------------------------------

    def _claim(self, max_messages: int, visibility_s: float) -> tuple[list[Received], float | None]:
        """Take due messages; with none, also say when the earliest hidden one is due."""
        taken: dict[int, tuple[Any, ...]] = {}
        # Drawn before the transaction (the write lock is held for SQL only), one per
        # message that may be taken; zips below stop at the messages actually taken.
        tokens = _random_tokens(max_messages)

        def claim(conn: sqlite3.Connection) -> float | None:
            now = time.time()
            while True:
                due = conn.execute(DUE, (self.name, now, max_messages)).fetchall()
                limit = _NO_LIMIT if not due or due[0][5] is None else int(due[0][5])
                exhausted = [(self._dlq_name, now, row[0]) for row in due if row[3] >= limit]
                if exhausted:
                    conn.executemany(MOVE, exhausted)
                for row in due:
                    if row[3] < limit and len(taken) < max_messages:
                        taken.setdefault(row[0], row)
                # Moving messages out lets later ones move up: look again only then.
                if not exhausted or len(taken) == max_messages or len(due) < max_messages:
                    break
            if not taken:
                next_due: float | None = conn.execute(NEXT_DUE, (self.name,)).fetchone()[0]
                return next_due
            until = now + visibility_s
            conn.executemany(
                TAKE,
                [(until, token, row_id) for row_id, token in zip(taken, tokens, strict=False)],
            )
            return None

        next_due = self._write("receive", claim)
        received = [
            Received(
                message_id=row[1],
                body=row[2],
                receipt=f"{row[0]}:{token:016x}",
                receive_count=row[3] + 1,
                sent_at=row[4],
            )
            for row, token in zip(taken.values(), tokens, strict=False)
        ]
        return received, next_due

    def _change_marks(self) -> tuple[int, int]:
        """What moves when anyone commits: SQLite's data_version and our own commit count."""
        return int(self._read("receive", "PRAGMA data_version", ())[0]), self._own_commits

    def _wait_for_due(self, seen: tuple[int, int], next_due: float | None, deadline: float) -> bool:
        """Sleep until a message may be due; False once ``deadline`` passes first.

        Wakes when another connection commits (then looks, cheaply, whether this queue has
        a due message) or when the earliest hidden or delayed message comes due.
        """
        while True:
            left = deadline - time.monotonic()
            if next_due is not None:
                until_due = next_due - time.time()
                if until_due <= 0:
                    return True
                left_tick = min(POLL_INTERVAL_S, until_due, left)
            else:
                left_tick = min(POLL_INTERVAL_S, left)
            if left <= 0:
                return False
            # Sleep without the lock so threads sharing this object keep working.
            time.sleep(left_tick)
            marks = self._change_marks()
            if marks != seen:
                seen = marks
                next_due = self._read("receive", NEXT_DUE, (self.name,))[0]

    # -- connection handling -----------------------------------------------------------------

    def _live(self, call: str) -> sqlite3.Connection:
        """The open connection, if this object may use it here and now."""
        conn = self._conn
        if conn is None:
            raise QueueError(f"{call}: {self!r} is closed")
        if os.getpid() != self._pid:
            raise QueueError(
                f"{call}: {self!r} was opened in process {self._pid}, not this one "
                f"({os.getpid()}); open a LocalQueue in each process"
            )
        return conn

    def _error(self, call: str, exc: sqlite3.Error) -> QueueError:
        return QueueError(f"{call} on local queue {self.path} ({self.name}): {exc}")

    def _read(self, call: str, sql: str, params: Sequence[object] | dict[str, object]) -> Any:
        """One row of a read-only statement (its own snapshot)."""
        with self._lock:
            conn = self._live(call)
            try:
                return conn.execute(sql, params).fetchone()
            except sqlite3.Error as exc:
                raise self._error(call, exc) from exc

    def _write(
        self, call: str, work: Callable[[sqlite3.Connection], _T], durable: bool = False
    ) -> _T:
        """Run ``work`` in a write transaction that takes the write lock up front.

        ``BEGIN IMMEDIATE`` means a transaction that reads then writes never meets another
        writer's commit in between (SQLite would fail it at once, without waiting), and two
        consumers never claim the same message. A plain method, not a context manager:
        this is every call's hot path.
        """
        with self._lock:
            conn = self._live(call)
            try:
                if durable:
                    conn.execute("PRAGMA synchronous = FULL")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
                finally:
                    if durable:
                        conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error as exc:
                raise self._error(call, exc) from exc
            self._own_commits += 1
            return result


def _check_name(name: str) -> None:
    # A dead-letter queue's name may run 4 characters past the limit on queue names.
    if isinstance(name, str) and name.endswith(DLQ_SUFFIX) and len(name) > len(DLQ_SUFFIX):
        check_queue_name(name[: -len(DLQ_SUFFIX)])
    else:
        check_queue_name(name)


def _parse_receipts(
    call: str, receipts: Sequence[str]
) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Split receipts into well-formed ones, as {receipt: (row id, token)}, and malformed."""
    if len(set(receipts)) != len(receipts):
        raise QueueError(f"{call}: a receipt appears twice; expected distinct receipts")
    keys: dict[str, tuple[int, int]] = {}
    failed: dict[str, str] = {}
    for receipt in receipts:
        key = _parse_receipt(receipt)
        if key is None:
            failed[receipt] = "invalid"
        else:
            keys[receipt] = key
    return keys, failed


def _parse_receipt(receipt: object) -> tuple[int, int] | None:
    match = _RECEIPT.fullmatch(receipt) if isinstance(receipt, str) else None
    if match is None:
        return None
    token = int(match[2], 16)
    return (int(match[1]), token) if token < _TOKEN_SPAN else None


def _message_ids(count: int) -> list[str]:
    """Random version-4 UUIDs, as SQS's message ids are.

    One OS call for the batch: ``uuid.uuid4()`` makes one per id and costs more than the
    rest of a send's Python work together.
    """
    digits = os.urandom(16 * count).hex()
    ids = []
    for at in range(0, 32 * count, 32):
        h = digits[at : at + 32]
        # RFC 4122: version 4 in the 13th digit, variant 10xx in the 17th.
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}")
    return ids


def _random_tokens(count: int) -> list[int]:
    """Fresh 63-bit receipt tokens.

    They tell one receive of a message from the next, they guard nothing secret (whoever
    can read the file can do anything to it). The module-level generator is reseeded in
    every forked child, so two processes never draw the same sequence.
    """
    return [random.getrandbits(63) for _ in range(count)]


def _result(receipts: Sequence[str], ok: set[str], failed: dict[str, str]) -> BatchResult:
    if len(ok) == len(receipts):
        return BatchResult(ok=tuple(receipts))
    for receipt in receipts:
        if receipt not in ok and receipt not in failed:
            failed[receipt] = "stale"
    return BatchResult(
        ok=tuple(r for r in receipts if r in ok),
        failed={r: failed[r] for r in receipts if r in failed},
    )
