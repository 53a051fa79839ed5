"""``/metrics``: the whole grid in Prometheus' text format, one scrape target per grid.

Everything lives in the API's own :class:`CollectorRegistry` (not prometheus-client's global
one, so two managers in one test process never collide). Names follow Prometheus'
conventions: the ``batchfarm_`` prefix, base units (``_seconds``, ``_bytes``, ``_ratio`` from
0 to 1), ``_total`` on counters, and no label with an unbounded set of values (no job or
task ids; see :mod:`~batchfarm.actors.api.metrics_grid` for why stage names are not labels).

Read from the store and the queues at scrape time
(:class:`~batchfarm.actors.api.metrics_grid.GridCollector`), so they survive a restart:

- ``batchfarm_backends_up``: 1 when the store and queues answered (0: the families below
  are left out of that scrape, the manager's own are still there);
- ``batchfarm_jobs{state}``, ``batchfarm_tasks{state}``,
  ``batchfarm_tasks_by_handler{handler,state}``;
- ``batchfarm_tasks_completed_total{handler,outcome}``,
  ``batchfarm_bytes_processed_total{handler,direction}``,
  ``batchfarm_task_duplicate_runs_total``;
- ``batchfarm_tasks_waiting{reason}``: tasks not running, by why;
  ``batchfarm_tasks_oldest_queued_age_seconds``: how long the longest-queued task has waited;
- ``batchfarm_queue_messages{queue,state}`` (visible, in_flight, delayed),
  ``batchfarm_queue_dead_letters{queue}``;
- ``batchfarm_nodes{node_class,state}``, ``batchfarm_workers{state}`` (busy, idle),
  ``batchfarm_node_cpu_ratio{node,node_class}``,
  ``batchfarm_node_resident_memory_bytes{node,node_class}``;
- ``batchfarm_autoscaler_desired_nodes{node_class}``,
  ``batchfarm_autoscaler_actual_nodes{node_class}``: only once an autoscaler feeds them;
- ``batchfarm_task_cost_dollars_total{handler,node_class}``,
  ``batchfarm_node_cost_dollars_total{node_class}``, ``batchfarm_jobs_deadline_at_risk``
  (:mod:`~batchfarm.actors.api.metrics_cost`).

Counted in this process since it started
(:mod:`~batchfarm.actors.api.metrics_runs`, :mod:`~batchfarm.actors.api.metrics_health`):

- ``batchfarm_task_duration_seconds{handler}``, ``batchfarm_task_queue_wait_seconds{handler}``
  (histograms), ``batchfarm_task_failures_total{handler,reason}``;
- ``batchfarm_manager_loop_lag_seconds``, ``batchfarm_store_write_seconds`` (histograms),
  ``batchfarm_telemetry_frames_total{kind}``, ``batchfarm_telemetry_written_total{kind}``,
  ``batchfarm_telemetry_dropped_samples_total``,
  ``batchfarm_telemetry_rejected_frames_total{reason}``, ``batchfarm_telemetry_pending{kind}``,
  ``batchfarm_node_telemetry_dropped_frames_total{node}``;
- ``batchfarm_build_info{version}``.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Info, generate_latest

from batchfarm.actors.api.metrics_cost import CostCollector
from batchfarm.actors.api.metrics_grid import CapacitySource, GridCollector
from batchfarm.actors.api.metrics_health import (
    LoopLag,
    StoreWrites,
    TelemetryCollector,
)
from batchfarm.actors.api.metrics_runs import RunMetrics
from batchfarm.actors.backends.queue import TaskQueue
from batchfarm.actors.backends.store import Store
from batchfarm.actors.manager.telemetry import TelemetryProcessor


class ApiMetrics:
    """The API's registry and the parts that feed it (see the module docstring).

    ``telemetry`` adds the telemetry families, ``capacity`` the autoscaler's, and
    ``version`` is the build's; the manager passes all three. :attr:`runs` is the results
    processor's observer, :attr:`loop_lag` the probe the manager's loop runs.
    """

    #: The content type of :meth:`render`'s text.
    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        store: Store,
        queues: Mapping[str, TaskQueue],
        *,
        telemetry: TelemetryProcessor | None = None,
        capacity: CapacitySource | None = None,
        version: str = "unknown",
    ) -> None:
        self.registry = CollectorRegistry()
        self.runs = RunMetrics(store, self.registry)
        self.loop_lag = LoopLag(self.registry)
        self.store_writes = StoreWrites(store.engine, self.registry)
        self.registry.register(GridCollector(store, queues, capacity, telemetry))
        self.registry.register(CostCollector(store))
        if telemetry is not None:
            self.registry.register(TelemetryCollector(telemetry))
        Info(
            "batchfarm_build", "The batchfarm build serving this grid.", registry=self.registry
        ).info({"version": version})

    def render(self) -> bytes:
        """Every metric in Prometheus' text format (reads the store and the queues)."""
        return generate_latest(self.registry)
