"""What the store keeps about a task beyond its state: failed nodes, reasons, handler results."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from batchfarm.actors.backends.store import (
    JobState,
    NewJob,
    NewStage,
    NewTask,
    StageState,
    Store,
    TaskRun,
    TaskState,
    TaskUpdate,
)


def make_job(store: Store) -> None:
    store.create_job(NewJob("job-1", [NewStage("encode", 0, "transcode")]), [NewTask("encode", 0)])


def run(node: str, attempt: int, *, ok: bool = False, **fields: Any) -> TaskRun:
    error = None if ok else {"type": "TaskError", "message": "boom"}
    base = TaskRun("job-1", "encode", 0, ok, node, 0, attempt, 100.0 * attempt, 100.0 * attempt + 1)
    return replace(base, error=error, **fields)


def test_a_tasks_failed_nodes_are_kept_each_once_and_a_reason_with_them(store: Store) -> None:
    make_job(store)
    assert store.task("job-1", "encode", 0).failed_nodes == []
    store.record_runs([run("node-a", 1), run("node-a", 2)])
    task = store.task("job-1", "encode", 0)
    assert (task.state, task.failed_nodes) == ("retrying", ["node-a"])
    why = "poison: failed on nodes node-a and node-b"
    applied = store.record_runs([run("node-b", 3, final=True, reason=why)])
    assert applied.failed == ("job-1/encode/0",)
    task = store.task("job-1", "encode", 0)
    assert (task.state, task.reason, task.failed_nodes) == ("failed", why, ["node-a", "node-b"])
    # The same failure reported again is a redelivery: nothing changes.
    assert store.record_runs([run("node-b", 3, final=True, reason=why)]).redelivered


def test_a_retry_forgets_attempts_and_failed_nodes_and_reopens_job_and_stage(store: Store) -> None:
    make_job(store)
    store.record_runs([run("node-a", 1, final=True)])
    store.set_stage_state("job-1", "encode", StageState.FAILED, "task failed", finished_at=5.0)
    store.set_job_state("job-1", JobState.FAILED, "task failed", finished_at=5.0)

    update = TaskUpdate("job-1", "encode", 0, TaskState.QUEUED, attempts=0, failed_nodes=[])
    assert store.update_tasks([update]) == 1
    store.set_stage_state("job-1", "encode", StageState.RUNNING, reopen=True)
    store.set_job_state("job-1", JobState.RUNNING, reopen=True)
    task = store.task("job-1", "encode", 0)
    assert (task.state, task.attempts, task.failed_nodes, task.reason) == ("queued", 0, [], None)
    job, [stage] = store.job("job-1"), store.stages("job-1")
    assert (job.state, job.reason, job.finished_at) == ("running", None, None)
    assert (stage.state, stage.finished_at) == ("running", None)

    # The retried run is the task's first again, on a clean slate.
    assert store.record_runs([run("node-b", 1, final=True)]).failed == ("job-1/encode/0",)
    assert store.task("job-1", "encode", 0).failed_nodes == ["node-b"]


def test_a_succeeded_runs_handler_result_is_kept_with_its_task(store: Store) -> None:
    make_job(store)
    facts = {"duration_s": 4.0, "video": {"codec": "h264", "height": 720}, "audio": None}
    store.record_runs([run("node-a", 1)])  # a failed run keeps no result
    assert store.task("job-1", "encode", 0).result is None
    store.record_runs([run("node-b", 2, ok=True, result=facts)])
    assert store.task("job-1", "encode", 0).result == facts
    # A duplicate run of the succeeded task changes nothing it recorded.
    store.record_runs([run("node-c", 3, ok=True, result={"other": 1})])
    assert store.task("job-1", "encode", 0).result == facts
