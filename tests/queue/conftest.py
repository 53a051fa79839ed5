"""Fixtures for the task-queue suites: one factory per backend, the same tests for each.

A backend joins the contract suite by adding a parameter to ``queue_factory`` and a branch
that opens its queues; the tests themselves never look at which backend they run on, only
at what it documents (``QueueFactory.detects_stale_receipts``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchfarm.actors.backends.queue import TaskQueue
from batchfarm.actors.backends.queue.local import LocalQueue
from batchfarm.actors.backends.queue.sqs import SqsQueue
from tests.aws import REGION, MotoServer, unique_name


class QueueFactory:
    """Opens handles on named queues of one backend, and closes them all at the end.

    Calling it twice with one name gives two handles on the same queue (as two processes
    would have), so tests can send through one and receive through the other.
    """

    def __init__(self, backend: str, tmp_path: Path, moto: MotoServer | None = None) -> None:
        self.backend = backend
        self._tmp_path = tmp_path
        self._moto = moto
        # A fresh prefix per test: moto keeps every queue for the session, and slows down
        # as queues fill, so no test sees another's messages or pays for them.
        self._prefix = unique_name("bf")
        self._opened: list[TaskQueue] = []
        #: Whether a delete or visibility change through a stale receipt is always reported
        #: and never applied. AWS documents that SQS may accept one ("the request will
        #: succeed, but the message might not be deleted"), and moto even applies it.
        self.detects_stale_receipts = backend != "sqs"

    def __call__(self, name: str = "tasks", max_receives: int | None = 5) -> TaskQueue:
        queue = self._open(name, max_receives)
        self._opened.append(queue)
        return queue

    def _open(self, name: str, max_receives: int | None) -> TaskQueue:
        if self.backend == "local":
            return LocalQueue(self._tmp_path / "queue.db", name, max_receives=max_receives)
        if self.backend == "sqs":
            assert self._moto is not None
            return SqsQueue(
                self._prefix,
                name,
                max_receives=max_receives,
                region=REGION,
                endpoint_url=self._moto.endpoint,
            )
        raise AssertionError(f"no queue backend {self.backend!r}")

    def dead_letters(self, queue: TaskQueue) -> TaskQueue:
        """The queue's dead-letter queue, closed with the rest."""
        dlq = queue.dead_letters()
        self._opened.append(dlq)
        return dlq

    def close(self) -> None:
        for queue in self._opened:
            queue.close()


@pytest.fixture(params=["local", "sqs"])
def queue_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueFactory]:
    moto = request.getfixturevalue("moto") if request.param == "sqs" else None
    factory = QueueFactory(request.param, tmp_path, moto)
    yield factory
    factory.close()
