"""Whether a stage is done: every one of its tasks succeeded, asked in one query."""

from __future__ import annotations

from batchfarm.actors.backends.store import (
    NewJob,
    NewStage,
    NewTask,
    StageMode,
    Store,
    TaskRun,
    TaskState,
    TaskUpdate,
)


def test_a_stage_is_done_once_every_task_succeeded(store: Store) -> None:
    stages = [
        NewStage("encode", 0, "transcode"),
        NewStage("concat", 1, "concat", mode=StageMode.FAN_IN),
    ]
    store.create_job(NewJob("job-1", stages), [NewTask("encode", p) for p in range(3)])
    assert not store.stage_done("job-1", "encode")  # pending tasks
    assert not store.stage_done("job-1", "concat")  # no task yet: nothing is done
    assert not store.stage_done("job-9", "encode")  # no such job

    runs = [TaskRun("job-1", "encode", p, True, "node-a", 0, 1, 100.0, 101.0) for p in (0, 1)]
    store.record_runs(runs)
    store.update_tasks([TaskUpdate("job-1", "encode", 2, TaskState.RETRYING)])
    assert not store.stage_done("job-1", "encode")  # one task still to succeed

    store.record_runs([TaskRun("job-1", "encode", 2, True, "node-b", 1, 2, 102.0, 103.0)])
    assert store.stage_done("job-1", "encode")
    # A re-run of a succeeded task changes nothing.
    store.record_runs([TaskRun("job-1", "encode", 2, False, "node-c", 0, 3, 104.0, 105.0)])
    assert store.stage_done("job-1", "encode")

    store.add_tasks("job-1", [NewTask("concat", 0)])
    assert not store.stage_done("job-1", "concat")
