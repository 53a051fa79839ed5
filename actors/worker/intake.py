"""How many messages a worker takes: enough to stay busy, never more than it can start soon.

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

import math

from batchfarm.actors.backends.queue import MAX_BATCH

#: Seconds of work a worker may hold beyond the task it runs.
HORIZON_S = 3.0
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
