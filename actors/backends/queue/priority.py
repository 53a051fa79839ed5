"""The task queues of the node classes and priority classes, taken highest priority first.

Each node class has one queue per priority class. A job's stage goes to the queue of the
stage's node class and the job's priority (:meth:`TaskQueues.for_priority`); a node opens
only its own node class's queues, and its workers ask them in :meth:`TaskQueues.in_order`,
taking from a lower priority only when the higher ones gave nothing. Each queue is a plain
:class:`TaskQueue` (on SQS a queue of its own, with its own dead-letter queue), so the queue
contract is unchanged and any SQS client can still read or write a class's tasks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType

from batchfarm.actors.backends.queue import QueueDepth, TaskQueue
from batchfarm.actors.errors import QueueError
from batchfarm.actors.settings.model import DEFAULT_CLASS

log = logging.getLogger(__name__)


class TaskQueues:
    """One :class:`TaskQueue` per node class and priority class (an integer, higher first).

    ``queues`` is shorthand for the default node class's queues; ``by_class`` gives each
    node class's (node class -> priority class -> queue). ``opener``, if given, opens the
    queues of a class asked for that is not among them (the manager's: a stored job may name
    a class its config no longer has; its tasks then wait in that class's queues, and say
    so, rather than stop the manager).
    """

    def __init__(
        self,
        queues: Mapping[int, TaskQueue] | None = None,
        *,
        by_class: Mapping[str, Mapping[int, TaskQueue]] | None = None,
        opener: Callable[[str], Mapping[int, TaskQueue]] | None = None,
    ) -> None:
        given = dict(by_class or {})
        if queues is not None:
            given[DEFAULT_CLASS] = queues
        if not any(given.values()):
            raise QueueError("task queues: expected at least one priority class")
        #: Node class -> priority class -> its queue, highest priority first.
        self.by_class: dict[str, dict[int, TaskQueue]] = {
            node_class: dict(sorted(levels.items(), reverse=True))
            for node_class, levels in sorted(given.items())
        }
        self._order = self._ordered()
        self._by_name = {queue.name: queue for queue in self._order}
        if len(self._by_name) != len(self._order):
            names = [queue.name for queue in self._order]
            raise QueueError(f"task queues: two classes share a queue name: {names}")
        self._classes = list(self.by_class)
        self._opener = opener
        self._lock = threading.Lock()  # API threads may open a class at once

    def _all(self) -> list[TaskQueue]:
        return list(self._order)

    def _ordered(self) -> tuple[TaskQueue, ...]:
        # Highest priority first, then by node class: the order a worker takes work in.
        levels = sorted(
            (
                (level, node_class, queue)
                for node_class, by in self.by_class.items()
                for level, queue in by.items()
            ),
            key=lambda item: (-item[0], item[1]),
        )
        return tuple(queue for _, _, queue in levels)

    def node_classes(self) -> list[str]:
        """The node classes these queues were opened for, sorted (not those opened later)."""
        return list(self._classes)

    def for_priority(self, priority: int, node_class: str = DEFAULT_CLASS) -> TaskQueue:
        """The queue of ``node_class`` for ``priority``: the highest class at or below it.

        A priority below every class goes to the lowest class, so any stored job has a queue.
        Raises :class:`QueueError` for a node class whose queues are not open here.
        """
        levels = self.by_class.get(node_class) or self._open(node_class)
        if not levels:
            raise QueueError(
                f"no task queues of node class {node_class!r} here: expected one of "
                f"{', '.join(self.by_class)}"
            )
        for level, queue in levels.items():
            if priority >= level:
                return queue
        return list(levels.values())[-1]

    def _open(self, node_class: str) -> dict[int, TaskQueue]:
        """Open an unlisted class's queues with the opener (nothing without one)."""
        if self._opener is None:
            return {}
        with self._lock:
            if node_class not in self.by_class:
                log.warning("task queues: opening those of node class %r too", node_class)
                levels = dict(sorted(self._opener(node_class).items(), reverse=True))
                self._by_name.update({queue.name: queue for queue in levels.values()})
                self.by_class = {**self.by_class, node_class: levels}
                self._order = self._ordered()
            return self.by_class[node_class]

    def in_order(self) -> list[TaskQueue]:
        """The queues, highest priority first: the order workers take from them."""
        return self._all()

    def named(self, name: str) -> TaskQueue:
        """The queue called ``name``; raises :class:`QueueError` for a name not among them."""
        queue = self._by_name.get(name)
        if queue is None:
            raise QueueError(f"task queue {name!r}: expected one of {', '.join(self._by_name)}")
        return queue

    def names(self) -> list[str]:
        """The queues' names, highest priority first."""
        return [queue.name for queue in self._all()]

    def depths(self, node_class: str | None = None) -> dict[str, QueueDepth]:
        """Each queue's depth by name, highest priority first (only ``node_class``'s if given)."""
        queues = (
            self._all() if node_class is None else list(self.by_class.get(node_class, {}).values())
        )
        return {queue.name: queue.depth() for queue in queues}

    def depth(self, node_class: str | None = None) -> QueueDepth:
        """The depths of all the queues (or of ``node_class``'s), added up."""
        found = list(self.depths(node_class).values())
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
        for queue in self._all():
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
