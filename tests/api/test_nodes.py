"""Nodes through the HTTP API: listed with their workers, cordoned, steered."""

from __future__ import annotations

import time

from batchfarm.actors.backends.store import NodeBeat, WorkerBeat
from tests.api.apigrid import API


def beat(grid, node: str, *states: str, at: float | None = None) -> None:
    workers = [WorkerBeat(index=i, pid=100 + i, state=s, core=i) for i, s in enumerate(states)]
    when = time.time() if at is None else at
    grid.store.record_heartbeats([NodeBeat(node=node, time=when, state="up", workers=workers)])


def test_nodes_are_listed_with_their_workers(grid):
    beat(grid, "enc-01", "busy", "idle")
    nodes = grid.client.get(f"{API}/nodes").json()["nodes"]
    assert [(n["id"], n["state"], n["busy"], n["cordoned"]) for n in nodes] == [
        ("enc-01", "up", 1, False)
    ]
    assert [(w["index"], w["state"], w["core"]) for w in nodes[0]["workers"]] == [
        (0, "busy", 0),
        (1, "idle", 1),
    ]


def test_a_node_is_cordoned_and_released(grid):
    beat(grid, "enc-01", "idle")
    cordoned = grid.client.post(f"{API}/nodes/enc-01/cordon", json={"reason": "bad disk"})
    assert cordoned.json() == {"node": "enc-01", "cordoned": True}
    node = grid.client.get(f"{API}/nodes").json()["nodes"][0]
    assert (node["cordoned"], node["cordon_reason"]) == (True, "bad disk")
    released = grid.client.post(f"{API}/nodes/enc-01/uncordon")
    # No manager loop behind this server: the mark goes, no resume is sent.
    assert released.json() == {"node": "enc-01", "cordoned": False, "resumed": False}
    assert grid.client.get(f"{API}/nodes").json()["nodes"][0]["cordoned"] is False


def test_commands_for_unknown_lost_or_unreachable_nodes_are_refused(grid):
    unknown = grid.client.post(f"{API}/nodes/nobody/drain")
    assert unknown.status_code == 404
    assert "nobody" in unknown.json()["error"]
    assert grid.client.post(f"{API}/nodes/nobody/cordon").status_code == 404
    assert grid.client.post(f"{API}/nodes/nobody/uncordon").status_code == 404

    beat(grid, "gone", "idle", at=time.time() - 60)
    grid.store.mark_nodes_lost(time.time() - 30)
    lost = grid.client.post(f"{API}/nodes/gone/pause", json={"force": True})
    assert lost.status_code == 409
    assert "lost" in lost.json()["error"]

    beat(grid, "enc-01", "idle")
    # This server runs without a manager loop, so it has no control plane to send on.
    unreachable = grid.client.post(f"{API}/nodes/enc-01/resume")
    assert unreachable.status_code == 503
    bad = grid.client.post(f"{API}/nodes/enc-01/pause", json={"force": "yes"})
    assert (bad.status_code, bad.json()["field"]) == (400, "force")
