"""The manager's own health: its loop's lag, its store writes' latency, its telemetry intake.

- ``batchfarm_manager_loop_lag_seconds``: how late the manager's loop runs a timer; the loop
  reads the nodes' telemetry, so a lagging loop is telemetry waiting in the socket.
- ``batchfarm_store_write_seconds``: write transactions, begin to connection released
  (commit included), of every part of the manager: telemetry flushes and recorded runs.
- ``batchfarm_telemetry_*``: frames taken in, rows written, and what was lost on the way
  (samples dropped when the buffer overflowed, frames rejected as malformed, and frames the
  nodes themselves dropped while the manager was away, as their heartbeats report).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from batchfarm.actors.backends.store.engine import WRITE_OPTION
from batchfarm.actors.manager.telemetry import TelemetryProcessor

#: Seconds between two probes of the loop's lag.
LAG_PROBE_S = 0.5
#: Loop lag, a millisecond to the ten seconds a loop should never take.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
#: Store write transactions, a millisecond (SQLite, small) to half a minute (a busy-timeout).
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Where a write transaction's start is kept, in its DBAPI connection's info dict.
_STARTED = "batchfarm_write_started"


class LoopLag:
    """``batchfarm_manager_loop_lag_seconds``: a one-shot timer re-armed each time it runs.

    Call :meth:`start` with the actor's ``after``; each probe observes how much later than
    asked it ran, which is what any timer or frame on the loop waits too.
    """

    def __init__(self, registry: CollectorRegistry, interval_s: float = LAG_PROBE_S) -> None:
        self.interval_s = interval_s
        self.histogram = Histogram(
            "batchfarm_manager_loop_lag_seconds",
            "Seconds the manager's loop ran a timer later than it was due.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self._after: Callable[[float, Callable[[], None]], object] | None = None
        self._due = 0.0

    def start(self, after: Callable[[float, Callable[[], None]], object]) -> None:
        """Arm the first probe with ``after(delay_s, callback)`` (the loop's one-shot timer)."""
        self._after = after
        self._arm()

    def _arm(self) -> None:
        assert self._after is not None
        self._due = time.monotonic() + self.interval_s
        self._after(self.interval_s, self._probe)

    def _probe(self) -> None:
        self.histogram.observe(max(0.0, time.monotonic() - self._due))
        self._arm()


class StoreWrites:
    """``batchfarm_store_write_seconds``, timed by SQLAlchemy events on the store's engine.

    A write transaction is a connection the store marks with its write option: timed from
    its ``begin`` to the pool taking the connection back, after its commit or rollback.
    """

    def __init__(self, engine: Engine, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "batchfarm_store_write_seconds",
            "Seconds a store write transaction took, begin to commit.",
            buckets=WRITE_BUCKETS,
            registry=registry,
        )
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "checkin", self._checkin)

    def _begin(self, connection: Connection) -> None:
        if connection.get_execution_options().get(WRITE_OPTION, False):
            connection.info[_STARTED] = time.perf_counter()

    def _checkin(self, dbapi_connection: Any, record: Any) -> None:
        started = record.info.pop(_STARTED, None) if record is not None else None
        if started is not None:
            self.histogram.observe(time.perf_counter() - started)


class TelemetryCollector(Collector):
    """The telemetry processor's counters, read on each scrape (they count since start)."""

    def __init__(self, telemetry: TelemetryProcessor) -> None:
        self._telemetry = telemetry

    def describe(self) -> Iterable[Metric]:
        """Nothing up front (the families are built on each scrape)."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Frames, writes, drops and rejects; each node's own drops."""
        counters = self._telemetry.counters
        frames = CounterMetricFamily(
            "batchfarm_telemetry_frames",
            "Telemetry frames the manager took in, by kind.",
            labels=["kind"],
        )
        frames.add_metric(["heartbeat"], counters.heartbeats)
        frames.add_metric(["metrics"], counters.metrics)
        frames.add_metric(["other"], counters.others)
        yield frames
        written = CounterMetricFamily(
            "batchfarm_telemetry_written",
            "Node rows (when a node changes, or its last heartbeat every 10 s), changed worker"
            " rows and metric samples written to the store.",
            labels=["kind"],
        )
        written.add_metric(["heartbeat"], counters.beats_written)
        written.add_metric(["worker"], counters.workers_written)
        written.add_metric(["sample"], counters.samples_written)
        yield written
        yield CounterMetricFamily(
            "batchfarm_telemetry_dropped_samples",
            "Metric samples dropped because the manager's buffer was full.",
            value=counters.samples_dropped,
        )
        rejected = CounterMetricFamily(
            "batchfarm_telemetry_rejected_frames",
            "Frames refused as not a batchfarm record, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(dict(counters.rejects.by_reason).items()):
            rejected.add_metric([reason], count)
        yield rejected
        pending_beats, pending_samples = self._telemetry.pending
        pending = GaugeMetricFamily(
            "batchfarm_telemetry_pending",
            "Nodes heard since the last flush, and metric samples held for the next write.",
            labels=["kind"],
        )
        pending.add_metric(["heartbeat"], pending_beats)
        pending.add_metric(["sample"], pending_samples)
        yield pending
        dropped = CounterMetricFamily(
            "batchfarm_node_telemetry_dropped_frames",
            "Frames a reporting node dropped while the manager was away (its heartbeat says).",
            labels=["node"],
        )
        for beat in sorted(list(self._telemetry.latest.values()), key=lambda b: b.node):
            dropped.add_metric([beat.node], beat.dropped)
        yield dropped
