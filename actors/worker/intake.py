"""What a worker takes from the task queues: which queue first, and how many messages.

Priority: :class:`Receiver` asks the task queues highest class first (``tasks-high``, then
``tasks``) and takes from a lower class only when every higher one gave nothing. The higher
classes are asked without waiting and only the lowest is long-polled, for at most
:data:`LOWER_POLL_S` (or ``[queue] wait`` if shorter): a high-priority task waits at most
that long for a worker that is polling, and the next receive of every worker takes it first.

How many: :class:`IntakePolicy` sizes each receive: enough to stay busy, never more than
the worker can start soon.

A node holds no more messages than it can start within a few seconds (``HORIZON_S``): another
node could be running them. A worker runs one task at a time, so it holds the running task
plus a few waiting ones. How many depends on how long its tasks take, measured as they run:

- nothing measured yet: one task at a time, until a run shows how long tasks take;
- short tasks: as many as fit in the horizon, so the per-task cost of a queue round trip is
  spread over a batch;
- long tasks: the next one only once the running one should end within the horizon, so its
  input downloads while the current task finishes (I/O pipelined around compute) without
  keeping it from an idle worker elsewhere;
- never more than ``[node] prefetch`` waiting; ``prefetch = 0`` holds only the running task.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

from batchfarm.actors.backends.queue import MAX_BATCH, Received
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.errors import QueueError

log = logging.getLogger(__name__)

#: Seconds of work a worker may hold beyond the task it runs.
HORIZON_S = 3.0
#: Longest long poll of the lowest class: how long a high-priority task may wait for an
#: idle worker that is polling the normal queue.
LOWER_POLL_S = 1.0
#: Pause after a queue error, doubling up to the maximum.
RETRY_S = (0.5, 10.0)
#: Weight of the newest duration in the moving average: recent tasks count most.
SMOOTHING = 0.3


class IntakePolicy:
    """Sizes receives from measured task durations; one per worker, used by its intake thread."""

    def __init__(self, prefetch: int, horizon_s: float = HORIZON_S) -> None:
        if prefetch < 0:
            raise ValueError(f"prefetch must be 0 or more, not {prefetch}")
        self.prefetch = prefetch
        self.horizon_s = horizon_s
        #: Moving average of task run time in seconds; None until a task has run.
        self.average_s: float | None = None

    def record(self, seconds: float) -> None:
        """Take one finished task's run time into the average."""
        seconds = max(seconds, 0.0)
        if self.average_s is None:
            self.average_s = seconds
        else:
            self.average_s += SMOOTHING * (seconds - self.average_s)

    def waiting_target(self, running_for: float | None = None) -> int:
        """How many tasks to hold waiting beside the running one (running ``running_for`` s)."""
        if self.prefetch == 0 or self.average_s is None:
            return 0
        if self.average_s < self.horizon_s:
            fits = math.floor(self.horizon_s / max(self.average_s, 1e-3))
            return max(1, min(self.prefetch, fits))
        if running_for is not None and self.average_s - running_for <= self.horizon_s:
            return 1
        return 0

    def to_receive(self, waiting: int, running_for: float | None) -> int:
        """How many messages to ask for now (0 to 10).

        ``waiting`` tasks are held unstarted; ``running_for`` is how long the running task has
        run, None when none runs.
        """
        running = 0 if running_for is None else 1
        capacity = 1 + self.waiting_target(running_for)
        return max(0, min(MAX_BATCH, capacity - waiting - running))


@dataclass(frozen=True)
class Taken:
    """A received message and the task queue it came from (where its receipt is good)."""

    queue: str
    message: Received


class Receiver:
    """Receives for one worker's intake thread from its own queue objects, highest class first.

    The queue objects are the intake's alone, so a long poll never holds up the worker's
    renewals, deletes and hand-backs (which use other objects of the same queues).
    """

    def __init__(
        self,
        queues: TaskQueues,
        *,
        wait_s: float,
        visibility_s: float,
        closing: threading.Event,
        name: str = "worker",
    ) -> None:
        self.queues = queues
        self.wait_s = min(wait_s, LOWER_POLL_S)
        self.visibility_s = visibility_s
        self._closing = closing
        self._name = name
        self._pause_s = RETRY_S[0]

    def receive(self, wanted: int) -> list[Taken]:
        """Up to ``wanted`` messages from the highest class that has any (maybe none).

        A queue error is logged and answered with an empty list after a pause that doubles
        while errors go on; a queue closed under the poll (the worker is closing) too.
        """
        order = self.queues.in_order()
        try:
            for at, queue in enumerate(order):
                lowest = at == len(order) - 1
                wait = self.wait_s if lowest else 0.0
                messages = queue.receive(wanted, wait_s=wait, visibility_s=self.visibility_s)
                if messages:
                    self._pause_s = RETRY_S[0]
                    return [Taken(queue.name, message) for message in messages]
            self._pause_s = RETRY_S[0]
        except QueueError as error:
            if self._closing.is_set():
                return []  # the queue was closed under the poll
            log.warning("%s cannot receive: %s", self._name, error)
            self._closing.wait(self._pause_s)
            self._pause_s = min(self._pause_s * 2, RETRY_S[1])
        return []

    def close(self) -> None:
        """Close the queue objects (not while a receive may be running on them)."""
        self.queues.close()
