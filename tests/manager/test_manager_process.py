"""``batchfarm manager`` and ``batchfarm node`` as real processes running a two-stage job."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from batchfarm.actors.backends import TASKS, open_blobs, open_queue, open_store, open_task_queues
from batchfarm.actors.manager.cancel import cancel_job
from batchfarm.actors.manager.spec import parse_spec
from batchfarm.actors.manager.submit import submit_job
from tests.manager.managerproc import ManagerGrid
from tests.worker.grid import wait_for


@pytest.fixture
def grid(tmp_path):
    processes = ManagerGrid(tmp_path)
    yield processes.manager, processes.node, processes.settings
    processes.close()


def two_stage_job(tmp_path: Path, parts: int, seconds: float):
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(parts):
        (folder / f"clip{n}.bin").write_bytes(bytes([n]) * 100)
    spec = {
        "name": "demo",
        "inputs": {"files": ["in/*.bin"]},
        "stages": [
            {
                "name": "work",
                "handler": "tests.worker.handlers:sleep",
                "params": {"seconds": seconds},
            },
            {
                "name": "sums",
                "handler": "checksum",
                "mode": "fan_in",
                "params": {"manifest": "sums.txt"},
            },
        ],
    }
    return parse_spec(spec, source="job.toml", base_dir=tmp_path)


def submit(settings, spec) -> str:
    store = open_store(settings.store)
    blobs = open_blobs(settings.storage)
    tasks = open_task_queues(settings.queue)
    try:
        return submit_job(spec, store=store, blobs=blobs, tasks=tasks, defaults=settings.tasks)
    finally:
        tasks.close()
        blobs.close()
        store.close()


def job_state(settings, job_id):
    with open_store(settings.store) as store:
        job = store.job(job_id)
        return None if job is None else job.state


def test_a_two_stage_job_runs_through_manager_and_node(tmp_path, grid):
    start_manager, start_node, settings = grid
    manager = start_manager()
    node = start_node(node_workers=2)
    job_id = submit(settings, two_stage_job(tmp_path, parts=4, seconds=0.2))
    wait_for(lambda: job_state(settings, job_id) == "succeeded", timeout=60, what="job done")
    with open_store(settings.store) as store:
        tasks = store.tasks(job_id)
        assert sorted((t.stage, t.part, t.state) for t in tasks) == [
            ("sums", 0, "succeeded"),
            *[("work", n, "succeeded") for n in range(4)],
        ]

    def node_known() -> bool:
        with open_store(settings.store) as store:
            return [(n.id, n.state) for n in store.nodes()] == [("node-g", "up")]

    wait_for(node_known, timeout=20, what="the node's heartbeats in the store")
    blobs = open_blobs(settings.storage)
    manifest = blobs.read(f"jobs/{job_id}/sums/0/sums.txt").decode()
    blobs.close()
    assert sorted(line.split()[1] for line in manifest.splitlines()) == [
        f"jobs/{job_id}/work/{n}/slept.txt" for n in range(4)
    ]
    manager.proc.send_signal(signal.SIGTERM)
    assert manager.proc.wait(20) == 0, manager.output()
    assert node.proc.poll() is None  # the node does not need the manager


def test_a_manager_killed_mid_job_is_restarted_and_the_job_counts_each_task_once(tmp_path, grid):
    start_manager, start_node, settings = grid
    first = start_manager("manager-1")
    start_node(node_workers=2)
    job_id = submit(settings, two_stage_job(tmp_path, parts=12, seconds=0.3))

    def some_done() -> bool:
        with open_store(settings.store) as store:
            return any(t.state == "succeeded" for t in store.tasks(job_id))

    wait_for(some_done, timeout=30, what="some tasks done")
    first.proc.kill()  # kill -9: completions wait in their queue
    first.proc.wait(10)
    start_manager("manager-2")
    wait_for(lambda: job_state(settings, job_id) == "succeeded", timeout=90, what="job done")
    with open_store(settings.store) as store:
        tasks = store.tasks(job_id)
        assert len(tasks) == 13
        assert all(t.state == "succeeded" for t in tasks)
        assert [t.attempts for t in tasks] == [1] * 13  # every run recorded once


def test_a_cancelled_job_stops_running_and_queued_tasks_and_does_not_advance(tmp_path, grid):
    start_manager, start_node, settings = grid
    start_manager()
    start_node(node_workers=2)
    job_id = submit(settings, two_stage_job(tmp_path, parts=8, seconds=3.0))
    with open_queue(settings.queue, TASKS) as queue:
        wait_for(lambda: queue.depth().in_flight >= 2, timeout=20, what="tasks running")
        with open_store(settings.store) as store:
            blobs = open_blobs(settings.storage)
            assert cancel_job(store, blobs, job_id) is True
            blobs.close()
        # Running tasks stop within seconds; queued ones are dropped unrun.
        wait_for(lambda: queue.depth().backlog == 0, timeout=30, what="the job's tasks gone")
        assert queue.depth().dead == 0
    with open_store(settings.store) as store:
        assert store.job(job_id).state == "cancelled"
        states = sorted({(t.stage, t.state) for t in store.tasks(job_id)})
        assert ("sums", "queued") not in states
        assert {stage for stage, _ in states} == {"work"}  # the fan-in stage never started
        assert all(state in ("cancelled", "succeeded") for _, state in states)
        assert sum(t.state == "succeeded" for t in store.tasks(job_id)) < 8


def test_a_scheduled_job_waits_in_the_store_until_its_time(tmp_path, grid):
    start_manager, start_node, settings = grid
    start_manager()
    start_node(node_workers=2)
    spec = parse_spec(
        {"after": "3s", "stages": [{"handler": "noop", "parts": 4}]},
        source="job.toml",
        base_dir=tmp_path,
    )
    job_id = submit(settings, spec)
    with open_store(settings.store) as store:
        job = store.job(job_id)
        assert job.state == "scheduled"
        start_at = job.start_at
    with open_queue(settings.queue, TASKS) as queue:
        assert queue.depth().backlog == 0  # nothing queued before its time
    wait_for(lambda: job_state(settings, job_id) == "succeeded", timeout=30, what="job done")
    with open_store(settings.store) as store:
        job = store.job(job_id)
        assert job.started_at >= start_at
        assert len(store.tasks(job_id)) == 4


def test_a_run_stopped_and_handed_back_costs_its_node_time_beside_the_run_that_finished(
    tmp_path,
):
    grid = ManagerGrid(tmp_path, autoscale_price_per_hour=3.6)  # $0.001 a second, 1 worker
    try:
        grid.manager()
        first = grid.node("node-a", node_workers=1, node_drain_grace=60)
        spec = parse_spec(
            {
                "name": "one",
                "stages": [
                    {
                        "name": "work",
                        "handler": "tests.worker.handlers:sleep",
                        "parts": 1,
                        "params": {"seconds": 3.0},
                    },
                ],
            },
            source="job.toml",
            base_dir=tmp_path,
        )
        submitted = time.time()
        job_id = submit(grid.settings, spec)
        with open_queue(grid.settings.queue, TASKS) as queue:
            wait_for(lambda: queue.depth().in_flight == 1, timeout=20, what="the task running")
            time.sleep(1.0)
            # A second SIGTERM stops the running task and hands it back, without an outcome.
            first.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            first.proc.send_signal(signal.SIGTERM)
            assert first.proc.wait(20) == 0
            stopped = time.time()
            assert queue.depth().visible == 1
        grid.node("node-b", node_workers=1)
        wait_for(lambda: job_state(grid.settings, job_id) == "succeeded", timeout=60, what="done")
        with open_store(grid.settings.store) as store:
            [task] = store.tasks(job_id)
            assert (task.node_id, task.attempts, task.failed_nodes or []) == ("node-b", 2, [])
            finished = task.finished_at - task.started_at  # the run that finished
            cost = store.task_costs(job_id, [("work", 0)])[f"{job_id}/work/0"]
        # Both runs count: the one stopped on node-a ran a second or more (a quarter is
        # enough to tell it from rounding), and no longer than from the submit to the stop.
        assert (finished + 0.25) * 0.001 < cost <= (finished + stopped - submitted) * 0.001
    finally:
        grid.close()
