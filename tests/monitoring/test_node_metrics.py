"""A node's own ``/metrics`` ([node] metrics_listen): its workers from its latest heartbeat."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from batchfarm.actors.errors import ConfigError
from batchfarm.actors.messages import Heartbeat, WorkerStatus
from batchfarm.actors.runtime import ExitCode
from batchfarm.supervisor.metrics import NodeMetrics, serve
from tests.api.apigrid import metric
from tests.node.nodeproc import NodeProcess
from tests.ports import free_port


def heartbeat() -> Heartbeat:
    return Heartbeat(
        node="node-x",
        sent_at=time.time(),
        state="up",
        cpu_percent=25.0,
        workers=[
            WorkerStatus(index=0, pid=10, state="busy", core=2, cpu_percent=97.0, done=5),
            WorkerStatus(index=1, pid=11, state="idle", core=None, failed=1, rss_bytes=4096),
        ],
    )


def test_the_node_serves_its_latest_heartbeat():
    served = NodeMetrics(f"http://127.0.0.1:{free_port()}")
    try:
        before = httpx.get(served.url).text
        assert "batchfarm_worker_busy" not in before  # nothing to say before a heartbeat
        served.update(heartbeat())
        text = httpx.get(served.url).text
    finally:
        served.close()
    assert metric(text, "batchfarm_worker_busy", worker="0", core="2") == 1
    assert metric(text, "batchfarm_worker_busy", worker="1", core="none") == 0
    assert metric(text, "batchfarm_worker_cpu_ratio", worker="0", core="2") == 0.97
    assert metric(text, "batchfarm_worker_resident_memory_bytes", worker="1") == 4096
    assert metric(text, "batchfarm_worker_tasks_total", worker="0", outcome="succeeded") == 5
    assert metric(text, "batchfarm_worker_tasks_total", worker="1", outcome="failed") == 1
    assert metric(text, "batchfarm_machine_cpu_ratio") == 0.25
    with pytest.raises(httpx.TransportError):
        httpx.get(served.url)  # closed: the port is free again


def test_off_by_default_and_bad_addresses_name_the_setting():
    assert serve("") is None
    with pytest.raises(ConfigError, match=r"\[node\] metrics_listen.*http://host:port"):
        NodeMetrics("tcp://127.0.0.1:9470")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=r"\[node\] metrics_listen.*can listen on"):
            NodeMetrics(f"http://127.0.0.1:{port}")


def test_a_node_with_a_bad_metrics_address_stops_at_start(tmp_path):
    node = NodeProcess(tmp_path / "state", env={"BATCHFARM_NODE_METRICS_LISTEN": "http://x:0"})
    try:
        assert node.wait(30) == ExitCode.CONFIG
        assert "[node] metrics_listen" in node.output()
    finally:
        node.close()
