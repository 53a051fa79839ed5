"""Fixtures for the task-queue suites: one factory per backend, the same tests for each.

A backend joins the contract suite by adding a parameter to ``queue_factory`` and a branch
that opens its queues; the tests themselves never look at which backend they run on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchfarm.actors.backends.queue import TaskQueue
from batchfarm.actors.backends.queue.local import LocalQueue


class QueueFactory:
    """Opens handles on named queues of one backend, and closes them all at the end.

    Calling it twice with one name gives two handles on the same queue (as two processes
    would have), so tests can send through one and receive through the other.
    """

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self._tmp_path = tmp_path
        self._opened: list[TaskQueue] = []

    def __call__(self, name: str = "tasks", max_receives: int | None = 5) -> TaskQueue:
        queue = self._open(name, max_receives)
        self._opened.append(queue)
        return queue

    def _open(self, name: str, max_receives: int | None) -> TaskQueue:
        if self.backend == "local":
            return LocalQueue(self._tmp_path / "queue.db", name, max_receives=max_receives)
        raise AssertionError(f"no queue backend {self.backend!r}")

    def dead_letters(self, queue: TaskQueue) -> TaskQueue:
        """The queue's dead-letter queue, closed with the rest."""
        dlq = queue.dead_letters()
        self._opened.append(dlq)
        return dlq

    def close(self) -> None:
        for queue in self._opened:
            queue.close()


@pytest.fixture(params=["local"])
def queue_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueFactory]:
    factory = QueueFactory(request.param, tmp_path)
    yield factory
    factory.close()
