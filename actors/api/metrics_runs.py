"""Task runs as they are recorded: durations, queue waits and failures by handler.

:class:`RunMetrics` is the results processor's observer: it sees each batch of runs the
store applied, so a redelivered completion event (the same run reported again) is never
counted twice. These are events the store keeps no history of (a task's row holds its last
run only), so they live in this process and start from zero when the manager restarts;
Prometheus' ``rate()`` and ``increase()`` take such resets in their stride.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from batchfarm.actors.backends.store import RunsApplied, Store, TaskRun
from batchfarm.actors.errors import BackendError

#: Run durations from a tenth of a second to the queue's 12-hour visibility limit.
DURATION_BUCKETS = (
    *(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800),
    *(3600, 7200, 14400, 28800, 43200),
)
#: Enqueue to start: a tenth of a second (idle workers) to an hour (a deep backlog).
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)
#: Every value of ``batchfarm_task_failures_total``'s ``reason`` label (see :func:`reason_of`).
FAILURE_REASONS = ("error", "permanent", "time_limit", "stopped", "poison", "unknown")
#: Stages whose handler names are kept, most recently used first.
_HANDLER_CACHE = 4096


def reason_of(run: TaskRun) -> str:
    """The failure class of a failed run, one of :data:`FAILURE_REASONS`.

    ``poison`` (the manager judged its input bad after failures on several nodes),
    ``time_limit`` and ``stopped`` (cancelled, drained, paused or its lease lost),
    ``permanent`` (an error a retry cannot fix: bad input or parameters, unknown handler),
    ``error`` (anything else the handler or its tool raised: retried), ``unknown`` (a run
    that carries no error).
    """
    error = run.error
    if run.reason is not None and run.reason.startswith("poison"):
        return "poison"
    if not isinstance(error, dict):
        return "unknown"
    if error.get("type") == "TaskCancelled":
        message = str(error.get("message", ""))
        return "time_limit" if "time limit" in message else "stopped"
    return "permanent" if error.get("permanent") else "error"


class RunMetrics:
    """Observes recorded runs (see the module docstring); call it with each applied batch.

    The handler of each stage is read from the store once and kept for the most recent
    stages.
    """

    def __init__(self, store: Store, registry: CollectorRegistry) -> None:
        self._store = store
        self._handlers: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()
        self.durations = Histogram(
            "batchfarm_task_duration_seconds",
            "Seconds a task's run took, start to finish, by handler.",
            ["handler"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.queue_waits = Histogram(
            "batchfarm_task_queue_wait_seconds",
            "Seconds a run's task waited in the queue, enqueue to start, by handler.",
            ["handler"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.failures = Counter(
            "batchfarm_task_failures",
            "Failed runs by handler and reason (retried ones included), since the manager began.",
            ["handler", "reason"],
            registry=registry,
        )

    def __call__(self, runs: Sequence[TaskRun], applied: RunsApplied) -> None:
        """Observe the runs of ``runs`` that the store applied (not redelivered or ignored)."""
        counted = {*applied.succeeded, *applied.failed, *applied.retrying, *applied.duplicates}
        for run in runs:
            if run.task_id not in counted:
                continue
            handler = self._handler(run.job, run.stage)
            self.durations.labels(handler).observe(max(0.0, run.finished_at - run.started_at))
            self.queue_waits.labels(handler).observe(max(0.0, run.queue_wait_s))
            if not run.ok:
                self.failures.labels(handler, reason_of(run)).inc()

    def _handler(self, job: str, stage: str) -> str:
        with self._lock:
            known = self._handlers.get((job, stage))
            if known is not None:
                self._handlers.move_to_end((job, stage))
                return known
        try:
            found = {s.name: s.handler for s in self._store.stages(job)}
        except BackendError:
            return "unknown"  # a metric is not worth failing the recording of runs
        handler = found.get(stage, "unknown")
        with self._lock:
            self._handlers[(job, stage)] = handler
            while len(self._handlers) > _HANDLER_CACHE:
                self._handlers.popitem(last=False)
        return handler
