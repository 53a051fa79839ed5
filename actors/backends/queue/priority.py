"""The task queues of the priority classes: one queue per class, taken highest first.

A job's tasks go to its class's queue (:meth:`TaskQueues.for_priority`); a worker asks the
queues in :meth:`TaskQueues.in_order` and takes from a lower class only when the higher ones
gave nothing. Each class is a plain :class:`TaskQueue` (on SQS a queue of its own, with its
own dead-letter queue), so the queue contract is unchanged and any SQS client can still read
or write a class's tasks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import TracebackType

from batchfarm.actors.backends.queue import QueueDepth, TaskQueue
from batchfarm.actors.errors import QueueError


class TaskQueues:
    """One :class:`TaskQueue` per priority class (an integer, higher runs first)."""

    def __init__(self, queues: Mapping[int, TaskQueue]) -> None:
        if not queues:
            raise QueueError("task queues: expected at least one priority class")
        #: Priority class -> its queue, highest class first.
        self.by_priority: dict[int, TaskQueue] = dict(sorted(queues.items(), reverse=True))
        self._by_name = {queue.name: queue for queue in self.by_priority.values()}
        if len(self._by_name) != len(self.by_priority):
            names = [queue.name for queue in self.by_priority.values()]
            raise QueueError(f"task queues: two classes share a queue name: {names}")

    def for_priority(self, priority: int) -> TaskQueue:
        """The queue of ``priority``'s class: the highest class at or below it.

        A priority below every class goes to the lowest class, so any stored job has a queue.
        """
        for level, queue in self.by_priority.items():
            if priority >= level:
                return queue
        return list(self.by_priority.values())[-1]

    def in_order(self) -> list[TaskQueue]:
        """The queues, highest class first: the order workers take from them."""
        return list(self.by_priority.values())

    def named(self, name: str) -> TaskQueue:
        """The queue called ``name``; raises :class:`QueueError` for a name not among them."""
        queue = self._by_name.get(name)
        if queue is None:
            raise QueueError(f"task queue {name!r}: expected one of {', '.join(self._by_name)}")
        return queue

    def names(self) -> list[str]:
        """The queues' names, highest class first."""
        return [queue.name for queue in self.by_priority.values()]

    def depths(self) -> dict[str, QueueDepth]:
        """Each queue's depth, by name, highest class first."""
        return {queue.name: queue.depth() for queue in self.by_priority.values()}

    def depth(self) -> QueueDepth:
        """The depths of all the queues, added up."""
        found = list(self.depths().values())
        return QueueDepth(
            visible=sum(d.visible for d in found),
            in_flight=sum(d.in_flight for d in found),
            delayed=sum(d.delayed for d in found),
            dead=sum(d.dead for d in found),
        )

    def __iter__(self) -> Iterator[TaskQueue]:
        return iter(self.in_order())

    def close(self) -> None:
        """Close every queue."""
        for queue in self.by_priority.values():
            queue.close()

    def __enter__(self) -> TaskQueues:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TaskQueues({self.names()})"
