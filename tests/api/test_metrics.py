"""``/metrics``: the grid as Prometheus text, its values those of the store and queues."""

from __future__ import annotations

import time

from batchfarm.actors.backends import TASKS
from batchfarm.actors.backends.store import NodeBeat, WorkerBeat
from tests.api.apigrid import API, metric, noop_spec

SERIES = (
    "batchfarm_jobs",
    "batchfarm_tasks",
    "batchfarm_tasks_waiting",
    "batchfarm_queue_messages",
    "batchfarm_queue_dead_letters",
    "batchfarm_nodes",
    "batchfarm_workers",
    "batchfarm_task_duplicate_runs_total",
    "batchfarm_task_duration_seconds",
)


def scrape(grid) -> str:
    response = grid.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def beat(grid, node: str, *states: str) -> None:
    workers = [WorkerBeat(index=i, pid=100 + i, state=s) for i, s in enumerate(states)]
    grid.store.record_heartbeats(
        [NodeBeat(node=node, time=time.time(), state="up", workers=workers)]
    )


def test_every_series_is_there_on_an_empty_grid(grid):
    text = scrape(grid)
    for name in SERIES:
        assert f"# HELP {name}" in text or f"# HELP {name.removesuffix('_total')}" in text
    assert metric(text, "batchfarm_tasks", state="queued") == 0
    assert metric(text, "batchfarm_jobs", state="running") == 0
    assert metric(text, "batchfarm_task_duplicate_runs_total") == 0


def test_the_values_are_the_store_s_and_the_queues(grid):
    first = grid.client.post(f"{API}/jobs", json={"spec": noop_spec(parts=3)}).json()["id"]
    grid.client.post(f"{API}/jobs", json={"spec": noop_spec(parts=2, after="1h")})
    text = scrape(grid)
    queued = len(grid.store.tasks(first, states=["queued"]))
    assert queued == 3
    assert metric(text, "batchfarm_tasks", state="queued") == queued
    assert metric(text, "batchfarm_tasks", state="pending") == 2
    assert metric(text, "batchfarm_jobs", state="running") == 1
    assert metric(text, "batchfarm_jobs", state="scheduled") == 1
    depth = grid.tasks.named(TASKS).depth()
    assert metric(text, "batchfarm_queue_messages", queue=TASKS, state="visible") == depth.visible
    assert metric(text, "batchfarm_queue_messages", queue=TASKS, state="in_flight") == 0
    assert metric(text, "batchfarm_tasks_waiting", reason="no_node") == 3
    assert metric(text, "batchfarm_tasks_waiting", reason="start_time") == 2

    beat(grid, "node-1", "busy", "busy")
    text = scrape(grid)
    assert metric(text, "batchfarm_nodes", state="up") == 1
    assert metric(text, "batchfarm_workers", state="busy") == 2
    assert metric(text, "batchfarm_tasks_waiting", reason="workers_busy") == 3
    assert metric(text, "batchfarm_tasks_waiting", reason="no_node") == 0
    grid.client.post(f"{API}/nodes/node-1/cordon")
    assert metric(scrape(grid), "batchfarm_tasks_waiting", reason="nodes_unavailable") == 3
    grid.client.post(f"{API}/nodes/node-1/uncordon")
    beat(grid, "node-1", "idle", "busy")
    assert metric(scrape(grid), "batchfarm_tasks_waiting", reason="queue") == 3


def test_recorded_runs_are_timed_by_handler(grid):
    grid.client.post(f"{API}/jobs", json={"spec": noop_spec(parts=3)})
    grid.run_tasks()
    text = scrape(grid)
    assert metric(text, "batchfarm_task_duration_seconds_count", handler="noop") == 3
    # The in-process worker's runs take 0.5 s each.
    assert metric(text, "batchfarm_task_duration_seconds_sum", handler="noop") == 1.5
    assert metric(text, "batchfarm_task_duration_seconds_bucket", handler="noop", le="0.5") == 3
    assert metric(text, "batchfarm_tasks", state="succeeded") == 3
    assert metric(text, "batchfarm_tasks", state="queued") == 0
    assert metric(text, "batchfarm_queue_messages", queue=TASKS, state="visible") == 0
