"""``/metrics``: the grid in Prometheus' text format, read from the store at scrape time.

Everything lives in the API's own :class:`CollectorRegistry` (not prometheus-client's global
one, so two managers in one test process never collide). :class:`GridCollector` reads the
store and the queues on each scrape:

- ``batchfarm_jobs{state}``, ``batchfarm_tasks{state}``: jobs and tasks per state;
- ``batchfarm_tasks_waiting{reason}``: tasks not running, by why (:data:`WAIT_REASONS`);
- ``batchfarm_queue_messages{queue,state}``: visible, in-flight and delayed messages, and
  ``batchfarm_queue_dead_letters{queue}`` in each queue's dead-letter queue;
- ``batchfarm_nodes{state}``, ``batchfarm_workers{state}`` (busy or idle on reporting nodes);
- ``batchfarm_task_duplicate_runs_total``: re-runs of succeeded tasks the store counted.

:class:`TaskDurations` is the histogram ``batchfarm_task_duration_seconds{handler}``, fed by
the results processor as it records runs.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from batchfarm.actors.api.views import PRESENT, WAIT_REASONS, Fleet, wait_label
from batchfarm.actors.backends.queue import TaskQueue
from batchfarm.actors.backends.store import (
    JobState,
    NodeState,
    RunsApplied,
    Store,
    TaskRun,
    TaskState,
)
from batchfarm.actors.errors import BackendError

#: Run durations from a second to the queue's 12-hour visibility limit (transcodes).
DURATION_BUCKETS = (
    *(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800),
    *(3600, 7200, 14400, 28800, 43200),
)
#: Task states that wait (``batchfarm_tasks_waiting`` counts them).
WAITING = (TaskState.PENDING, TaskState.QUEUED, TaskState.RETRYING)
#: Stages whose handler names are kept for labelling durations.
_HANDLER_CACHE = 4096


class TaskDurations:
    """``batchfarm_task_duration_seconds{handler}``: how long recorded runs took.

    Called with each batch the results processor records (its observer); a redelivered or
    ignored run is not observed again. The handler of each stage is read from the store
    once and kept for the most recent stages.
    """

    def __init__(self, store: Store, registry: CollectorRegistry) -> None:
        self._store = store
        self._handlers: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()
        self.histogram = Histogram(
            "batchfarm_task_duration_seconds",
            "Seconds a task's run took, start to finish, by handler.",
            ["handler"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def __call__(self, runs: Sequence[TaskRun], applied: RunsApplied) -> None:
        """Observe the runs of ``runs`` that the store applied (see the class docstring)."""
        counted = {*applied.succeeded, *applied.failed, *applied.retrying, *applied.duplicates}
        for run in runs:
            if run.task_id not in counted:
                continue
            handler = self._handler(run.job, run.stage)
            self.histogram.labels(handler).observe(max(0.0, run.finished_at - run.started_at))

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


class GridCollector(Collector):
    """Reads jobs, tasks, nodes, workers and queue depths on each scrape."""

    def __init__(self, store: Store, queues: Mapping[str, TaskQueue]) -> None:
        self._store = store
        self._queues = queues

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: registering must not read the store."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The families of the module docstring, every label value present (0 if none)."""
        store = self._store
        yield _states("batchfarm_jobs", "Jobs by state.", JobState, store.count_jobs())
        yield _states("batchfarm_tasks", "Tasks by state.", TaskState, store.count_tasks())

        nodes = store.nodes()
        workers = store.workers()
        fleet = Fleet.of(nodes, workers)
        waiting: Counter[str] = Counter({reason: 0 for reason in WAIT_REASONS})
        for row in store.count_waiting(WAITING):
            waiting[wait_label(row.job_state, row.node_class, row.state, fleet)] += row.count
        family = GaugeMetricFamily(
            "batchfarm_tasks_waiting", "Tasks not running, by why they wait.", labels=["reason"]
        )
        for reason, count in waiting.items():
            family.add_metric([reason], count)
        yield family
        yield _states(
            "batchfarm_nodes", "Nodes by state.", NodeState, Counter(n.state for n in nodes)
        )
        reporting = {node.id for node in nodes if node.state in PRESENT}
        busy = sum(w.state == "busy" for w in workers if w.node_id in reporting)
        idle = sum(w.state == "idle" for w in workers if w.node_id in reporting)
        family = GaugeMetricFamily(
            "batchfarm_workers", "Workers of reporting nodes, busy or idle.", labels=["state"]
        )
        family.add_metric(["busy"], busy)
        family.add_metric(["idle"], idle)
        yield family

        yield from self._queue_families()
        yield CounterMetricFamily(
            "batchfarm_task_duplicate_runs",
            "Re-runs of tasks that had already succeeded (at-least-once delivery's cost).",
            value=store.duplicate_runs(),
        )

    def _queue_families(self) -> Iterable[Metric]:
        messages = GaugeMetricFamily(
            "batchfarm_queue_messages", "Messages in a queue by state.", labels=["queue", "state"]
        )
        dead = GaugeMetricFamily(
            "batchfarm_queue_dead_letters",
            "Messages in a queue's dead-letter queue.",
            labels=["queue"],
        )
        for name, queue in sorted(self._queues.items()):
            depth = queue.depth()
            messages.add_metric([name, "visible"], depth.visible)
            messages.add_metric([name, "in_flight"], depth.in_flight)
            messages.add_metric([name, "delayed"], depth.delayed)
            dead.add_metric([name], depth.dead)
        yield messages
        yield dead


def _states(
    name: str, doc: str, known: Iterable[str], counts: Mapping[str, int]
) -> GaugeMetricFamily:
    """A gauge by ``state``: every known state (0 when none), and any other state seen."""
    family = GaugeMetricFamily(name, doc, labels=["state"])
    for state in sorted({*map(str, known), *counts}):
        family.add_metric([state], counts.get(state, 0))
    return family


class ApiMetrics:
    """The API's registry: the grid collector and the run-duration histogram."""

    #: The content type of :meth:`render`'s text.
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, store: Store, queues: Mapping[str, TaskQueue]) -> None:
        self.registry = CollectorRegistry()
        self.durations = TaskDurations(store, self.registry)
        self.registry.register(GridCollector(store, queues))

    def render(self) -> bytes:
        """Every metric in Prometheus' text format (reads the store and the queues)."""
        return generate_latest(self.registry)
