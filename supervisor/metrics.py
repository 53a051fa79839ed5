"""A node's own ``/metrics`` (``[node] metrics_listen``): its workers, core by core.

The manager's ``/metrics`` already carries the grid, nodes included, so this is off by
default. Turn it on where Prometheus scrapes the nodes themselves (EC2 service discovery on
the Auto Scaling group, see ``config/prometheus.yml``), for what the manager does not keep:
each worker's core, load and task counts. prometheus-client's own HTTP server serves it from
a daemon thread, from a registry of this node's alone; the values are those of the node's
latest heartbeat, so a scrape costs no psutil call.

Series (``worker`` is the worker's index, ``core`` the core it is pinned to, ``none`` when
unpinned; both bounded by the machine's cores):

- ``batchfarm_worker_busy{worker,core}``: 1 while the worker runs a task, else 0;
- ``batchfarm_worker_cpu_ratio{worker,core}``: its process's CPU use, 0 to 1 of one core;
- ``batchfarm_worker_resident_memory_bytes{worker}``;
- ``batchfarm_worker_tasks_total{worker,outcome}``: tasks it finished, ``succeeded`` or
  ``failed`` (from zero again when the worker process is restarted);
- ``batchfarm_machine_cpu_ratio``: the whole machine's CPU use, 0 to 1.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from batchfarm.actors.errors import ConfigError
from batchfarm.actors.messages import Heartbeat
from batchfarm.actors.settings.urls import check_url

#: The key named in errors about the address.
KEY = "[node] metrics_listen"


class HeartbeatCollector(Collector):
    """The families of the module docstring, from the latest heartbeat :meth:`update` got."""

    def __init__(self) -> None:
        self._beat: Heartbeat | None = None

    def update(self, beat: Heartbeat) -> None:
        """Serve ``beat``'s values from now on (called with each heartbeat the node sends)."""
        self._beat = beat  # one reference swap: a scrape sees one heartbeat or the next

    def describe(self) -> Iterable[Metric]:
        """Nothing up front (families appear with the first heartbeat)."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The latest heartbeat's workers and machine, or nothing before the first one."""
        beat = self._beat
        if beat is None:
            return
        busy = GaugeMetricFamily(
            "batchfarm_worker_busy", "1 while the worker runs a task.", labels=["worker", "core"]
        )
        cpu = GaugeMetricFamily(
            "batchfarm_worker_cpu_ratio",
            "CPU use of the worker's process, 0 to 1 of one core.",
            labels=["worker", "core"],
        )
        memory = GaugeMetricFamily(
            "batchfarm_worker_resident_memory_bytes",
            "Resident memory of the worker's process.",
            labels=["worker"],
        )
        tasks = CounterMetricFamily(
            "batchfarm_worker_tasks",
            "Tasks the worker process finished, by outcome.",
            labels=["worker", "outcome"],
        )
        for worker in beat.workers:
            index = str(worker.index)
            core = "none" if worker.core is None else str(worker.core)
            busy.add_metric([index, core], 1.0 if worker.state == "busy" else 0.0)
            cpu.add_metric([index, core], worker.cpu_percent / 100.0)
            memory.add_metric([index], worker.rss_bytes)
            tasks.add_metric([index, "succeeded"], worker.done)
            tasks.add_metric([index, "failed"], worker.failed)
        yield from (busy, cpu, memory, tasks)
        yield GaugeMetricFamily(
            "batchfarm_machine_cpu_ratio",
            "CPU use of the node's machine, 0 to 1 (all its cores).",
            value=beat.cpu_percent / 100.0,
        )


class NodeMetrics:
    """The node's ``/metrics`` server at ``listen`` (``http://host:port``), started at once.

    Raises :class:`ConfigError` naming ``[node] metrics_listen`` for an address that is not
    ``http://host:port`` or that this process cannot listen on.
    """

    def __init__(self, listen: str) -> None:
        problem = check_url(listen, ("http",))
        if problem is not None:
            raise ConfigError("node", KEY, listen, f"expected {problem}")
        parts = urlsplit(listen)
        # check_url made sure of both.
        assert parts.hostname is not None
        assert parts.port is not None
        self.collector = HeartbeatCollector()
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)
        try:
            server, thread = start_http_server(parts.port, parts.hostname, self.registry)
        except OSError as error:
            expected = f"expected an address this process can listen on ({error.strerror})"
            raise ConfigError("node", KEY, listen, expected) from None
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        #: Where the metrics are served.
        self.url = f"http://{host}:{server.server_port}/metrics"

    def update(self, beat: Heartbeat) -> None:
        """Serve ``beat``'s values from now on."""
        self.collector.update(beat)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def serve(listen: str) -> NodeMetrics | None:
    """The node's metrics server at ``listen``, or None when it is empty (the default)."""
    return NodeMetrics(listen) if listen else None
