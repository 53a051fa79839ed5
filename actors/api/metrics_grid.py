"""The grid as the store and the queues hold it, read on each scrape (:class:`GridCollector`).

Everything here is derived from durable state, so it survives a manager restart: the
``_total`` counters are totals over the tasks the store holds (a deleted job takes its tasks
out of them, which Prometheus' ``rate()`` reads as a counter reset).

Labels are bounded: ``state``, ``outcome``, ``direction`` and ``reason`` are fixed sets,
``queue`` the grid's few queues, ``handler`` the registered handlers (built-in ones and the
few a grid installs) and ``node_class`` the classes a grid declares. Stage *names* are not
labels: every job's spec chooses its own, so over many jobs they are as unbounded as job
ids. ``node`` (per-node CPU and memory) is bounded by the fleet's size, the Auto Scaling
group's MaxSize, and only reporting nodes are listed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from batchfarm.actors.api.views import PRESENT, WAIT_REASONS, Fleet, wait_label
from batchfarm.actors.backends.queue import TaskQueue
from batchfarm.actors.backends.store import JobState, NodeState, Store, TaskState
from batchfarm.actors.backends.store.records import NodeView
from batchfarm.actors.backends.store.totals import WorkerTotals
from batchfarm.actors.errors import BackendError
from batchfarm.actors.manager.telemetry import TelemetryProcessor

log = logging.getLogger(__name__)

#: Task states that wait (``batchfarm_tasks_waiting`` counts them).
WAITING = (TaskState.PENDING, TaskState.QUEUED, TaskState.RETRYING)
#: Task states that end a task's runs, as the ``outcome`` of ``batchfarm_tasks_completed``.
COMPLETED = (TaskState.SUCCEEDED, TaskState.FAILED)


@dataclass(frozen=True)
class Capacity:
    """One node class's capacity as the autoscaler sees it."""

    #: Nodes the autoscaler asked for.
    desired: int
    #: Nodes running (in service) now.
    actual: int


class CapacitySource(Protocol):
    """Where the autoscaler's figures come from (issue 8's autoscaler; none until then)."""

    def capacity(self) -> Mapping[str, Capacity]:
        """Desired and actual nodes by node class."""
        ...


