"""The store keeps up with a large grid: many rows per transaction, a bounded number of them.

Each test writes thousands of rows and counts the commits on the store's engine with a
SQLAlchemy event listener: at most ceil(rows / batch_size) plus a small constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from sqlalchemy.engine import Engine

from batchfarm.actors.backends.store import (
    NewJob,
    NewSample,
    NewStage,
    NewTask,
    NodeBeat,
    Store,
    TaskRun,
    TaskState,
    TaskUpdate,
    WorkerBeat,
)

Commits = Callable[[Engine], AbstractContextManager[list[int]]]
ROWS = 10_000
SLACK = 2


def bounds(rows: int, batch_size: int) -> tuple[int, int]:
    batches = math.ceil(rows / batch_size)
    return batches, batches + SLACK


@pytest.mark.parametrize("batch_size", [500, 1_000])
def test_ten_thousand_samples_take_a_bounded_number_of_transactions(
    open_store: Callable[..., Store], commits: Commits, batch_size: int
) -> None:
    store = open_store(batch_size=batch_size)
    samples = (
        NewSample(1000.0 + i / 10, "task_seconds", i * 0.01, node=f"n{i % 8}", labels={"q": "p"})
        for i in range(ROWS)
    )
    with commits(store.engine) as n:
        assert store.add_samples(samples) == ROWS
    low, high = bounds(ROWS, batch_size)
    assert low <= n[0] <= high
    assert len(store.recent_samples("task_seconds", limit=None)) == ROWS


def test_a_job_of_ten_thousand_tasks_is_one_transaction(store: Store, commits: Commits) -> None:
    job = NewJob("big", [NewStage("encode", 0, "transcode")])
    with commits(store.engine) as n:
        store.create_job(job, (NewTask("encode", p) for p in range(ROWS)))
    assert n[0] == 1
    assert store.stage_counts("big")[0].counts == {"pending": ROWS}


def test_ten_thousand_updates_and_runs_take_a_bounded_number_of_transactions(
    store: Store, commits: Commits
) -> None:
    store.create_job(
        NewJob("big", [NewStage("encode", 0, "transcode")]),
        (NewTask("encode", p) for p in range(ROWS)),
    )
    updates = (
        TaskUpdate("big", "encode", p, TaskState.RUNNING, node="n1", worker=p % 2, attempts=1)
        for p in range(ROWS)
    )
    with commits(store.engine) as n:
        store.update_tasks(updates)
    low, high = bounds(ROWS, store.batch_size)
    assert low <= n[0] <= high
    assert store.stage_counts("big")[0].counts == {"running": ROWS}

    runs = (
        TaskRun("big", "encode", p, True, "n1", p % 2, 1, float(p), p + 1.0, cpu_s=1.0)
        for p in range(ROWS)
    )
    with commits(store.engine) as n:
        applied = store.record_runs(runs)
    assert low <= n[0] <= high
    assert len(applied.succeeded) == ROWS
    counts = store.stage_counts("big")[0]
    assert counts.counts == {"succeeded": ROWS}
    assert counts.cpu_s == float(ROWS)


def test_heartbeats_take_a_bounded_number_of_transactions(
    open_store: Callable[..., Store], commits: Commits
) -> None:
    store = open_store(batch_size=250)
    beats = [
        NodeBeat(
            f"node-{i % 100:03}",
            float(i),
            "up",
            workers=[WorkerBeat(w, 100 + w, "busy", core=w) for w in range(4)],
        )
        for i in range(2_000)
    ]
    with commits(store.engine) as n:
        store.record_heartbeats(beats)
    low, high = bounds(len(beats), 250)
    assert low <= n[0] <= high
    assert len(store.nodes()) == 100
    assert len(store.workers()) == 400
    assert {node.last_heartbeat for node in store.nodes()} == {float(i) for i in range(1900, 2000)}
