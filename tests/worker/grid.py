"""A small embedded grid for worker and node tests: settings, task bodies, and a driver."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from batchfarm.actors.backends import COMPLETIONS, TASKS, open_blobs, open_queue
from batchfarm.actors.backends.queue import Outgoing, TaskQueue
from batchfarm.actors.codec import decode_body, encode_body
from batchfarm.actors.messages import AbandonedRun, Completion, TaskBody
from batchfarm.actors.settings import Settings, load

HANDLERS = "tests.worker.handlers"


def make_settings(state: Path, **sections: dict[str, Any]) -> Settings:
    """Embedded settings under ``state`` with per-section overrides (quick polls by default)."""
    settings = load(None, {"BATCHFARM_GRID_STATE_DIR": str(state)}).settings
    sections.setdefault("queue", {})
    sections["queue"] = {"wait": 0.5, **sections["queue"]}
    sections.setdefault("tasks", {})
    sections["tasks"] = {"retry_backoff": 0.2, "retry_backoff_max": 1.0, **sections["tasks"]}
    changed = {
        name: replace(getattr(settings, name), **values) for name, values in sections.items()
    }
    return replace(settings, **changed)


def task(part: int, handler: str, job: str = "job1", **fields: Any) -> TaskBody:
    """A task body; ``handler`` names a test handler (``copy``) or a full name (``noop``)."""
    builtin = handler in ("noop", "checksum", "transcode")
    name = handler if ":" in handler or builtin else f"{HANDLERS}:{handler}"
    return TaskBody(job=job, stage="s1", part=part, handler=name, enqueued_at=time.time(), **fields)


def submit(
    settings: Settings,
    *tasks: TaskBody,
    inputs: dict[str, bytes] | None = None,
    queue_name: str = TASKS,
) -> None:
    """Store ``inputs`` in the blob store and send the task bodies (to ``queue_name``)."""
    blobs = open_blobs(settings.storage)
    for key, data in (inputs or {}).items():
        blobs.put(key, data)
    blobs.close()
    with open_queue(settings.queue, queue_name) as queue:
        for start in range(0, len(tasks), 10):
            queue.send_batch([Outgoing(encode_body(t)) for t in tasks[start : start + 10]])


def events(settings: Settings) -> list[Completion]:
    """Every event sent to the completion queue so far, abandoned runs included (consumed)."""
    found: list[Completion] = []
    with open_queue(settings.queue, COMPLETIONS) as queue:
        while batch := queue.receive(10, wait_s=0, visibility_s=60):
            for message in batch:
                event = decode_body(message.body)
                assert isinstance(event, Completion)
                found.append(event)
            queue.delete_batch([m.receipt for m in batch]).raise_for_failures()
    return found


def completions(settings: Settings) -> list[Completion]:
    """Every completion event with an outcome sent so far (abandoned runs read and dropped)."""
    return [e for e in events(settings) if not isinstance(e, AbandonedRun)]


class Completions:
    """Every completion event seen so far: reading the queue consumes them, this keeps them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events: list[Completion] = []

    def __call__(self) -> list[Completion]:
        self.events.extend(completions(self.settings))
        return list(self.events)


def tasks_queue(settings: Settings) -> TaskQueue:
    """The grid's task queue (close it after use)."""
    return open_queue(settings.queue, TASKS)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` until true; fail the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.02)


class Ticker:
    """Calls functions on intervals from a thread: the actor loop's timers, for core tests."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def every(self, interval: float, function: Callable[[], object]) -> None:
        def run() -> None:
            while not self._stop.wait(interval):
                function()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
