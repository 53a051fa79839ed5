"""What the grid costs and whether deadlines hold, read from the store on each scrape.

- ``batchfarm_task_cost_dollars_total{handler,node_class}``: what the runs of every task
  the store holds cost (run seconds x node price per hour / 3600 / node workers);
- ``batchfarm_node_cost_dollars_total{node_class}``: what the nodes cost, first to last
  heartbeat, idle time included: the gap between the two is what idle nodes cost;
- ``batchfarm_jobs_deadline_at_risk``: unfinished jobs whose deadline is at risk or already
  missed (no job label: the count, for an alert; ``status`` says which).

Like :mod:`~batchfarm.actors.api.metrics_grid`, totals over durable state: a deleted job
takes its tasks' cost out of the counter, which Prometheus reads as a reset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from batchfarm.actors.api import views
from batchfarm.actors.api.deadline import FRESH_S, outlooks
from batchfarm.actors.backends.store import JobState, Store
from batchfarm.actors.errors import BackendError

log = logging.getLogger(__name__)

#: Job states whose deadline is still ahead of them.
_UNFINISHED = (JobState.PENDING, JobState.SCHEDULED, JobState.RUNNING, JobState.PAUSED)
#: Most unfinished jobs a scrape judges the deadlines of.
MAX_JOBS = 1000
#: Deadline states counted as at risk.
_AT_RISK = ("at_risk", "missed")


class CostCollector(Collector):
    """The cost and deadline families (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: registering must not read the store."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The families, or none when the store fails (``batchfarm_backends_up`` says so)."""
        try:
            families = list(self._families())
        except BackendError as error:
            log.warning("metrics: costs are left out of this scrape: %s", error)
            return
        yield from families

    def _families(self) -> Iterable[Metric]:
        tasks = CounterMetricFamily(
            "batchfarm_task_cost_dollars",
            "Dollars the runs of tasks cost: run seconds x node price / workers, by handler.",
            labels=["handler", "node_class"],
        )
        for cost in self._store.costs_by_handler():
            tasks.add_metric([cost.handler, cost.node_class], cost.dollars)
        yield tasks
        nodes = CounterMetricFamily(
            "batchfarm_node_cost_dollars",
            "Dollars the nodes cost, first to last heartbeat, idle time included.",
            labels=["node_class"],
        )
        for node_class, dollars in sorted(self._store.node_costs().items()):
            nodes.add_metric([node_class], dollars)
        yield nodes
        yield GaugeMetricFamily(
            "batchfarm_jobs_deadline_at_risk",
            "Unfinished jobs whose deadline is at risk or already missed.",
            value=self._at_risk(),
        )

    def _at_risk(self) -> int:
        store, now = self._store, time.time()
        jobs = [
            job
            for job in store.jobs(states=_UNFINISHED, limit=MAX_JOBS)
            if job.deadline is not None
        ]
        if not jobs:
            return 0
        counts = store.stage_counts_of(job.id for job in jobs)
        seen = outlooks(store.scaling_events(since=now - FRESH_S, limit=500), now)
        # The fleet only shapes ``why``, which this count does not read.
        fleet = views.Fleet({}, {}, {}, {})
        extras = views.Extras(outlooks=seen)
        risky = 0
        for job in jobs:
            view = views.job_view(job, counts.get(job.id, []), fleet, now, extras)
            status = view["deadline_status"] or {}
            risky += status.get("state") in _AT_RISK
        return risky
