"""``/metrics``: the grid as Prometheus text, its values those of the store and queues."""

from __future__ import annotations

import time

import sqlalchemy as sa
import zmq

from batchfarm.actors.api.metrics import ApiMetrics
from batchfarm.actors.api.metrics_grid import Capacity
from batchfarm.actors.api.metrics_runs import FAILURE_REASONS, reason_of
from batchfarm.actors.backends import TASKS
from batchfarm.actors.backends.store import NodeBeat, TaskRun, WorkerBeat
from batchfarm.actors.codec import encode_frame
from batchfarm.actors.manager.telemetry import TelemetryProcessor
from batchfarm.actors.messages import Heartbeat
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
    "batchfarm_task_queue_wait_seconds",
    "batchfarm_task_failures_total",
    "batchfarm_tasks_by_handler",
    "batchfarm_tasks_completed_total",
    "batchfarm_bytes_processed_total",
    "batchfarm_node_cpu_ratio",
    "batchfarm_node_resident_memory_bytes",
    "batchfarm_manager_loop_lag_seconds",
    "batchfarm_store_write_seconds",
    "batchfarm_build_info",
    "batchfarm_tasks_oldest_queued_age_seconds",
    "batchfarm_backends_up",
)


def scrape(grid) -> str:
    response = grid.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def beat(grid, node: str, *states: str, cpu: float = 0.0, rss: int = 0) -> None:
    workers = [
        WorkerBeat(index=i, pid=100 + i, state=s, rss_bytes=rss) for i, s in enumerate(states)
    ]
    grid.store.record_heartbeats(
        [
            NodeBeat(
                node=node,
                time=time.time(),
                state="up",
                cpu_percent=cpu,
                rss_bytes=rss,
                workers=workers,
            )
        ]
    )


def test_every_series_is_there_on_an_empty_grid(grid):
    text = scrape(grid)
    for name in SERIES:
        assert f"# HELP {name}" in text or f"# HELP {name.removesuffix('_total')}" in text
    assert metric(text, "batchfarm_tasks", state="queued") == 0
    assert metric(text, "batchfarm_jobs", state="running") == 0
    assert metric(text, "batchfarm_task_duplicate_runs_total") == 0
    assert metric(text, "batchfarm_tasks_oldest_queued_age_seconds") == 0


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
    oldest = time.time() - min(t.updated_at for t in grid.store.tasks(first))
    assert 0 < metric(text, "batchfarm_tasks_oldest_queued_age_seconds") <= oldest

    beat(grid, "node-1", "busy", "busy")
    text = scrape(grid)
    assert metric(text, "batchfarm_nodes", node_class="default", state="up") == 1
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


def test_tasks_by_handler_completed_and_bytes_come_from_the_store(grid):
    first = grid.client.post(f"{API}/jobs", json={"spec": noop_spec(parts=3)}).json()["id"]
    grid.run_tasks(fail=(f"{first}/noop/1",))
    text = scrape(grid)
    assert metric(text, "batchfarm_tasks_by_handler", handler="noop", state="succeeded") == 2
    assert metric(text, "batchfarm_tasks_by_handler", handler="noop", state="failed") == 1
    assert metric(text, "batchfarm_tasks_by_handler", handler="noop", state="queued") == 0
    assert metric(text, "batchfarm_tasks_completed_total", handler="noop", outcome="succeeded") == 2
    assert metric(text, "batchfarm_tasks_completed_total", handler="noop", outcome="failed") == 1
    stored = grid.store.tasks(first)
    for direction in ("in", "out"):
        total = sum(getattr(task, f"bytes_{direction}") for task in stored)
        found = metric(text, "batchfarm_bytes_processed_total", handler="noop", direction=direction)
        assert found == total
    # The same counters from a new registry over the same store: they survive a restart.
    again = ApiMetrics(grid.store, {}).render().decode()
    assert metric(again, "batchfarm_tasks_completed_total", handler="noop", outcome="failed") == 1


def test_runs_are_timed_waited_and_failures_classed(grid):
    first = grid.client.post(f"{API}/jobs", json={"spec": noop_spec(parts=2)}).json()["id"]
    grid.run_tasks(fail=(f"{first}/noop/0",))
    text = scrape(grid)
    assert metric(text, "batchfarm_task_queue_wait_seconds_count", handler="noop") == 2
    assert (
        metric(text, "batchfarm_task_queue_wait_seconds_bucket", handler="noop", le="3600.0") == 2
    )
    assert metric(text, "batchfarm_task_failures_total", handler="noop", reason="permanent") == 1
    # Write transactions were timed as the runs were recorded.
    assert metric(text, "batchfarm_store_write_seconds_count") > 0
    assert metric(text, "batchfarm_build_info", version="unknown") == 1


def run(error=None, reason=None, ok=False) -> TaskRun:
    return TaskRun(
        job="j", stage="s", part=0, ok=ok, node="n", worker=0, attempt=1,
        started_at=1.0, finished_at=2.0, error=error, reason=reason,
    )  # fmt: skip


