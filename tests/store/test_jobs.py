"""Jobs, stages and tasks: creation, progress counts, state moves, idempotent runs."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from batchfarm.actors.backends.store import (
    JobState,
    NewJob,
    NewStage,
    NewTask,
    NodeBeat,
    RunsApplied,
    StageMode,
    Store,
    TaskRun,
    TaskState,
    TaskUpdate,
    WorkerBeat,
    task_id,
)
from batchfarm.actors.errors import StoreError


def two_stage_job(job_id: str = "job-1", **fields: Any) -> NewJob:
    stages = [
        NewStage("encode", 0, "transcode", {"crf": 23, "preset": "fast"}),
        NewStage("concat", 1, "concat", {}, node_class="highmem", mode=StageMode.FAN_IN),
    ]
    return replace(NewJob(job_id, stages), **fields)


def run(part: int, *, ok: bool = True, start: float = 100.0, **fields: Any) -> TaskRun:
    base = TaskRun("job-1", "encode", part, ok, "node-a", 0, 1, start, start + 2.5)
    return replace(base, **fields)


def test_create_a_job_with_stages_and_2000_tasks_and_count_them(store: Store) -> None:
    job = two_stage_job(
        name="month-end claims",
        priority=5,
        spec={"inputs": ["s3://in/*.mp4"], "retries": 3},
        start_at=1_700_000_000.25,
        deadline=1_700_086_400.5,
    )
    tasks = (NewTask("encode", part, inputs=[f"in/{part}.mp4"]) for part in range(2000))

    assert store.create_job(job, tasks) == 2000

    stored = store.job("job-1")
    assert stored is not None
    assert (stored.name, stored.state, stored.priority) == ("month-end claims", "pending", 5)
    assert stored.spec == {"inputs": ["s3://in/*.mp4"], "retries": 3}
    assert (stored.start_at, stored.deadline) == (1_700_000_000.25, 1_700_086_400.5)
    assert stored.started_at is None

    counts = store.stage_counts("job-1")
    assert [(c.stage.name, c.stage.index, c.total) for c in counts] == [
        ("encode", 0, 2000),
        ("concat", 1, 0),
    ]
    assert counts[0].counts == {"pending": 2000}
    assert counts[1].counts == {}
    assert counts[1].stage.mode == "fan_in"
    assert counts[1].stage.node_class == "highmem"
    assert counts[0].stage.params == {"crf": 23, "preset": "fast"}

    first = store.tasks("job-1", stage="encode", limit=3)
    assert [(t.part, t.inputs, t.state) for t in first] == [
        (0, ["in/0.mp4"], "pending"),
        (1, ["in/1.mp4"], "pending"),
        (2, ["in/2.mp4"], "pending"),
    ]
    assert first[0].task_id == "job-1/encode/0"
    assert len(store.tasks("job-1", limit=None)) == 2000
    assert [t.part for t in store.tasks("job-1", limit=2, offset=1998)] == [1998, 1999]


def test_creating_a_job_is_all_or_nothing(store: Store) -> None:
    def tasks() -> list[NewTask]:
        good = [NewTask("encode", part) for part in range(700)]
        return [*good, NewTask("no-such-stage", 700)]

    with pytest.raises(StoreError, match=r"create job 'job-1'.*unknown stage 'no-such-stage'"):
        store.create_job(two_stage_job(), tasks())
    assert store.job("job-1") is None
    assert store.tasks("job-1") == []
    assert store.stages("job-1") == []


def test_a_job_id_is_taken_once(store: Store) -> None:
    store.create_job(two_stage_job())
    with pytest.raises(StoreError, match=r"create job 'job-1': a job with this id exists"):
        store.create_job(two_stage_job())


def test_ids_differ_by_case(store: Store) -> None:
    # Ids are S3 prefixes: "Job" and "job" are two jobs, on MySQL's collation too.
    store.create_job(two_stage_job("Clip"), [NewTask("encode", 0)])
    store.create_job(two_stage_job("clip"), [NewTask("encode", 0), NewTask("encode", 1)])
    assert [c.total for c in store.stage_counts("Clip")][:1] == [1]
    assert [c.total for c in store.stage_counts("clip")][:1] == [2]


def test_add_tasks_skips_those_that_exist(store: Store) -> None:
    store.create_job(two_stage_job(), [NewTask("encode", p) for p in range(4)])
    chained = [NewTask("concat", p, inputs=[f"jobs/job-1/encode/{p}/out.mp4"]) for p in (0, 1)]

    assert store.add_tasks("job-1", chained) == ["job-1/concat/0", "job-1/concat/1"]
    more = [*chained, NewTask("concat", 2), NewTask("concat", 2)]
    assert store.add_tasks("job-1", more) == ["job-1/concat/2"]

    concat = store.tasks("job-1", stage="concat")
    assert [(t.part, t.inputs) for t in concat] == [
        (0, ["jobs/job-1/encode/0/out.mp4"]),
        (1, ["jobs/job-1/encode/1/out.mp4"]),
        (2, []),
    ]


def test_task_updates_move_states_and_keep_unset_fields(store: Store) -> None:
    store.create_job(two_stage_job(), [NewTask("encode", p) for p in range(3)])
    queued = (TaskUpdate("job-1", "encode", p, TaskState.QUEUED, queued_at=10.0) for p in range(4))
    assert store.update_tasks(queued) == 3  # part 3 does not exist
    moves = [
        TaskUpdate("job-1", "encode", 0, TaskState.RUNNING, node="n1", worker=1, attempts=1),
        TaskUpdate("job-1", "encode", 1, TaskState.PENDING, reason="waiting for a gpu node"),
    ]
    assert store.update_tasks(moves) == 2
    tasks = {t.part: t for t in store.tasks("job-1")}
    assert (tasks[0].state, tasks[0].node_id, tasks[0].worker, tasks[0].attempts) == (
        "running",
        "n1",
        1,
        1,
    )
    assert tasks[0].queued_at == 10.0
    assert (tasks[1].state, tasks[1].reason) == ("pending", "waiting for a gpu node")
    assert tasks[2].state == "queued"

    # A succeeded task is only ever reached by runs, never moved back by an update.
    store.record_runs([run(0)])
    late = TaskUpdate("job-1", "encode", 0, TaskState.RUNNING, node="late")
    assert store.update_tasks([late]) == 0
    done = store.task("job-1", "encode", 0)
    assert done is not None
    assert (done.state, done.node_id) == ("succeeded", "node-a")


def test_set_tasks_state_moves_whole_jobs(store: Store) -> None:
    store.create_job(two_stage_job(), [NewTask("encode", p) for p in range(10)])
    store.add_tasks("job-1", [NewTask("concat", 0)])
    store.record_runs([run(0), run(1)])

    moved = store.set_tasks_state(
        "job-1",
        TaskState.CANCELLED,
        from_states=[TaskState.PENDING, TaskState.QUEUED, TaskState.RUNNING],
        reason="cancelled by alice",
    )
    assert moved == 9
    counts = {c.stage.name: c.counts for c in store.stage_counts("job-1")}
    assert counts == {"encode": {"succeeded": 2, "cancelled": 8}, "concat": {"cancelled": 1}}
    assert (
        store.set_tasks_state(
            "job-1", TaskState.PENDING, from_states=[TaskState.CANCELLED], stage="concat"
        )
        == 1
    )


def test_runs_count_once_and_duplicates_are_counted(store: Store) -> None:
    store.create_job(two_stage_job(), [NewTask("encode", p) for p in range(4)])
    outputs = [{"key": "jobs/job-1/encode/0/out.mp4", "size": 1234}]
    first = run(0, outputs=outputs, cpu_s=2.0, compute_s=2.2, bytes_in=10, bytes_out=1234)

    applied = store.record_runs([first])
    assert applied.succeeded == ("job-1/encode/0",)

    # The same completion delivered again: nothing changes.
    assert store.record_runs([first]).redelivered == ("job-1/encode/0",)
    # Two more runs of the task (a second worker; a failure after the success): duplicates.
    again = store.record_runs(
        [run(0, worker=1, start=105.0, outputs=[]), run(0, ok=False, start=110.0, attempt=2)]
    )
    assert again.duplicates == ("job-1/encode/0", "job-1/encode/0")
    assert again.succeeded == ()

    task = store.task("job-1", "encode", 0)
    assert task is not None
    assert (task.state, task.duplicate_runs, task.outputs) == ("succeeded", 2, outputs)
    assert (task.worker, task.started_at, task.finished_at, task.cpu_s) == (0, 100.0, 102.5, 2.0)
    assert (task.bytes_in, task.bytes_out, task.error) == (10, 1234, None)
    counts = store.stage_counts("job-1")[0]
    assert counts.counts == {"succeeded": 1, "pending": 3}
    assert (counts.duplicate_runs, counts.cpu_s, counts.bytes_out) == (2, 2.0, 1234)
    assert (counts.first_started_at, counts.last_finished_at) == (100.0, 102.5)


def test_failures_retry_then_fail_for_good(store: Store) -> None:
    store.create_job(two_stage_job(), [NewTask("encode", p) for p in range(2)])
    error = {"type": "HandlerError", "message": "ffmpeg exited 1", "permanent": False}

    assert store.record_runs([run(1, ok=False, error=error)]).retrying == ("job-1/encode/1",)
    retrying = store.task("job-1", "encode", 1)
    assert retrying is not None
    assert (retrying.state, retrying.error, retrying.attempts) == ("retrying", error, 1)

    final = run(1, ok=False, error=error, attempt=3, start=200.0, final=True)
    assert store.record_runs([final]).failed == ("job-1/encode/1",)
    # An older retryable failure arriving late does not undo the final one.
    late = run(1, ok=False, error=error, attempt=2, start=150.0)
    assert store.record_runs([late]).ignored == ("job-1/encode/1",)
    failed = store.task("job-1", "encode", 1)
    assert failed is not None
    assert (failed.state, failed.attempts) == ("failed", 3)

    # A run still in flight when the task failed may yet succeed.
    assert store.record_runs([run(1, attempt=4, start=300.0)]).succeeded == ("job-1/encode/1",)
    done = store.task("job-1", "encode", 1)
    assert done is not None
    assert (done.state, done.error, done.attempts) == ("succeeded", None, 4)


def test_runs_of_unknown_and_cancelled_tasks_change_nothing(store: Store) -> None:
    store.create_job(two_stage_job(), [NewTask("encode", 0)])
    store.set_tasks_state("job-1", TaskState.CANCELLED, from_states=[TaskState.PENDING])

    applied = store.record_runs([run(0), run(7), run(0, job="other-job")])
    assert applied.ignored == ("job-1/encode/0",)
    assert applied.unknown == ("job-1/encode/7", "other-job/encode/0")
    assert store.stage_counts("job-1")[0].counts == {"cancelled": 1}


def test_duplicates_across_batches_count_each_task_once(open_store: Callable[..., Store]) -> None:
    store = open_store(batch_size=37)
    parts = 300
    store.create_job(two_stage_job(), [NewTask("encode", p) for p in range(parts)])
    rng = random.Random(7)
    runs = [run(p, start=float(p)) for p in range(parts)]
    extra = [run(rng.randrange(parts), worker=1, start=1000.0 + i) for i in range(150)]
    redelivered = rng.sample(runs, 50)
    stream = runs + extra + redelivered
    rng.shuffle(stream)

    applied = store.record_runs(stream)

    # Whichever run of a task arrives first is its success; every other run is a duplicate,
    # except the very same run delivered twice.
    assert len(applied.succeeded) == parts
    assert len(set(applied.succeeded)) == parts
    assert len(applied.duplicates) + len(applied.redelivered) == 200
    counts = store.stage_counts("job-1")[0]
    assert counts.counts == {"succeeded": parts}
    assert counts.duplicate_runs == len(applied.duplicates)
    assert len(applied.duplicates) >= 150


def test_concurrent_writers_count_each_success_once(open_store: Callable[..., Store]) -> None:
    # Two results writers (threads sharing one store) race over the same 1,000 tasks in
    # opposite orders; row locks must let exactly one of them record each success.
    store = open_store(batch_size=20)
    parts = list(range(1000))
    store.create_job(two_stage_job(), [NewTask("encode", p) for p in parts])
    results: list[RunsApplied] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(order: list[int], worker: int) -> None:
        try:
            start.wait()
            results.append(store.record_runs(run(p, worker=worker) for p in order))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [
        threading.Thread(target=writer, args=(parts, 0)),
        threading.Thread(target=writer, args=(parts[::-1], 1)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    succeeded = [task for result in results for task in result.succeeded]
    assert sorted(succeeded) == sorted(task_id("job-1", "encode", p) for p in parts)
    assert sum(len(result.duplicates) for result in results) == len(parts)
    counts = store.stage_counts("job-1")[0]
    assert counts.counts == {"succeeded": len(parts)}
    assert counts.duplicate_runs == len(parts)


def test_job_and_stage_states(store: Store) -> None:
    store.create_job(two_stage_job("old", created_at=1.0))
    store.create_job(two_stage_job("new", created_at=2.0, state=JobState.SCHEDULED))

    assert store.set_job_state("old", JobState.RUNNING, started_at=5.0)
    assert store.set_job_state("new", JobState.SCHEDULED, "waiting for its start time")
    assert not store.set_job_state("missing", JobState.RUNNING)
    assert store.set_stage_state("old", "encode", "running", started_at=5.5)
    assert not store.set_stage_state("old", "nope", "running")

    assert [job.id for job in store.jobs()] == ["new", "old"]
    assert [job.id for job in store.jobs(states=[JobState.RUNNING])] == ["old"]
    new = store.job("new")
    assert new is not None
    assert (new.state, new.reason) == ("scheduled", "waiting for its start time")
    old = store.job("old")
    assert old is not None
    assert (old.state, old.reason, old.started_at) == ("running", None, 5.0)
    stages = store.stages("old")
    assert [(s.name, s.state, s.started_at) for s in stages] == [
        ("encode", "running", 5.5),
        ("concat", "pending", None),
    ]

    assert store.set_job_state("old", JobState.SUCCEEDED, finished_at=9.0)
    finished = store.job("old")
    assert finished is not None
    assert (finished.started_at, finished.finished_at) == (5.0, 9.0)


def test_deleting_a_job_deletes_its_stages_and_tasks(store: Store) -> None:
    store.create_job(two_stage_job(), [NewTask("encode", p) for p in range(5)])
    store.create_job(two_stage_job("job-2"), [NewTask("encode", 0)])
    assert store.delete_job("job-1")
    assert not store.delete_job("job-1")
    assert store.job("job-1") is None
    assert store.stages("job-1") == []
    assert store.tasks("job-1") == []
    assert store.stage_counts("job-2")[0].total == 1


def test_unicode_in_names_and_json_survives(store: Store) -> None:
    spec = {"title": "Zürich 🎬 剪辑", "tags": ["naïve", "日本語", "emoji 🧪"], "n": 1.5}
    job = NewJob(
        "unicode-job",
        [NewStage("étape", 0, "transcode", {"sous-titres": "français « ok »"})],
        name="Ünïcødé 作业 🎞️",
        spec=spec,
        reason="wartet auf Knoten ✋",
    )
    store.create_job(job, [NewTask("étape", 0, inputs=["clips/🎥 été.mp4"])])
    store.record_runs(
        [
            TaskRun(
                "unicode-job",
                "étape",
                0,
                ok=False,
                node="nœud-1",
                worker=0,
                attempt=1,
                started_at=1.0,
                finished_at=2.0,
                error={"type": "Erreur", "message": "échec: fichier « 🎥 » illisible"},
            )
        ]
    )
    stored = store.job("unicode-job")
    assert stored is not None
    assert (stored.name, stored.spec, stored.reason) == (
        "Ünïcødé 作业 🎞️",
        spec,
        "wartet auf Knoten ✋",
    )
    stage = store.stages("unicode-job")[0]
    assert (stage.name, stage.params) == ("étape", {"sous-titres": "français « ok »"})
    task = store.task("unicode-job", "étape", 0)
    assert task is not None
    assert task.inputs == ["clips/🎥 été.mp4"]
    assert task.node_id == "nœud-1"
    assert task.error == {"type": "Erreur", "message": "échec: fichier « 🎥 » illisible"}
    assert task.task_id == task_id("unicode-job", "étape", 0)


def test_heartbeats_mark_waiting_tasks_running_and_never_finished_ones(store: Store) -> None:
    store.create_job(two_stage_job(), [NewTask("encode", part) for part in range(3)])
    store.set_tasks_state("job-1", TaskState.QUEUED, from_states=[TaskState.PENDING])
    store.record_runs([run(0)])  # part 0 already done when a late heartbeat names it
    crew = [WorkerBeat(i, pid=100 + i, state="busy", task=f"job-1/encode/{i}") for i in range(2)]
    crew.append(WorkerBeat(2, pid=102, state="busy", task="message 7f3a"))  # not a task
    store.record_heartbeats([NodeBeat("node-b", 150.0, "up", workers=crew)])
    tasks = {t.part: t for t in store.tasks("job-1")}
    assert (tasks[0].state, tasks[0].node_id) == ("succeeded", "node-a")
    assert (tasks[1].state, tasks[1].node_id, tasks[1].worker) == ("running", "node-b", 1)
    assert tasks[1].started_at == 150.0
    assert tasks[2].state == "queued"
    store.record_runs([run(1, node="node-b", worker=1)])
    done = store.task("job-1", "encode", 1)
    assert done is not None
    assert done.state == "succeeded"
