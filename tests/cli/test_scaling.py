"""``batchfarm scaling`` as a user runs it, against a real API server over an embedded grid."""

from __future__ import annotations

import json
import time

import pytest

from batchfarm.actors.backends.store import NewScalingEvent
from tests.api.apigrid import start_api
from tests.cli.grid import cli


@pytest.fixture
def served(tmp_path):
    """An API server with recorded scaling events, and the CLI's environment for it."""
    started = start_api(tmp_path / "state")
    env = {
        "BATCHFARM_API_LISTEN": started.server.url,
        "BATCHFARM_GRID_STATE_DIR": str(tmp_path / "state"),
    }
    yield started, env
    started.close()


def record(store, at: float, before: int, after: int, reason: str) -> None:
    store.record_scaling_event(
        NewScalingEvent(at, "default", "local", before, after, 9, 0.5, before, reason)
    )


def test_scaling_prints_the_fleet_and_a_table_of_decisions(served):
    grid, env = served
    empty = cli(env, "scaling")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.splitlines() == [
        "autoscaler: off ([autoscale] provider is empty)",
        "no scaling decisions recorded yet",
    ]
    now = time.time()
    record(grid.store, now - 120, 0, 2, "scale out: 9 task(s) need 2 node(s)")
    record(grid.store, now - 5, 2, 1, "scale in: 1 node(s) idle for 90 s")
    shown = cli(env, "scaling")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("autoscaler: off")
    header, newest, oldest = lines[1:4]
    assert header.split() == ["when", "direction", "desired", "backlog", "nodes", "reason"]
    assert newest.split(" ago ")[1].split()[:6] == ["in", "2", "->", "1", "9", "2"]
    assert newest.rstrip().endswith("scale in: 1 node(s) idle for 90 s")
    assert oldest.split(" ago ")[1].split()[:6] == ["out", "0", "->", "2", "9", "0"]

    as_json = cli(env, "scaling", "--json", "--limit", "1")
    assert as_json.returncode == 0, as_json.stderr
    found = json.loads(as_json.stdout)
    assert [e["reason"] for e in found["events"]] == ["scale in: 1 node(s) idle for 90 s"]
    assert found["desired"] == 1


def test_scaling_names_a_missing_manager_and_a_bad_limit(tmp_path):
    env = {"BATCHFARM_API_LISTEN": "http://127.0.0.1:1", "BATCHFARM_GRID_STATE_DIR": str(tmp_path)}
    down = cli(env, "scaling")
    assert down.returncode == 1
    assert "no manager API at http://127.0.0.1:1" in down.stderr
    bad = cli(env, "scaling", "--limit", "0")
    assert bad.returncode == 2
    assert "--limit" in bad.stderr
