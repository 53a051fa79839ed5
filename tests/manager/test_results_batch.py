"""The results processor records a backlog of completion events together.

One step takes every event waiting (up to its limit, several receive batches), records them
in one store transaction and moves each job on once, so a flood of short tasks costs the
store a few statements per step, not per event. Duplicates in such a step still count once.
"""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa

from batchfarm.actors.backends import COMPLETIONS, open_blobs, open_queue, open_task_queues
from batchfarm.actors.backends.store import JobState, NewStage, StageMode, Store, migrate
from batchfarm.actors.codec import decode_body, encode_body
from batchfarm.actors.manager.results import RECORD_BATCH, ResultsProcessor
from batchfarm.actors.messages import OutputRef, TaskBody
from tests.manager.results_grid import StorePlanner, completion, submit_job
from tests.worker.grid import make_settings

PARTS = 24
TWO_STAGES = [NewStage("first", 0, "noop"), NewStage("second", 1, "noop", mode=StageMode.CHAIN)]


@pytest.fixture
def grid(tmp_path):
    """An embedded grid's store and queues, with a job of PARTS tasks received by a worker."""
    url = f"sqlite:///{tmp_path / 'grid.db'}"
    migrate.upgrade(url)
    settings = make_settings(tmp_path / "state")
    store = Store(url, upgrade=False)
    tasks = open_task_queues(settings.queue)
    completions = open_queue(settings.queue, COMPLETIONS)
    blobs = open_blobs(settings.storage)
    submit_job(store, tasks, "j1", TWO_STAGES, [[] for _ in range(PARTS)])
    bodies: list[TaskBody] = []
    while batch := tasks.for_priority(0).receive(10, 0.0, 60.0):
        for message in batch:
            body = decode_body(message.body, TaskBody)
            assert isinstance(body, TaskBody)
            bodies.append(body)
        tasks.for_priority(0).delete_batch([m.receipt for m in batch]).raise_for_failures()
    yield store, tasks, completions, sorted(bodies, key=lambda b: b.part)
    for closing in (tasks, completions, blobs, store):
        closing.close()


def send_events(completions, events) -> None:
    for event in events:
        completions.send(encode_body(event))


def outputs(body: TaskBody) -> list[OutputRef]:
    return [OutputRef(f"{body.output_prefix}out.bin", 1)]


def received_task_ids(tasks) -> list[str]:
    """The ids of every task body waiting in the task queues (received and deleted)."""
    found = []
    while batch := tasks.for_priority(0).receive(10, 0.0, 60.0):
        found += [decode_body(m.body, TaskBody).task_id for m in batch]
        tasks.for_priority(0).delete_batch([m.receipt for m in batch])
    return found


def commits_during(store: Store, action) -> int:
    count = [0]

    def on_commit(_connection) -> None:
        count[0] += 1

    sa.event.listen(store.engine, "commit", on_commit)
    try:
        action()
    finally:
        sa.event.remove(store.engine, "commit", on_commit)
    return count[0]


def test_a_backlog_is_recorded_in_one_step_and_each_task_counts_once(grid):
    store, tasks, completions, bodies = grid
    # Every part once, then part 3's event redelivered and parts 5 and 7 run again
    # elsewhere (duplicates): 27 events waiting, more than two receive batches.
    events = [completion(b, outputs=outputs(b)) for b in bodies]
    events.append(completion(bodies[3], outputs=outputs(bodies[3])))
    for part in (5, 7):
        rerun = completion(
            bodies[part], worker=1, started=2_000_000.0, outputs=outputs(bodies[part])
        )
        events.append(rerun)
    send_events(completions, events)
    results = ResultsProcessor(store, tasks, completions, StorePlanner())

    taken = [0]
    commits = commits_during(store, lambda: taken.__setitem__(0, results.step()))

    assert taken[0] == len(events) == PARTS + 3 <= RECORD_BATCH
    c = results.counters
    assert (c.runs, c.succeeded, c.redelivered, c.duplicates) == (PARTS + 3, PARTS, 1, 2)
    assert {t.part: t.duplicate_runs for t in store.tasks("j1", stage="first")} == {
        part: int(part in (5, 7)) for part in range(PARTS)
    }
    # One transaction records the runs; the rest is the next stage's tasks, created and
    # marked queued, and the stages' states: none of it per event.
    assert commits <= 6
    # Each part chained into the next stage once, and the first stage is done.
    assert sorted(received_task_ids(tasks)) == sorted(f"j1/second/{part}" for part in range(PARTS))
    assert [s.state for s in store.stages("j1")] == ["succeeded", "running"]
    assert completions.depth().backlog == 0


def test_duplicates_received_together_finish_the_job_once(grid):
    store, tasks, completions, bodies = grid
    results = ResultsProcessor(store, tasks, completions, StorePlanner())
    send_events(completions, [completion(b, outputs=outputs(b)) for b in bodies])
    assert results.step() == PARTS
    second = [dataclasses.replace(b, stage="second") for b in bodies]
    # Every last-stage event twice in one step (a worker's settle retried after a crash).
    twice = [completion(b, outputs=outputs(b)) for b in second] * 2
    send_events(completions, twice)

    assert results.step() == 2 * PARTS

    c = results.counters
    assert (c.succeeded, c.redelivered, c.duplicates) == (2 * PARTS, PARTS, 0)
    assert (c.stages_succeeded, c.jobs_succeeded) == (2, 1)
    assert store.job("j1").state == JobState.SUCCEEDED
    assert {t.state for t in store.tasks("j1")} == {"succeeded"}
    # The next stage's bodies went out once each, whatever came twice.
    assert sorted(received_task_ids(tasks)) == sorted(f"j1/second/{p}" for p in range(PARTS))
    assert completions.depth().backlog == 0


def test_a_step_never_waits_to_fill_its_batch(grid):
    store, tasks, completions, bodies = grid
    results = ResultsProcessor(store, tasks, completions, StorePlanner())
    send_events(completions, [completion(bodies[0], outputs=outputs(bodies[0]))])
    # One event waiting: recorded at once, however large the step's limit.
    assert results.step(RECORD_BATCH, wait_s=5.0) == 1
    assert store.task("j1", "first", 0).state == "succeeded"
