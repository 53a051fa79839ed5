"""What the autoscaler measures: idle nodes from heartbeats, drained nodes, workers per node,
and the recent task duration from the store.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from batchfarm.actors.backends import open_store
from batchfarm.actors.backends.store import NewJob, NewStage, NewTask, TaskRun
from batchfarm.actors.manager.autoscaler_inputs import (
    IdleClock,
    node_is_drained,
    recent_task_seconds,
    workers_per_node,
)
from batchfarm.actors.messages import Heartbeat, WorkerStatus
from tests.worker.grid import make_settings


def beat(node: str, *workers: tuple[str, int], state: str = "up") -> Heartbeat:
    statuses = [
        WorkerStatus(
            index=i,
            pid=10 + i,
            state=s,  # type: ignore[arg-type]
            task="j/s/0" if s == "busy" else None,
            done=done,
        )
        for i, (s, done) in enumerate(workers)
    ]
    return Heartbeat(node=node, sent_at=0.0, state=state, workers=statuses)  # type: ignore[arg-type]


def test_a_node_is_idle_from_the_first_heartbeat_that_shows_no_work():
    clock = IdleClock()
    assert clock.observe({"a": beat("a", ("idle", 0), ("busy", 0))}, 100.0) == {}
    assert clock.observe({"a": beat("a", ("idle", 0), ("idle", 1))}, 105.0) == {}  # one ended
    assert clock.observe({"a": beat("a", ("idle", 0), ("idle", 1))}, 110.0) == {"a": 110.0}
    assert clock.observe({"a": beat("a", ("idle", 0), ("idle", 1))}, 150.0) == {"a": 110.0}
    # A task that started and ended between two heartbeats still counts as work.
    assert clock.observe({"a": beat("a", ("idle", 0), ("idle", 2))}, 155.0) == {}
    assert clock.observe({"a": beat("a", ("idle", 0), ("idle", 2))}, 160.0) == {"a": 160.0}
    # Paused (cordoned) or draining nodes, and nodes with no worker, are not idle.
    assert clock.observe({"a": beat("a", ("idle", 0), ("idle", 2), state="paused")}, 170) == {}
    assert clock.observe({"b": beat("b")}, 180.0) == {}
    assert clock.observe({}, 190.0) == {}  # a node gone is forgotten


def test_a_node_is_drained_once_no_worker_lives_or_it_went_silent():
    assert node_is_drained(None)
    assert node_is_drained(beat("a", state="draining"))
    assert node_is_drained(beat("a", ("stopped", 3), state="draining"))
    assert not node_is_drained(beat("a", ("busy", 3), state="draining"))
    assert not node_is_drained(beat("a", ("idle", 3)))


def test_workers_per_node_configured_reported_remembered_or_guessed(tmp_path):
    settings = make_settings(tmp_path / "state", node={"workers": 3})
    aws = replace(settings, autoscale=replace(settings.autoscale, provider="aws"))
    local = replace(settings, autoscale=replace(settings.autoscale, provider="local"))
    beats = {"a": beat("a", ("idle", 0), ("busy", 0)), "b": beat("b", ("idle", 0))}
    assert workers_per_node(aws, beats, 0) == 2
    assert workers_per_node(aws, {}, 5) == 5
    assert workers_per_node(aws, {}, 0) == 1
    assert workers_per_node(local, {}, 0) == 3
    fixed = replace(aws, autoscale=replace(aws.autoscale, workers_per_node=8))
    assert workers_per_node(fixed, beats, 5) == 8


def test_recent_task_seconds_is_the_mean_run_time_of_the_classes_recent_successes(tmp_path):
    with open_store(make_settings(tmp_path / "state").store) as store:
        stages = [NewStage("fast", 0, "noop"), NewStage("gpu", 1, "noop", node_class="gpu")]
        store.create_job(NewJob("j", stages))
        store.add_tasks("j", [NewTask("fast", n) for n in range(4)] + [NewTask("gpu", 0)])
        assert recent_task_seconds(store, "default", 0.0) is None

        def run(stage: str, part: int, start: float, end: float, ok: bool = True) -> TaskRun:
            return TaskRun("j", stage, part, ok, "n", 0, 1, start, end, final=True)

        store.record_runs(
            [
                run("fast", 0, 1000.0, 1002.0),
                run("fast", 1, 1000.0, 1006.0),
                run("fast", 2, 10.0, 500.0),  # long ago: outside the window
                run("fast", 3, 1000.0, 1100.0, ok=False),  # failed: not a measure of work
                run("gpu", 0, 1000.0, 1300.0),  # another class
            ]
        )
        assert recent_task_seconds(store, "default", 900.0) == pytest.approx(4.0)
        assert recent_task_seconds(store, "gpu", 900.0) == pytest.approx(300.0)
