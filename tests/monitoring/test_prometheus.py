"""A real Prometheus scrapes a running grid: every series family, and every dashboard panel.

One grid for the module: ``batchfarm manager`` with its autoscaler (the local provider,
keeping one node of its own) and a node of two workers serving its own ``/metrics``, both
scraped every second by Debian's ``prometheus``. A long job of 100 short parts runs while
the tests query Prometheus' HTTP API, beside a small job whose two parts fail for good (bad
input), so failures, dead letters and their reasons have values too.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchfarm.actors.manager.spec import parse_spec
from tests.manager.jobs_grid import job, submit
from tests.manager.managerproc import ManagerGrid
from tests.monitoring.prometheus import Prometheus
from tests.ports import free_port
from tests.worker.grid import wait_for

pytestmark = pytest.mark.slow

SLEEP = "tests.worker.handlers:sleep"
FAIL = "tests.worker.handlers:fail"
PARTS = 100
DASHBOARD = Path(__file__).parents[2] / "config" / "grafana" / "dashboards" / "batchfarm.json"
#: What ``$__rate_interval`` stands for here: twenty of the test's one-second scrapes.
RATE_INTERVAL = "20s"


@dataclass
class Watched:
    """The grid, its Prometheus and the ids of the running job and the failed one."""

    grid: ManagerGrid
    prometheus: Prometheus
    running: str
    failed: str

    def still_running(self) -> None:
        state = job(self.grid.settings, self.running).state
        assert state == "running", f"job {self.running} is {state}: the queries came too late"


def sleep_spec(folder: Path) -> Any:
    inputs = folder / "in"
    inputs.mkdir()
    for n in range(PARTS):
        (inputs / f"part{n:02d}.bin").write_bytes(bytes([n]) * 100)
    spec = {
        "name": "watched",
        "inputs": {"files": ["in/*.bin"]},
        "stages": [{"name": "work", "handler": SLEEP, "params": {"seconds": 0.5}}],
    }
    return parse_spec(spec, source="job.toml", base_dir=folder)


def failing_spec() -> Any:
    stage = {"name": "bad", "handler": FAIL, "parts": 2, "params": {"permanent": True}}
    return parse_spec({"name": "broken", "stages": [stage]}, source="job.toml", base_dir=".")


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    folder = tmp_path_factory.mktemp("monitoring")
    grid = ManagerGrid(folder)
    node_metrics = f"127.0.0.1:{free_port()}"
    prometheus: Prometheus | None = None
    try:
        # The autoscaler keeps one node of its own ("local-1") beside the test's node-m,
        # which serves its own /metrics (the fleet's nodes do not: they would share a port).
        manager = grid.manager(
            autoscale_provider="local",
            autoscale_min_nodes=1,
            autoscale_max_nodes=1,
            autoscale_interval=1,
        )
        grid.node("node-m", node_workers=2, node_metrics_listen=f"http://{node_metrics}")
        prometheus = Prometheus(
            folder / "prometheus",
            {
                "batchfarm-manager": grid.api_url.removeprefix("http://"),
                "batchfarm-nodes": node_metrics,
            },
        )
        prometheus.wait_ready()
        failed = submit(grid.settings, failing_spec())
        running = submit(grid.settings, sleep_spec(folder))

        def data_in() -> bool:
            assert manager.proc.poll() is None, manager.output()
            return (
                job(grid.settings, failed).state == "failed"
                and len(prometheus.query("up == 1")) == 2
                and _done(prometheus) >= 4
                # The node's heartbeats reach the manager once its link is up (ZeroMQ
                # reconnects with backoff if the node came up first): wait for a few.
                and bool(prometheus.query("count_over_time(batchfarm_node_cpu_ratio[20s]) >= 3"))
            )

        wait_for(data_in, 60, "scraped series with runs done and failed")
        time.sleep(2)  # more scrapes, so rates over the window have two points or more
        yield Watched(grid, prometheus, running, failed)
    finally:
        if prometheus is not None:
            prometheus.close()
        grid.close()


def _done(prometheus: Prometheus) -> float:
    found = prometheus.query(f'batchfarm_tasks_completed_total{{handler="{SLEEP}"}}')
    return sum(float(r["value"][1]) for r in found if r["metric"]["outcome"] == "succeeded")


def test_every_series_family_of_the_grid_is_in_prometheus(watched: Watched) -> None:
    p = watched.prometheus
    watched.still_running()
    manager = 'job="batchfarm-manager"'
    # Jobs and tasks by state, and by handler.
    assert p.value(f'batchfarm_jobs{{{manager}, state="running"}}') == 1
    assert p.value(f'batchfarm_jobs{{{manager}, state="failed"}}') == 1
    assert p.value(f'batchfarm_tasks{{{manager}, state="succeeded"}}') >= 4
    by_handler = f'batchfarm_tasks_by_handler{{handler="{SLEEP}", state="succeeded"}}'
    assert p.value(by_handler) >= 4
    assert p.value(f'batchfarm_tasks_by_handler{{handler="{FAIL}", state="failed"}}') == 2
    # Throughput, bytes, failures by reason.
    assert p.value(f'batchfarm_tasks_completed_total{{handler="{FAIL}", outcome="failed"}}') == 2
    read = p.value(f'batchfarm_bytes_processed_total{{handler="{SLEEP}", direction="in"}}')
    assert read >= 4 * 100
    assert read % 100 == 0  # each part read its 100-byte input
    assert p.value(f'batchfarm_bytes_processed_total{{handler="{SLEEP}", direction="out"}}') > 0
    assert p.value(f'batchfarm_task_failures_total{{handler="{FAIL}", reason="permanent"}}') == 2
    assert p.query("batchfarm_task_failures_total{reason!='permanent'}") == []
    # Durations and queue waits, per handler, with buckets up to hours.
    count = p.value(f'batchfarm_task_duration_seconds_count{{handler="{SLEEP}"}}')
    assert count >= 4
    assert p.value(f'batchfarm_task_duration_seconds_bucket{{handler="{SLEEP}", le="0.1"}}') == 0
    assert p.value(f'batchfarm_task_duration_seconds_bucket{{handler="{SLEEP}", le="3600.0"}}') == (
        count
    )
    assert p.value(f'batchfarm_task_queue_wait_seconds_count{{handler="{SLEEP}"}}') >= 4
    # Queue depth by state, dead letters.
    states = {r["metric"]["state"] for r in p.query('batchfarm_queue_messages{queue="tasks"}')}
    assert states == {"visible", "in_flight", "delayed"}
    assert p.value('batchfarm_queue_messages{queue="tasks", state="visible"}') > 0
    assert len(p.query("batchfarm_queue_dead_letters")) >= 2  # tasks queues and completions
    # Nodes, workers, per-node CPU and memory.
    assert p.value('batchfarm_nodes{node_class="default", state="up"}') == 2
    # node-m's two workers, and one a core for the autoscaler's node (workers = "auto").
    workers = 2 + len(os.sched_getaffinity(0))
    assert p.value('sum(batchfarm_workers{state=~"busy|idle"})') == workers
    assert 0 <= p.value('batchfarm_node_cpu_ratio{node="node-m"}') <= 1
    assert p.value('batchfarm_node_resident_memory_bytes{node="node-m"}') > 10 * 2**20
    # The manager's health.
    assert p.value("batchfarm_manager_loop_lag_seconds_count") > 0
    assert p.value("batchfarm_store_write_seconds_count") > 0
    assert p.value('batchfarm_telemetry_frames_total{kind="heartbeat"}') > 0
    assert p.value('batchfarm_telemetry_written_total{kind="heartbeat"}') > 0
    assert p.value("batchfarm_telemetry_dropped_samples_total") == 0
    assert p.value('batchfarm_node_telemetry_dropped_frames_total{node="node-m"}') == 0
    assert len(p.query("batchfarm_build_info")) == 1
    # The autoscaler: one node wanted and running, its decisions counted.
    assert p.value('batchfarm_autoscaler_desired_nodes{node_class="default"}') == 1
    assert p.value('batchfarm_autoscaler_actual_nodes{node_class="default"}') >= 1
    assert p.value("sum(batchfarm_scaling_events_total)") >= 1


def test_the_node_serves_its_workers_core_by_core(watched: Watched) -> None:
    p = watched.prometheus
    node = 'job="batchfarm-nodes"'
    busy = p.query(f"batchfarm_worker_busy{{{node}}}")
    assert sorted(r["metric"]["worker"] for r in busy) == ["0", "1"]
    assert all(r["metric"]["core"] for r in busy)
    assert 0 <= p.value(f"max(batchfarm_worker_cpu_ratio{{{node}}})") <= 1.5
    assert p.value(f'sum(batchfarm_worker_tasks_total{{{node}, outcome="succeeded"}})') >= 4
    assert p.value(f"batchfarm_machine_cpu_ratio{{{node}}}") >= 0


def test_no_label_carries_a_job_or_task_id(watched: Watched) -> None:
    series = watched.prometheus.query('{__name__=~"batchfarm_.+"}')
    assert len(series) > 50
    values = {value for s in series for value in s["metric"].values()}
    for job_id in (watched.running, watched.failed):
        assert not [v for v in values if job_id in v]


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (panel title, expr) of the dashboard, rows' nested panels included."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], target["expr"]))
    return found


def test_every_dashboard_panel_returns_data(watched: Watched) -> None:
    queries = panel_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 25
    empty = []
    for title, expr in queries:
        concrete = expr.replace("$__rate_interval", RATE_INTERVAL)
        assert "$" not in concrete, f"{title}: a variable the test does not fill in: {expr}"
        if not watched.prometheus.query(concrete):
            empty.append((title, expr))
    watched.still_running()
    assert empty == [], f"panels without data: {empty}"


def test_every_series_the_alerts_use_is_scraped(watched: Watched) -> None:
    groups = yaml.safe_load((Path(__file__).parents[2] / "config" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in groups["groups"] for rule in group["rules"]]
    names = {name for expr in exprs for name in re.findall(r"\bbatchfarm_[a-z_]+", expr)}
    assert len(names) >= 6
    missing = [name for name in sorted(names) if not watched.prometheus.query(name)]
    assert missing == []