class GridCollector(Collector):
    """Jobs, tasks, queues, nodes and workers, read from the store and queues on each scrape.

    ``capacity`` feeds ``batchfarm_autoscaler_{desired,actual}_nodes``; without one (no
    autoscaler yet) the two families are absent rather than made up. With ``telemetry``
    (the manager's), the workers are counted from the latest heartbeats it holds when it
    holds one of every reporting node, rather than from the store's 64,000 rows.
    """

    def __init__(
        self,
        store: Store,
        queues: Mapping[str, TaskQueue],
        capacity: CapacitySource | None = None,
        telemetry: TelemetryProcessor | None = None,
    ) -> None:
        self._store = store
        self._queues = queues
        self._capacity = capacity
        self._telemetry = telemetry

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: registering must not read the store."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Every family of the module, every fixed label value present (0 if none).

        A store or queue that fails leaves the grid's families out of this scrape and sets
        ``batchfarm_backends_up`` to 0, rather than failing the whole scrape: the manager's
        own health, which says most when a backend is down, is still served.
        """
        try:
            families = list(self._families())
        except BackendError as error:
            log.warning("metrics: the grid's figures are left out of this scrape: %s", error)
            families = []
        yield GaugeMetricFamily(
            "batchfarm_backends_up",
            "1 when the store and the queues answered this scrape, 0 when one failed.",
            value=1.0 if families else 0.0,
        )
        yield from families

    def _families(self) -> Iterable[Metric]:
        store = self._store
        yield _states("batchfarm_jobs", "Jobs by state.", JobState, store.count_jobs())
        yield _states("batchfarm_tasks", "Tasks by state.", TaskState, store.count_tasks())
        oldest = store.oldest_queued_at()
        yield GaugeMetricFamily(
            "batchfarm_tasks_oldest_queued_age_seconds",
            "Seconds the task queued longest ago has waited (0 when none is queued).",
            value=0.0 if oldest is None else max(0.0, time.time() - oldest),
        )
        yield from _handler_families(store)
        nodes = store.nodes()
        workers = self._worker_totals(nodes)
        yield _waiting(store, _fleet(nodes, workers.by_node_state))
        yield from _node_families(nodes, workers.by_node_state, workers.rss_by_node)
        yield from self._queue_families()
        yield CounterMetricFamily(
            "batchfarm_task_duplicate_runs",
            "Re-runs of tasks that had already succeeded (at-least-once delivery's cost).",
            value=store.duplicate_runs(),
        )
        if self._capacity is not None:
            yield from _capacity_families(self._capacity.capacity())

    def _worker_totals(self, nodes: list[NodeView]) -> WorkerTotals:
        """The workers of ``nodes``, from the manager's memory where it has them all."""
        if self._telemetry is not None:
            reporting = [node.id for node in nodes if node.state in PRESENT]
            held = self._telemetry.worker_totals(reporting)
            if held is not None:
                return held
        return self._store.worker_totals()

    def _queue_families(self) -> Iterable[Metric]:
        messages = GaugeMetricFamily(
            "batchfarm_queue_messages",
            "Messages in a queue by state (visible, in_flight, delayed).",
            labels=["queue", "state"],
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


def _handler_families(store: Store) -> Iterable[Metric]:
    by_handler = GaugeMetricFamily(
        "batchfarm_tasks_by_handler",
        "Tasks by their stage's handler and state.",
        labels=["handler", "state"],
    )
    completed = CounterMetricFamily(
        "batchfarm_tasks_completed",
        "Tasks whose runs are over, by handler and outcome (succeeded, failed), from the store.",
        labels=["handler", "outcome"],
    )
    processed = CounterMetricFamily(
        "batchfarm_bytes_processed",
        "Bytes tasks read (in) and wrote (out), by handler, from the store.",
        labels=["handler", "direction"],
    )
    rows = store.handler_totals()
    handlers = sorted({row.handler for row in rows})
    counts = {(row.handler, row.state): row.count for row in rows}
    bytes_in: Counter[str] = Counter()
    bytes_out: Counter[str] = Counter()
    for row in rows:
        bytes_in[row.handler] += row.bytes_in
        bytes_out[row.handler] += row.bytes_out
    for handler in handlers:
        for state in TaskState:
            by_handler.add_metric([handler, state], counts.get((handler, state), 0))
        for outcome in COMPLETED:
            completed.add_metric([handler, outcome], counts.get((handler, outcome), 0))
        processed.add_metric([handler, "in"], bytes_in[handler])
        processed.add_metric([handler, "out"], bytes_out[handler])
    yield by_handler
    yield completed
    yield processed


def _fleet(nodes: list[NodeView], workers: Mapping[tuple[str, str], int]) -> Fleet:
    """What :meth:`Fleet.of` says, from worker counts rather than a row per worker."""
    present = Counter(n.node_class for n in nodes if n.state in PRESENT)
    usable = {n.id: n.node_class for n in nodes if n.state == NodeState.UP and not n.cordoned}
    idle: Counter[str] = Counter()
    busy: Counter[str] = Counter()
    for (node, state), count in workers.items():
        node_class = usable.get(node)
        if node_class is not None and state in ("idle", "busy"):
            (idle if state == "idle" else busy)[node_class] += count
    return Fleet(present, Counter(usable.values()), idle, busy)


def _waiting(store: Store, fleet: Fleet) -> Metric:
    waiting: Counter[str] = Counter({reason: 0 for reason in WAIT_REASONS})
    for row in store.count_waiting(WAITING):
        waiting[wait_label(row.job_state, row.node_class, row.state, fleet)] += row.count
    family = GaugeMetricFamily(
        "batchfarm_tasks_waiting", "Tasks not running, by why they wait.", labels=["reason"]
    )
    for reason, count in waiting.items():
        family.add_metric([reason], count)
    return family


def _node_families(
    nodes: list[NodeView],
    workers: Mapping[tuple[str, str], int],
    rss: Mapping[str, int],
) -> Iterable[Metric]:
    by_state: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for node in nodes:
        by_state[node.node_class][node.state] += 1
    family = GaugeMetricFamily(
        "batchfarm_nodes", "Nodes by state and class.", labels=["node_class", "state"]
    )
    for node_class in sorted(by_state or {"default": Counter()}):
        counts = by_state[node_class]
        for state in sorted({*map(str, NodeState), *counts}):
            family.add_metric([node_class, state], counts.get(state, 0))
    yield family

    reporting = [node for node in nodes if node.state in PRESENT]
    present = {node.id for node in reporting}
    totals: Counter[str] = Counter({"busy": 0, "idle": 0})
    for (node_id, state), count in workers.items():
        if node_id in present and state in totals:
            totals[state] += count
    family = GaugeMetricFamily(
        "batchfarm_workers", "Workers of reporting nodes, busy or idle.", labels=["state"]
    )
    for state in ("busy", "idle"):
        family.add_metric([state], totals[state])
    yield family

    cpu = GaugeMetricFamily(
        "batchfarm_node_cpu_ratio",
        "CPU use of a reporting node's machine, 0 to 1 (all its cores).",
        labels=["node", "node_class"],
    )
    memory = GaugeMetricFamily(
        "batchfarm_node_resident_memory_bytes",
        "Resident memory of a reporting node's supervisor and workers.",
        labels=["node", "node_class"],
    )
    for node in reporting:
        cpu.add_metric([node.id, node.node_class], node.cpu_percent / 100.0)
        memory.add_metric([node.id, node.node_class], node.rss_bytes + rss.get(node.id, 0))
    yield cpu
    yield memory


def _capacity_families(capacity: Mapping[str, Capacity]) -> Iterable[Metric]:
    desired = GaugeMetricFamily(
        "batchfarm_autoscaler_desired_nodes",
        "Nodes the autoscaler asked for, by class.",
        labels=["node_class"],
    )
    actual = GaugeMetricFamily(
        "batchfarm_autoscaler_actual_nodes",
        "Nodes in service, by class, as the autoscaler sees them.",
        labels=["node_class"],
    )
    for node_class, figures in sorted(capacity.items()):
        desired.add_metric([node_class], figures.desired)
        actual.add_metric([node_class], figures.actual)
    yield desired
    yield actual


def _states(
    name: str, doc: str, known: Iterable[str], counts: Mapping[str, int]
) -> GaugeMetricFamily:
    """A gauge by ``state``: every known state (0 when none), and any other state seen."""
    family = GaugeMetricFamily(name, doc, labels=["state"])
    for state in sorted({*map(str, known), *counts}):
        family.add_metric([state], counts.get(state, 0))
    return family
