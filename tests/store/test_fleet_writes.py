"""Coalesced fleet writes (:meth:`Store.write_fleet`) and the totals ``/metrics`` reads."""

from __future__ import annotations

from batchfarm.actors.backends.store import (
    NewJob,
    NewStage,
    NewTask,
    NodeBeat,
    Store,
    TaskRun,
    TaskState,
    WorkerBeat,
)
from batchfarm.actors.backends.store.fleet import FleetChanges, RunningTask


def crew(*indexes: int, state: str = "idle", rss: int = 0) -> list[WorkerBeat]:
    return [WorkerBeat(i, pid=100 + i, state=state, rss_bytes=rss) for i in indexes]


def test_changed_workers_are_written_and_the_others_kept(store: Store) -> None:
    store.write_fleet(
        FleetChanges([NodeBeat("n1", 10.0, "up", workers=crew(0, 1, 2))], {"n1": 3}, {}, [])
    )
    # Only worker 1 changed: the others keep their rows, and the node its count.
    store.write_fleet(
        FleetChanges([NodeBeat("n1", 11.0, "up", workers=crew(1, state="busy"))], {"n1": 3}, {}, [])
    )
    assert [(w.index, w.state) for w in store.workers("n1")] == [
        (0, "idle"),
        (1, "busy"),
        (2, "idle"),
    ]
    [node] = store.nodes()
    assert (node.last_heartbeat, node.workers) == (11.0, 3)
    # A roster: the workers the node has now; the others' rows go.
    store.write_fleet(
        FleetChanges([NodeBeat("n1", 12.0, "up", workers=crew(3))], {"n1": 2}, {"n1": [1, 3]}, [])
    )
    assert [(w.index, w.state) for w in store.workers("n1")] == [(1, "busy"), (3, "idle")]
    assert store.nodes()[0].workers == 2
    store.write_fleet(FleetChanges([NodeBeat("n1", 13.0, "stopping")], {"n1": 0}, {"n1": []}, []))
    assert store.workers("n1") == []


def test_running_marks_only_waiting_tasks(store: Store) -> None:
    stages = [NewStage("encode", 0, "transcode", {})]
    store.create_job(NewJob("job-1", stages), [NewTask("encode", part) for part in range(3)])
    store.set_tasks_state("job-1", TaskState.QUEUED, from_states=[TaskState.PENDING])
    store.record_runs([TaskRun("job-1", "encode", 2, True, "node-a", 0, 1, 15.0, 17.5)])
    running = [
        RunningTask("n1", 0, "job-1", "encode", 0, 20.0),
        RunningTask("n1", 1, "job-1", "encode", 2, 20.0),  # finished already: stays so
        RunningTask("n1", 2, "job-9", "encode", 0, 20.0),  # unknown: nothing happens
    ]
    store.write_fleet(
        FleetChanges([NodeBeat("n1", 21.0, "up", workers=crew(0, 1, 2))], {"n1": 3}, {}, running)
    )
    tasks = {t.part: t for t in store.tasks("job-1")}
    assert (tasks[0].state, tasks[0].node_id, tasks[0].worker, tasks[0].started_at) == (
        "running",
        "n1",
        0,
        20.0,
    )
    assert tasks[1].state == "queued"
    assert tasks[2].state == "succeeded"


def test_worker_totals_count_by_node_and_state(store: Store) -> None:
    store.record_heartbeats(
        [
            NodeBeat(
                "n1", 10.0, "up", workers=[*crew(0, 1, rss=10), *crew(2, state="busy", rss=5)]
            ),
            NodeBeat("n2", 10.0, "up", workers=crew(0, rss=7)),
        ]
    )
    totals = store.worker_totals()
    assert dict(totals.by_node_state) == {("n1", "idle"): 2, ("n1", "busy"): 1, ("n2", "idle"): 1}
    assert dict(totals.rss_by_node) == {"n1": 25, "n2": 7}
    assert store.oldest_queued_at() is None
    assert store.handler_totals() == []
