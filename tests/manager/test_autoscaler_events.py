"""Scaling events: every change recorded with its inputs, holds recorded sparingly."""

from __future__ import annotations

import pytest

from batchfarm.actors.backends import open_store
from batchfarm.actors.manager.autoscale import Decision, FleetView
from batchfarm.actors.manager.autoscaler_events import HOLD_EVERY_S, Applied, EventLog, direction
from tests.worker.grid import make_settings

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path):
    with open_store(make_settings(tmp_path / "state").store) as opened:
        yield opened


def applied(
    now: float,
    before: int,
    after: int,
    reason: str,
    *,
    remove: tuple[str, ...] = (),
    waiting: int = 0,
    in_flight: int = 0,
    task_s: float | None = 4.0,
) -> Applied:
    view = FleetView(
        now=now,
        waiting=waiting,
        in_flight=in_flight,
        task_s=task_s,
        nodes=before,
        idle_since={node: now - 100 for node in remove},
    )
    decision = Decision(desired=after, remove=remove, needed=after, reason=reason)
    return Applied(
        decision=decision,
        view=view,
        desired_before=before,
        desired_after=after,
        nodes_up=before,
        workers_per_node=2,
        details={"task_s": task_s, "default_task_s": 60.0, "target_drain_s": 600.0},
    )


def test_direction_follows_the_desired_capacity():
    assert [direction(1, 3), direction(3, 1), direction(2, 2)] == ["out", "in", "hold"]


def test_a_change_is_recorded_with_the_inputs_it_was_decided_from(store):
    log = EventLog(store, "local", "default")
    scale_out = applied(T0, 1, 3, "scale out: 40 task(s)", waiting=30, in_flight=10)
    event_id = log.record(scale_out)
    (event,) = store.scaling_events()
    assert event.id == event_id
    assert (event.time, event.provider, event.node_class) == (T0, "local", "default")
    assert (event.desired_before, event.desired_after, event.nodes) == (1, 3, 1)
    assert event.backlog == 40
    assert event.rate == pytest.approx(0.5)  # 2 workers per node, 4 s a task
    assert event.reason == "scale out: 40 task(s)"
    assert event.details["direction"] == "out"
    assert (event.details["waiting"], event.details["in_flight"]) == (30, 10)
    assert event.details["task_s"] == 4.0

    log.record(applied(T0 + 1, 3, 2, "scale in: 1 node(s) idle", remove=("local-3",)))
    newest = store.scaling_events()[0]
    assert newest.details["remove"] == ["local-3"]
    assert newest.details["idle_nodes"] == ["local-3"]
    assert newest.details["direction"] == "in"


def test_holds_are_recorded_when_their_reason_changes_or_every_few_minutes(store):
    log = EventLog(store, "aws", "default")
    hold = "hold: the fleet matches the backlog"
    assert log.record(applied(T0, 2, 2, hold)) is not None  # the first one says we are alive
    assert log.record(applied(T0 + 10, 2, 2, hold)) is None
    assert log.record(applied(T0 + 20, 2, 2, hold, task_s=None)) is None
    other = "hold: no node idle long enough to remove"
    assert log.record(applied(T0 + 30, 2, 2, other)) is not None
    assert log.record(applied(T0 + 40, 2, 2, other)) is None
    assert log.record(applied(T0 + 30 + HOLD_EVERY_S, 2, 2, other)) is not None
    # A change is always recorded, however soon after the last event.
    assert log.record(applied(T0 + 31 + HOLD_EVERY_S, 2, 4, "scale out")) is not None
    reasons = [e.reason for e in reversed(store.scaling_events())]
    assert reasons == [hold, other, other, "scale out"]


def test_the_rate_falls_back_to_the_assumed_task_time_before_any_is_measured(store):
    log = EventLog(store, "local", "default")
    log.record(applied(T0, 0, 1, "scale out", waiting=1, task_s=None))
    (event,) = store.scaling_events()
    assert event.rate == pytest.approx(2 / 60.0)
    assert event.details["task_s"] is None
