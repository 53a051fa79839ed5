"""Costs of tasks, stages, jobs and nodes, and the deadlines the autoscaler reads."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from batchfarm.actors.backends.store import (
    JobState,
    NewJob,
    NewStage,
    NewTask,
    NodeBeat,
    Store,
    TaskRun,
    WorkerBeat,
    migrate,
)
from batchfarm.actors.manager.autoscale import DeadlineWork
from batchfarm.actors.manager.autoscaler_inputs import deadline_work


def node(
    store: Store, name: str, price: float | None, workers: int, *, first: float, last: float
) -> None:
    crew = [WorkerBeat(i, pid=100 + i, state="idle") for i in range(workers)]
    for time in (first, last):
        beat = NodeBeat(name, time, "up", workers=crew, price_per_hour=price)
        store.record_heartbeats([beat])


def job(store: Store, job_id: str, parts: int, **fields: object) -> None:
    stages = [
        NewStage("encode", 0, "transcode"),
        NewStage("pack", 1, "concat", node_class="highmem"),
    ]
    tasks = [NewTask("encode", p) for p in range(parts)] + [NewTask("pack", 0)]
    store.create_job(NewJob(job_id, stages, **fields), tasks)  # type: ignore[arg-type]


def run(
    job_id: str, stage: str, part: int, node: str, seconds: float, *, ok: bool = True
) -> TaskRun:
    return TaskRun(job_id, stage, part, ok, node, 0, 1, 1000.0, 1000.0 + seconds, final=not ok)


def test_a_task_pays_its_run_seconds_at_its_nodes_price_shared_by_its_workers(
    store: Store,
) -> None:
    # $1.80 an hour on 4 workers: each worker-second costs $0.000125.
    node(store, "n4", 1.80, 4, first=0.0, last=3600.0)
    node(store, "n1", 0.36, 1, first=0.0, last=100.0)
    node(store, "free", None, 2, first=0.0, last=50.0)  # unpriced: costs nothing, not an error
    job(store, "j", 3)
    store.record_runs(
        [
            run("j", "encode", 0, "n4", 100.0),
            run("j", "encode", 1, "n1", 50.0, ok=False),  # a failed run costs too
            run("j", "encode", 2, "free", 70.0),
            run("j", "pack", 0, "n4", 8.0),
        ]
    )

    costs = store.stage_costs_of(["j", "nothing"])
    assert costs["nothing"] == {}
    assert costs["j"]["encode"] == pytest.approx(100 * 1.80 / 4 / 3600 + 50 * 0.36 / 3600)
    assert costs["j"]["pack"] == pytest.approx(8 * 1.80 / 4 / 3600)
    tasks = store.task_costs("j", [("encode", 0), ("encode", 2), ("pack", 0), ("pack", 9)])
    assert tasks == pytest.approx(
        {"j/encode/0": 0.0125, "j/encode/2": 0.0, "j/pack/0": 8 * 1.80 / 4 / 3600}
    )
    by_handler = {(c.handler, c.node_class): c.dollars for c in store.costs_by_handler()}
    assert by_handler == pytest.approx(
        {("transcode", "default"): costs["j"]["encode"], ("concat", "highmem"): costs["j"]["pack"]}
    )
    # Node time, idle included: an hour of n4, 100 s of n1.
    assert store.node_costs() == pytest.approx({"default": 1.80 + 0.01})


def test_a_task_not_run_yet_costs_nothing(store: Store) -> None:
    node(store, "n1", 3.6, 1, first=0.0, last=10.0)
    job(store, "j", 2)
    assert store.stage_costs_of(["j"]) == {"j": {"encode": 0.0, "pack": 0.0}}
    assert store.task_costs("j", [("encode", 0)]) == {"j/encode/0": 0.0}


def test_node_facts_from_heartbeats_are_kept(store: Store) -> None:
    beat = NodeBeat(
        "i-1",
        5.0,
        "up",
        price_per_hour=0.0416,
        instance_type="m5.large",
        zone="us-east-1a",
        lifecycle="spot",
    )
    store.record_heartbeats([beat])
    (stored,) = store.nodes()
    assert (stored.price_per_hour, stored.instance_type, stored.zone, stored.lifecycle) == (
        0.0416,
        "m5.large",
        "us-east-1a",
        "spot",
    )


def test_deadline_work_counts_each_unfinished_jobs_tasks_left_in_a_class(store: Store) -> None:
    job(store, "late", 3, deadline=5000.0, state=JobState.RUNNING)
    job(store, "soon", 2, deadline=4000.0, state=JobState.RUNNING)
    job(store, "none", 4)  # no deadline
    job(store, "over", 2, deadline=3000.0, state=JobState.SUCCEEDED)
    # Not yet started, or paused: nodes for them now would idle.
    job(store, "later", 2, deadline=3000.0, state=JobState.SCHEDULED, start_at=2000.0)
    job(store, "paused", 2, deadline=3000.0, state=JobState.PAUSED)
    store.record_runs([run("late", "encode", 0, "n1", 5.0)])  # one done: two left

    assert deadline_work(store, "default") == [
        DeadlineWork("soon", 2, 4000.0),
        DeadlineWork("late", 2, 5000.0),
    ]
    assert deadline_work(store, "highmem") == [
        DeadlineWork("soon", 1, 4000.0),
        DeadlineWork("late", 1, 5000.0),
    ]
    assert deadline_work(store, "gpu") == []


def _node_columns(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return {column["name"] for column in sa.inspect(engine).get_columns("nodes")}
    finally:
        engine.dispose()


def test_0004_prices_nodes_written_before_it_as_unknown_and_can_be_undone(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0003")
    row = {"id": "old", "node_class": "default", "host": "h", "state": "up", "cordoned": False}
    row.update(first_seen=1.0, last_heartbeat=61.0, cpu_percent=0.0, rss_bytes=0, workers=1)
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.insert(sa.table("nodes", *map(sa.column, row))), row)
    finally:
        engine.dispose()

    migrate.upgrade(empty_url)
    with Store(empty_url) as store:
        (old,) = store.nodes()
        assert (old.price_per_hour, old.instance_type, old.lifecycle) == (None, None, None)
        assert store.node_costs() == {"default": 0.0}
    migrate.downgrade(empty_url, "0003")
    assert "price_per_hour" not in _node_columns(empty_url)
    migrate.upgrade(empty_url)
    assert migrate.schema_differences(empty_url) == []
