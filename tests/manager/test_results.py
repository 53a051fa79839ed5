"""The results processor: chaining, fan-in, failures, duplicates and a manager killed mid-step.

The stepping tests run an in-process worker on every store backend (SQLite, PostgreSQL,
MariaDB); the end-to-end tests run a real ``batchfarm node`` on SQLite.
"""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from batchfarm.actors.backends import COMPLETIONS, open_blobs, open_queue, open_task_queues
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.backends.store import (
    JobState,
    NewStage,
    StageMode,
    StageState,
    Store,
    TaskState,
    migrate,
)
from batchfarm.actors.codec import decode_body, encode_body
from batchfarm.actors.manager.results import ResultsProcessor
from batchfarm.actors.messages import OutputRef, TaskBody
from tests.manager.results_grid import (
    HANDLERS,
    CrashingQueue,
    InlineWorker,
    StorePlanner,
    completion,
    drive,
    submit_job,
)
from tests.node.nodeproc import NodeProcess, env_for
from tests.store.conftest import SERVER_URLS, Server, clear_tables
from tests.worker.grid import make_settings, wait_for

THREE_STAGES = [
    NewStage("first", 0, "noop"),
    NewStage("second", 1, "noop", mode=StageMode.CHAIN),
    NewStage("all", 2, "noop", mode=StageMode.FAN_IN),
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mysql"])
def store_url(request, tmp_path_factory):
    """A migrated database per backend for this module."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('results') / 'grid.db'}"
        migrate.upgrade(url)
        yield url
        return
    server = Server(request.param, SERVER_URLS[request.param])
    server.connect()
    if server.error:
        pytest.fail(f"{request.param} server not reachable: {server.error}")
    try:
        url = server.create_database()
        migrate.upgrade(url)
        yield url
    finally:
        server.drop_all()


@pytest.fixture
def grid(store_url, tmp_path):
    """Store (emptied), queues and blobs of an embedded grid, and an in-process worker."""
    engine = sa.create_engine(store_url)
    with engine.begin() as connection:
        clear_tables(connection)
    engine.dispose()
    settings = make_settings(tmp_path / "state")
    store = Store(store_url, upgrade=False)
    tasks = open_task_queues(settings.queue)
    completions = open_queue(settings.queue, COMPLETIONS)
    blobs = open_blobs(settings.storage)
    worker = InlineWorker(tasks, completions, blobs)
    yield store, tasks, completions, worker
    for closing in (tasks, completions, blobs, store):
        closing.close()


def put_inputs(blobs, count: int) -> list[list[str]]:
    for part in range(count):
        blobs.put(f"in/{part}.bin", f"input {part}".encode())
    return [[f"in/{part}.bin"] for part in range(count)]


def test_chain_then_fan_in_with_every_task_counted_once(grid):
    store, tasks, completions, worker = grid
    submit_job(store, tasks, "j1", THREE_STAGES, put_inputs(worker.blobs, 4))
    results = ResultsProcessor(store, tasks, completions, StorePlanner())
    job_done = lambda: store.job("j1").state == JobState.SUCCEEDED  # noqa: E731
    drive(results, job_done, between=worker, what="job j1 to succeed")
    assert [s.state for s in store.stages("j1")] == ["succeeded"] * 3
    tasks_ = store.tasks("j1")
    assert {(t.stage, t.state) for t in tasks_} == {
        ("first", "succeeded"),
        ("second", "succeeded"),
        ("all", "succeeded"),
    }
    assert len(tasks_) == 9
    second = {t.part: t for t in tasks_ if t.stage == "second"}
    assert second[2].inputs == ["jobs/j1/first/2/out.bin"]
    [fan_in] = [t for t in tasks_ if t.stage == "all"]
    assert fan_in.inputs == [f"jobs/j1/second/{p}/out.bin" for p in range(4)]
    assert sorted(worker.runs) == sorted(t.task_id for t in tasks_)  # each ran once
    c = results.counters
    assert (c.runs, c.succeeded, c.duplicates, c.enqueued) == (9, 9, 0, 5)
    assert (c.stages_succeeded, c.jobs_succeeded) == (3, 1)
    assert tasks.depth().backlog == completions.depth().backlog == 0


def test_a_duplicate_counts_once_and_a_redelivery_changes_nothing(grid):
    store, tasks, completions, _ = grid
    submit_job(store, tasks, "j2", THREE_STAGES[:2], [[]])
    [message] = tasks.for_priority(0).receive(1)
    body = decode_body(message.body, TaskBody)
    out = [OutputRef("jobs/j2/first/0/a", 1)]
    event = encode_body(completion(body, outputs=out))
    rerun = encode_body(completion(body, worker=1, started=2_000_000.0, outputs=out))
    for text in (event, event, rerun):
        completions.send(text)
    results = ResultsProcessor(store, tasks, completions, StorePlanner())
    assert results.step(10) == 3
    c = results.counters
    assert (c.runs, c.succeeded, c.redelivered, c.duplicates) == (3, 1, 1, 1)
    task = store.task("j2", "first", 0)
    assert (task.state, task.duplicate_runs, task.worker) == ("succeeded", 1, 0)
    # One next-stage task, sent once.
    sent = tasks.for_priority(0).receive(10)
    assert [decode_body(m.body, TaskBody).task_id for m in sent] == ["j2/second/0"]
    assert decode_body(sent[0].body, TaskBody).inputs == ["jobs/j2/first/0/a"]
    assert store.task("j2", "second", 0).state == TaskState.QUEUED
    assert store.stages("j2")[1].state == StageState.RUNNING
    assert completions.depth().backlog == 0


def test_bad_bodies_are_counted_dead_lettered_and_do_not_stop_the_batch(grid):
    store, tasks, completions, worker = grid
    submit_job(store, tasks, "j3", THREE_STAGES[:1], [[]])
    worker()
    completions.send("not json")
    completions.send(tasks_body := encode_body(TaskBody(job="j3", stage="x", part=0, handler="n")))
    results = ResultsProcessor(store, tasks, completions, StorePlanner())
    assert results.step(10) == 3
    assert results.counters.bad_bodies.by_reason == {"format": 1, "kind": 1}
    assert store.job("j3").state == JobState.SUCCEEDED
    dead = completions.dead_letters().receive(10)
    assert sorted(m.body for m in dead) == sorted(["not json", tasks_body])
    assert completions.depth().backlog == 0


def test_a_cancelled_job_records_runs_but_never_advances(grid):
    store, tasks, completions, worker = grid
    submit_job(store, tasks, "j4", THREE_STAGES, put_inputs(worker.blobs, 2))
    store.set_job_state("j4", JobState.CANCELLED, "cancelled by the user")
    worker()
    results = ResultsProcessor(store, tasks, completions, StorePlanner())
    assert results.step(10) == 2
    assert results.counters.succeeded == 2
    assert [t.stage for t in store.tasks("j4")] == ["first", "first"]
    assert tasks.depth().backlog == 0
    assert [s.state for s in store.stages("j4")] == ["running", "pending", "pending"]


def test_a_final_failure_fails_stage_and_job_and_a_retried_part_completes_them(grid):
    store, tasks, completions, worker = grid
    submit_job(store, tasks, "j5", THREE_STAGES, put_inputs(worker.blobs, 3))
    worker.fail.add("j5/first/1")
    results = ResultsProcessor(store, tasks, completions, StorePlanner())

    def others_through() -> bool:
        return {t.task_id for t in store.tasks("j5", states=["succeeded"])} == {
            "j5/first/0",
            "j5/first/2",
            "j5/second/0",
            "j5/second/2",
        }

    drive(results, others_through, between=worker, what="the good parts through stage two")
    job = store.job("j5")
    assert job.state == JobState.FAILED
    assert job.reason == "task j5/first/1 failed: TaskError: bad input: not a clip"
    stages = store.stages("j5")
    assert [s.state for s in stages] == ["failed", "running", "pending"]
    assert stages[0].reason == job.reason
    failed = store.task("j5", "first", 1)
    assert failed.state == TaskState.FAILED
    assert failed.error["permanent"] is True
    assert store.task("j5", "second", 1) is None
    assert results.counters.failures == results.counters.jobs_failed == 1

    # What `batchfarm retry` does: the failed part back in the queue, the job running.
    store.set_tasks_state("j5", TaskState.QUEUED, from_states=[TaskState.FAILED])
    store.set_job_state("j5", JobState.RUNNING)
    tasks.for_priority(0).send(encode_body(StorePlanner().next_task(stages[0], 1, ["in/1.bin"])))
    job_done = lambda: store.job("j5").state == JobState.SUCCEEDED  # noqa: E731
    drive(results, job_done, between=worker, what="job j5 to succeed after the retry")
    assert [s.state for s in store.stages("j5")] == ["succeeded"] * 3
    assert sorted(worker.runs).count("j5/first/0") == 1


@pytest.mark.parametrize("after_send", [False, True], ids=["before-send", "after-send"])
def test_a_manager_killed_mid_step_loses_nothing(grid, after_send):
    store, tasks, completions, worker = grid
    submit_job(store, tasks, "j6", THREE_STAGES, put_inputs(worker.blobs, 4))
    worker()
    crashing = CrashingQueue(tasks.for_priority(0), after_send=after_send)
    queues = TaskQueues({0: crashing})
    killed = ResultsProcessor(store, queues, completions, StorePlanner(), visibility_s=0.3)
    with pytest.raises(SystemExit):
        killed.step(10)
    assert killed.counters.succeeded == 4  # recorded, never deleted
    assert completions.depth().in_flight == 4
    wait_for(lambda: completions.depth().visible == 4, what="the events to reappear")
    restarted = ResultsProcessor(store, tasks, completions, StorePlanner())
    assert restarted.step(10) == 4  # the replay, before the worker runs anything
    assert restarted.counters.redelivered == restarted.counters.enqueued == 4
    job_done = lambda: store.job("j6").state == JobState.SUCCEEDED  # noqa: E731
    drive(restarted, job_done, between=worker, what="job j6 to succeed after the restart")
    tasks_ = store.tasks("j6")
    assert len(tasks_) == 9
    assert {t.state for t in tasks_} == {"succeeded"}
    assert restarted.counters.redelivered == 4
    # Bodies sent before the kill were sent again: their second runs count as re-runs.
    resent = 4 if after_send else 0
    assert sum(t.duplicate_runs for t in tasks_) == restarted.counters.duplicates == resent
    assert len(worker.runs) == 9 + resent
    assert [t.inputs for t in tasks_ if t.stage == "all"] == [
        [f"jobs/j6/second/{p}/out.bin" for p in range(4)]
    ]


# ---------------------------------------------------------------------------------------------
# End to end with a real node


@pytest.fixture(scope="module")
def node_grid(tmp_path_factory):
    """An embedded grid on SQLite with a real two-worker node, shared by the module's jobs."""
    state = tmp_path_factory.mktemp("node-grid") / "state"
    settings = make_settings(state)
    node = NodeProcess(state, "node-r", env=env_for(node_workers=2))
    store = Store(f"sqlite:///{state.parent / 'grid.db'}")
    tasks = open_task_queues(settings.queue)
    completions = open_queue(settings.queue, COMPLETIONS)
    blobs = open_blobs(settings.storage)
    yield store, tasks, completions, blobs
    node.close()
    for closing in (tasks, completions, blobs, store):
        closing.close()


def test_a_real_node_runs_a_chain_into_a_fan_in(node_grid):
    store, tasks, completions, blobs = node_grid
    stages = [
        NewStage("copy", 0, f"{HANDLERS}:copy_unless"),
        NewStage("again", 1, f"{HANDLERS}:copy_unless", mode=StageMode.CHAIN),
        NewStage("sums", 2, "checksum", {"manifest": "SHA256SUMS"}, mode=StageMode.FAN_IN),
    ]
    data = {f"clips/{p}.bin": f"clip {p}".encode() * 1000 for p in range(3)}
    for key, value in data.items():
        blobs.put(key, value)
    submit_job(store, tasks, "e2e", stages, [[key] for key in data])
    results = ResultsProcessor(store, tasks, completions, StorePlanner())
    job_done = lambda: store.job("e2e").state == JobState.SUCCEEDED  # noqa: E731
    drive(results, job_done, timeout=60, what="job e2e to succeed on the node")
    assert [s.state for s in store.stages("e2e")] == ["succeeded"] * 3
    counts = {s.stage.name: s.counts for s in store.stage_counts("e2e")}
    assert counts == {"copy": {"succeeded": 3}, "again": {"succeeded": 3}, "sums": {"succeeded": 1}}
    [fan_in] = store.tasks("e2e", stage="sums")
    # Each chained part copied its input and the first stage's note: two outputs, then three.
    assert len(fan_in.inputs) == 9
    assert fan_in.inputs[:3] == [
        "jobs/e2e/again/0/note.txt",
        "jobs/e2e/again/0/out-0.bin",
        "jobs/e2e/again/0/out-1.bin",
    ]
    manifest = blobs.read("jobs/e2e/sums/0/SHA256SUMS").decode()
    for part, value in enumerate(data.values()):
        line = f"{hashlib.sha256(value).hexdigest()}  jobs/e2e/again/{part}/out-1.bin"
        assert line in manifest.splitlines()
    assert fan_in.node_id == "node-r"
    assert results.counters.duplicates == 0


def test_a_real_node_failing_a_part_fails_its_stage_and_job(node_grid):
    store, tasks, completions, blobs = node_grid
    stages = [
        NewStage("copy", 0, f"{HANDLERS}:copy_unless", {"fail_parts": [1]}),
        NewStage("again", 1, f"{HANDLERS}:copy_unless", mode=StageMode.CHAIN),
    ]
    for part in range(3):
        blobs.put(f"f/{part}", b"x")
    submit_job(store, tasks, "bad", stages, [[f"f/{p}"] for p in range(3)])
    results = ResultsProcessor(store, tasks, completions, StorePlanner())

    def settled() -> bool:
        states = {t.task_id: t.state for t in store.tasks("bad")}
        return states.get("bad/again/0") == states.get("bad/again/2") == "succeeded" and (
            states.get("bad/copy/1") == "failed"
        )

    drive(results, settled, timeout=60, what="job bad's parts to settle on the node")
    job = store.job("bad")
    assert job.state == JobState.FAILED
    assert job.reason == "task bad/copy/1 failed: TaskError: bad input in part 1"
    assert [s.state for s in store.stages("bad")] == ["failed", "running"]
    error = store.task("bad", "copy", 1).error
    assert error["type"] == "TaskError"
    assert error["message"] == "bad input in part 1"
    assert error["permanent"] is True
    assert store.task("bad", "again", 1) is None
