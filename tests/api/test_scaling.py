"""The autoscaler through the HTTP API: ``GET /api/v1/scaling`` and its /metrics counter."""

from __future__ import annotations

import time

import sqlalchemy as sa

from batchfarm.actors.api.scaling import ScalingCollector
from batchfarm.actors.backends.store import NewScalingEvent, NodeBeat, WorkerBeat
from tests.api.apigrid import API, metric


def record(grid, at: float, before: int, after: int, reason: str, *, backlog: int = 0) -> None:
    grid.store.record_scaling_event(
        NewScalingEvent(
            time=at,
            node_class="default",
            provider="local",
            desired_before=before,
            desired_after=after,
            backlog=backlog,
            rate=0.25,
            nodes=before,
            reason=reason,
            details={"waiting": backlog},
        )
    )


def test_scaling_shows_the_fleet_the_last_decision_and_recent_events(grid):
    now = time.time()
    record(grid, now - 30, 0, 2, "scale out: 12 task(s)", backlog=12)
    record(grid, now - 20, 2, 2, "hold: the fleet matches the backlog", backlog=6)
    record(grid, now - 10, 2, 1, "scale in: 1 node(s) idle for 90 s")
    workers = [WorkerBeat(index=0, pid=10, state="idle")]
    grid.store.record_heartbeats([NodeBeat(node="local-2", time=now, state="up", workers=workers)])

    shown = grid.client.get(f"{API}/scaling").json()
    assert shown["provider"] == ""  # this grid runs no autoscaler; what it recorded still shows
    assert (shown["node_class"], shown["desired"], shown["nodes"]) == ("default", 1, 1)
    assert (shown["min_nodes"], shown["max_nodes"]) == (0, 4)
    events = shown["events"]
    assert [(e["direction"], e["desired_before"], e["desired_after"]) for e in events] == [
        ("in", 2, 1),
        ("hold", 2, 2),
        ("out", 0, 2),
    ]
    assert shown["last_decision"] == events[0]
    assert events[2]["backlog"] == 12
    assert events[2]["details"] == {"waiting": 12}
    assert events[2]["reason"] == "scale out: 12 task(s)"

    newest = grid.client.get(f"{API}/scaling", params={"limit": 1}).json()["events"]
    assert [e["direction"] for e in newest] == ["in"]


def test_scaling_with_no_decision_yet_and_a_bad_limit(grid):
    shown = grid.client.get(f"{API}/scaling").json()
    assert (shown["desired"], shown["nodes"], shown["last_decision"]) == (None, 0, None)
    assert shown["events"] == []
    refused = grid.client.get(f"{API}/scaling", params={"limit": 0})
    assert refused.status_code == 400
    assert refused.json()["field"] == "limit"
    assert "expected an integer from 1 to 1000" in refused.json()["error"]


def test_metrics_count_scaling_events_by_direction_from_the_store(grid):
    grid.metrics.registry.register(ScalingCollector(grid.store))  # as the manager does
    text = grid.client.get("/metrics").text
    assert [
        metric(text, "batchfarm_scaling_events_total", direction=d) for d in ("out", "in", "hold")
    ] == [0, 0, 0]
    now = time.time()
    record(grid, now - 3, 0, 3, "scale out")
    record(grid, now - 2, 3, 4, "scale out")
    record(grid, now - 1, 4, 2, "scale in")
    record(grid, now, 2, 2, "hold")
    text = grid.client.get("/metrics").text
    assert metric(text, "batchfarm_scaling_events_total", direction="out") == 2
    assert metric(text, "batchfarm_scaling_events_total", direction="in") == 1
    assert metric(text, "batchfarm_scaling_events_total", direction="hold") == 1


def test_a_failing_store_leaves_the_scaling_counter_out_of_the_scrape(grid):
    grid.metrics.registry.register(ScalingCollector(grid.store))
    with grid.store.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE scaling_events RENAME TO away"))
    scraped = grid.client.get("/metrics")
    assert scraped.status_code == 200  # the rest of the scrape is served
    assert "batchfarm_scaling_events_total" not in scraped.text
    assert metric(scraped.text, "batchfarm_build_info", version="unknown") == 1
    with grid.store.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE away RENAME TO scaling_events"))
    assert (
        metric(grid.client.get("/metrics").text, "batchfarm_scaling_events_total", direction="in")
        == 0
    )