def test_failure_reasons_are_a_small_fixed_set():
    cancelled = {"type": "TaskCancelled", "permanent": False}
    cases = {
        "error": run({"type": "TaskError", "message": "EIO", "permanent": False}),
        "permanent": run({"type": "TaskError", "message": "bad input", "permanent": True}),
        "time_limit": run({**cancelled, "message": "stopped: ran past its time limit of 5 s"}),
        "stopped": run({**cancelled, "message": "stopped: drain"}),
        "poison": run({"type": "TaskError", "permanent": False}, "poison: failed on a and b"),
        "unknown": run(None),
    }
    assert {reason_of(r) for r in cases.values()} == set(FAILURE_REASONS)
    for expected, failed in cases.items():
        assert reason_of(failed) == expected


def test_nodes_by_class_and_their_cpu_and_memory(grid):
    beat(grid, "node-1", "busy", "idle", cpu=50.0, rss=1000)
    grid.store.record_heartbeats(
        [NodeBeat(node="gpu-1", time=time.time(), state="up", node_class="gpu", cpu_percent=5.0)]
    )
    text = scrape(grid)
    assert metric(text, "batchfarm_nodes", node_class="default", state="up") == 1
    assert metric(text, "batchfarm_nodes", node_class="gpu", state="up") == 1
    assert metric(text, "batchfarm_nodes", node_class="gpu", state="lost") == 0
    assert metric(text, "batchfarm_node_cpu_ratio", node="node-1", node_class="default") == 0.5
    # The supervisor's own memory and its two workers'.
    memory = metric(
        text, "batchfarm_node_resident_memory_bytes", node="node-1", node_class="default"
    )
    assert memory == 3000
    grid.store.mark_nodes_lost(time.time() + 1)
    text = scrape(grid)
    assert "batchfarm_node_cpu_ratio{" not in text  # lost nodes report nothing
    assert metric(text, "batchfarm_nodes", node_class="gpu", state="lost") == 1


class Scaler:
    def capacity(self):
        return {"default": Capacity(desired=4, actual=3)}


def test_autoscaler_capacity_is_absent_until_something_feeds_it(grid):
    assert "batchfarm_autoscaler" not in scrape(grid)
    text = ApiMetrics(grid.store, {}, capacity=Scaler()).render().decode()
    assert metric(text, "batchfarm_autoscaler_desired_nodes", node_class="default") == 4
    assert metric(text, "batchfarm_autoscaler_actual_nodes", node_class="default") == 3


def test_telemetry_frames_rejects_and_the_loop_lag(grid):
    context = zmq.Context()
    telemetry = TelemetryProcessor(
        grid.store, context, "tcp://127.0.0.1:*", flush_interval=0.1, lost_after=5
    )
    sender = context.socket(zmq.DEALER)
    sender.setsockopt(zmq.LINGER, 0)
    try:
        metrics = ApiMetrics(grid.store, {}, telemetry=telemetry)
        sender.connect(telemetry.endpoint)
        sender.send(encode_frame(Heartbeat(node="node-t", sent_at=time.time(), state="up")))
        sender.send(b"not msgpack at all")
        deadline = time.monotonic() + 10
        while telemetry.counters.heartbeats + telemetry.counters.rejects.total < 2:
            assert time.monotonic() < deadline, "the frames never arrived"
            telemetry.poll(100)
        telemetry.flush()
        calls = []
        metrics.loop_lag.start(lambda delay, callback: calls.append(callback))
        calls.pop()()  # the probe runs (late: it was due in half a second) and re-arms
        assert len(calls) == 1
        text = metrics.render().decode()
    finally:
        sender.close()
        telemetry.close()
        context.destroy(linger=0)
    assert metric(text, "batchfarm_telemetry_frames_total", kind="heartbeat") == 1
    assert metric(text, "batchfarm_telemetry_written_total", kind="heartbeat") == 1
    assert (
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("batchfarm_telemetry_rejected_frames_total{")
        )
        == 1
    )
    assert metric(text, "batchfarm_telemetry_dropped_samples_total") == 0
    assert metric(text, "batchfarm_node_telemetry_dropped_frames_total", node="node-t") == 0
    assert metric(text, "batchfarm_telemetry_pending", kind="heartbeat") == 0
    assert metric(text, "batchfarm_manager_loop_lag_seconds_count") == 1
    # Called before it was due: no lag.
    assert metric(text, "batchfarm_manager_loop_lag_seconds_sum") == 0


def test_a_failing_store_leaves_the_grid_out_and_says_so(grid):
    assert metric(scrape(grid), "batchfarm_backends_up") == 1
    with grid.store.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE tasks RENAME TO tasks_away"))
    text = scrape(grid)  # still 200: the manager's own figures are what say most now
    assert metric(text, "batchfarm_backends_up") == 0
    assert "batchfarm_tasks{" not in text
    assert metric(text, "batchfarm_build_info", version="unknown") == 1
    with grid.store.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE tasks_away RENAME TO tasks"))
    assert metric(scrape(grid), "batchfarm_backends_up") == 1
