"""Child processes for the multi-process queue tests, run as ``python children.py ROLE ...``.

Each role opens its own LocalQueue (an object never crosses processes), talks to the test
through stdin/stdout lines, and prints its findings as one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

from batchfarm.actors.backends.queue import Outgoing
from batchfarm.actors.backends.queue.local import LocalQueue


def say(line: str) -> None:
    print(line, flush=True)


def consume(db: str, name: str, pause_s: str) -> None:
    """Wait for "go", then receive and delete until the queue stays empty."""
    bodies: list[str] = []
    failed: dict[str, str] = {}
    with LocalQueue(Path(db), name) as queue:
        say("ready")
        sys.stdin.readline()
        while True:
            got = queue.receive(10, wait_s=0.5, visibility_s=60)
            if not got:
                break
            time.sleep(float(pause_s))  # "work", so the consumers overlap
            result = queue.delete_batch([m.receipt for m in got])
            failed.update(result.failed)
            bodies += [m.body for m in got]
    say(json.dumps({"bodies": bodies, "failed": failed}))


def send_loop(db: str, name: str, tag: str, log: str) -> None:
    """Send batches of 10 forever, appending each batch's number to ``log`` once sent."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with LocalQueue(Path(db), name) as queue:
        batch = 0
        while True:
            queue.send_batch([Outgoing(f"{tag}/{batch}/{i}") for i in range(10)])
            os.write(fd, f"{batch}\n".encode())
            batch += 1


def send_then_hang(db: str, name: str, body: str, durable: str = "durable") -> None:
    """Send one message, say so, and wait to be killed with the connection still open.

    ``durable`` is "durable" or "not-durable" (``send(..., durable=False)``).
    """
    queue = LocalQueue(Path(db), name)
    message_id = queue.send(body, durable=durable == "durable")
    say(message_id)
    time.sleep(120)


def take_then_hang(db: str, name: str, count: str, visibility_s: str) -> None:
    """Receive messages, report them, and wait to be killed holding them."""
    queue = LocalQueue(Path(db), name)
    got = queue.receive(int(count), visibility_s=float(visibility_s))
    say(json.dumps([m.message_id for m in got]))
    time.sleep(120)


def idle_poll(db: str, name: str, wait_s: str) -> None:
    """Long-poll an empty queue once; report the CPU time and wall time it took."""
    with LocalQueue(Path(db), name) as queue:
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        got = queue.receive(10, wait_s=float(wait_s))
        wall = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    say(json.dumps({"cpu_s": cpu, "wall_s": wall, "received": len(got)}))


def wait_one(db: str, name: str, wait_s: str) -> None:
    """Say "ready", long-poll, and report when the receive returned and what it got."""
    with LocalQueue(Path(db), name) as queue:
        say("ready")
        got = queue.receive(10, wait_s=float(wait_s))
        returned_at = time.time()
    say(json.dumps({"returned_at": returned_at, "bodies": [m.body for m in got]}))


def open_and_send(db: str, name: str, tag: str) -> None:
    """Wait for "go", then open the (maybe new) file and send one batch."""
    say("ready")
    sys.stdin.readline()
    with LocalQueue(Path(db), name) as queue:
        queue.send_batch([Outgoing(f"{tag}/{i}") for i in range(10)])
    say("done")


ROLES = {
    "consume": consume,
    "send-loop": send_loop,
    "send-then-hang": send_then_hang,
    "take-then-hang": take_then_hang,
    "idle-poll": idle_poll,
    "wait-one": wait_one,
    "open-and-send": open_and_send,
}

if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])
