"""The embedded queue under real processes: concurrent consumers, kill -9, idle long polls.

Each child is a fresh interpreter running ``children.py`` with its own LocalQueue.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchfarm.actors.backends.queue import Outgoing, QueueDepth
from batchfarm.actors.backends.queue.local import LocalQueue

CHILDREN = Path(__file__).with_name("children.py")
EMPTY = QueueDepth(visible=0, in_flight=0, delayed=0, dead=0)


@contextlib.contextmanager
def child(*args: object) -> Iterator[subprocess.Popen[str]]:
    """Run a child role; whatever happens, it is killed (if still running) and reaped."""
    with subprocess.Popen(
        [sys.executable, str(CHILDREN), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"child {proc.args} exited early with {proc.wait()}"
    return line.strip()


def kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()  # SIGKILL: no cleanup, no atexit, no sqlite3 close
    proc.wait()


def go(procs: list[subprocess.Popen[str]]) -> None:
    """Wait until every child is ready, then release them all at once."""
    for proc in procs:
        assert read_line(proc) == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def drain(queue: LocalQueue) -> list[str]:
    bodies = []
    while got := queue.receive(10, visibility_s=60):
        queue.delete_batch([m.receipt for m in got]).raise_for_failures()
        bodies += [m.body for m in got]
    return bodies


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


def test_concurrent_consumers_take_each_message_exactly_once(db):
    sent = [f"m{i}" for i in range(600)]
    with LocalQueue(db, "work") as queue:
        for start in range(0, len(sent), 10):
            queue.send_batch([Outgoing(b) for b in sent[start : start + 10]])

    with contextlib.ExitStack() as stack:
        consumers = [stack.enter_context(child("consume", db, "work", 0.005)) for _ in range(3)]
        go(consumers)
        reports = [json.loads(read_line(proc)) for proc in consumers]

    received = Counter(body for report in reports for body in report["bodies"])
    assert sorted(received) == sorted(sent)
    assert max(received.values()) == 1, "a message was delivered twice"
    assert all(report["failed"] == {} for report in reports)
    assert sum(1 for report in reports if report["bodies"]) >= 2, "consumers never overlapped"
    with LocalQueue(db, "work") as queue:
        assert queue.depth() == EMPTY


def test_a_sender_killed_mid_batch_leaves_whole_batches(db, tmp_path):
    rng = random.Random(20240611)
    with LocalQueue(db, "batches") as queue:
        for round_ in range(6):
            log = tmp_path / f"sent-{round_}.log"
            log.touch()
            with child("send-loop", db, "batches", f"r{round_}", log) as sender:
                deadline = time.monotonic() + 30
                while log.stat().st_size == 0:  # it has sent at least one batch
                    assert sender.poll() is None, "sender died on its own"
                    assert time.monotonic() < deadline, "sender never sent"
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.05))
                kill(sender)

            reported = {int(line) for line in log.read_text().split()}
            per_batch = Counter(body.rsplit("/", 1)[0] for body in drain(queue))
            assert set(per_batch.values()) == {10}, f"round {round_}: a batch was split"
            present = {int(key.split("/")[1]) for key in per_batch}
            assert all(key.startswith(f"r{round_}/") for key in per_batch)
            assert reported <= present, f"round {round_}: a reported batch was lost"
            # Only the batch in progress at the kill may be present without a report.
            assert len(present - reported) <= 1
            assert queue.depth() == EMPTY
    assert integrity(db) == "ok"


@pytest.mark.parametrize("durable", ["durable", "not-durable"])
def test_a_committed_send_survives_kill_9_of_its_process(db, durable):
    # Only a power loss may undo a send that was not durable, never a crashed process.
    with child("send-then-hang", db, "durable", "keep me", durable) as sender:
        message_id = read_line(sender)
        kill(sender)
    with LocalQueue(db, "durable") as queue:
        (got,) = queue.receive(10)
        assert (got.message_id, got.body, got.receive_count) == (message_id, "keep me", 1)
    assert integrity(db) == "ok"


def test_messages_held_by_a_killed_consumer_come_back_after_their_visibility(db):
    with LocalQueue(db, "held") as queue:
        queue.send_batch([Outgoing(str(i)) for i in range(5)])
        with child("take-then-hang", db, "held", 5, 1.0) as consumer:
            taken = json.loads(read_line(consumer))
            kill(consumer)
        assert len(taken) == 5
        assert queue.receive(10) == []
        back = queue.receive(10, wait_s=5, visibility_s=60)
        assert sorted(m.message_id for m in back) == sorted(taken)
        assert {m.receive_count for m in back} == {2}


def test_a_long_poll_wakes_soon_after_another_process_sends(db):
    with LocalQueue(db, "wake") as queue, child("wait-one", db, "wake", 5) as waiter:
        assert read_line(waiter) == "ready"
        time.sleep(0.3)  # let it settle into its wait
        sent_at = time.time()
        queue.send("ping")
        report = json.loads(read_line(waiter))
    assert report["bodies"] == ["ping"]
    assert report["returned_at"] - sent_at < 1.0


def test_an_idle_long_poll_costs_almost_no_cpu(db):
    with LocalQueue(db, "idle"), child("idle-poll", db, "idle", 3) as poller:
        report = json.loads(read_line(poller))
    assert report["received"] == 0
    assert report["wall_s"] >= 2.9
    assert report["cpu_s"] / report["wall_s"] < 0.05, report


def test_processes_opening_a_new_file_at_once_all_succeed(db):
    with contextlib.ExitStack() as stack:
        senders = [stack.enter_context(child("open-and-send", db, "fresh", i)) for i in range(4)]
        go(senders)
        assert [read_line(proc) for proc in senders] == ["done"] * 4
    with LocalQueue(db, "fresh") as queue:
        assert len(drain(queue)) == 40
