"""The local fleet: real ``batchfarm node`` processes started, drained and reaped as a group
of instances would be, and the settings they inherit from the manager.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from batchfarm.actors.backends.fleet import IN_SERVICE, TERMINATING, FleetError, open_fleet
from batchfarm.actors.backends.fleet.local import (
    LocalFleet,
    node_environment,
    settings_environment,
)
from batchfarm.actors.settings import load
from tests.node.nodeproc import BASE_ENV, gone
from tests.worker.grid import wait_for


def named(pid: int) -> str:
    """The ``--name`` a node process was started with."""
    command = psutil.Process(pid).cmdline()
    return command[command.index("--name") + 1]


@pytest.fixture
def make_fleet(tmp_path):
    made: list[LocalFleet] = []

    def make(min_nodes: int = 0, max_nodes: int = 2) -> LocalFleet:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFARM_")}
        env.update(BASE_ENV)
        env["BATCHFARM_GRID_STATE_DIR"] = str(tmp_path / "state")
        env["BATCHFARM_NODE_WORKERS"] = "1"
        fleet = LocalFleet(min_nodes, max_nodes, env)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        pids = list(fleet.pids().values())
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        fleet.close()


@pytest.mark.slow
def test_desired_capacity_starts_named_nodes_within_the_limits_and_terminate_drains_one(
    make_fleet,
):
    fleet = make_fleet(min_nodes=1, max_nodes=2)
    assert fleet.set_desired(5) == 2  # clamped to the max by our code
    pids = fleet.pids()
    assert sorted(pids) == ["local-1", "local-2"]
    assert {name: named(pid) for name, pid in pids.items()} == {n: n for n in pids}
    state = fleet.state()
    assert (state.desired, state.min, state.max) == (2, 1, 2)
    assert [(i.id, i.lifecycle_state) for i in state.instances] == [
        ("local-1", IN_SERVICE),
        ("local-2", IN_SERVICE),
    ]

    fleet.terminate("local-1")
    state = fleet.state()
    assert state.desired == 1
    assert state.instance("local-2").lifecycle_state == IN_SERVICE
    left = state.instance("local-1")
    assert left is None or left.lifecycle_state == TERMINATING
    # SIGTERM drains the node: with nothing to finish it exits on its own, and is reaped.
    wait_for(lambda: gone([pids["local-1"]]), timeout=30, what="local-1 drained and gone")
    # A process shows as a zombie while its last threads still exit, and only then can its
    # parent reap it: the fleet drops it from its members within moments.
    wait_for(lambda: list(fleet.pids()) == ["local-2"], timeout=5, what="local-1 reaped")
    with pytest.raises(FleetError, match="desired capacity \\(1\\) is the fleet's min \\(1\\)"):
        fleet.terminate("local-2")
    with pytest.raises(FleetError, match="local-9 is not a member"):
        fleet.terminate("local-9")

    fleet.close()
    wait_for(lambda: gone([pids["local-2"]]), timeout=15, what="close drains every node")


@pytest.mark.slow
def test_a_node_that_exits_by_itself_leaves_and_lowering_capacity_spares_protected_nodes(
    make_fleet,
):
    fleet = make_fleet(min_nodes=0, max_nodes=3)
    fleet.set_desired(3)
    pids = fleet.pids()
    os.kill(pids["local-3"], signal.SIGKILL)  # a crash: the fleet shrinks with it
    wait_for(lambda: fleet.state().desired == 2, timeout=15, what="the crashed node reaped")
    assert sorted(fleet.pids()) == ["local-1", "local-2"]

    fleet.protect(["local-2"])
    assert fleet.state().instance("local-2").protected_from_scale_in
    fleet.set_desired(1)  # the newest unprotected node drains: local-1, not local-2
    wait_for(lambda: gone([pids["local-1"]]), timeout=30, what="local-1 drained")
    assert list(fleet.pids()) == ["local-2"]
    assert fleet.state().desired == 1
    with pytest.raises(FleetError, match="not members: local-7"):
        fleet.protect(["local-7"])

    fleet.set_desired(2)  # a new node gets a new name: ids are never reused
    assert sorted(fleet.pids()) == ["local-2", "local-4"]


def test_open_fleet_reads_local_urls_and_names_a_bad_one():
    fleet = open_fleet("local://?min=1&max=3")
    assert isinstance(fleet, LocalFleet)
    assert (fleet.min, fleet.max) == (1, 3)
    assert (open_fleet("local://").min, open_fleet("local://").max) == (0, 1)
    for url in ("local://host", "local://?min=x", "local://?size=2"):
        with pytest.raises(FleetError, match="expected local://\\?min=N&max=M") as caught:
            open_fleet(url)
        assert url in str(caught.value)
    with pytest.raises(FleetError, match="expected 0 <= min <= max"):
        open_fleet("local://?min=3&max=1")


def test_nodes_get_the_managers_effective_settings_through_the_environment(tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text(
        f"""
[grid]
name = "farm-7"
state_dir = "{tmp_path / "state"}"
[queue]
visibility_timeout = 90.5
[node]
workers = 3
pin = false
metrics_listen = "http://127.0.0.1:9109"
[media.presets.web]
height = 480
speed = "fast"
audio_codec = "none"
[api]
token = "s3cret \\"quoted\\""
"""
    )
    settings = load(config, {}).settings
    # Env overrides any file: a node reading another file still gets the manager's values.
    assert load(None, settings_environment(settings)).settings == settings
    env = node_environment(settings, base={"PATH": "/bin", "BATCHFARM_CONFIG": str(config)})
    node = load(None, {k: v for k, v in env.items() if k != "BATCHFARM_CONFIG"}).settings
    assert node.media.presets["web"]["height"] == 480
    assert (node.node.workers, node.queue.visibility_timeout) == (3, 90.5)
    # Two nodes on one machine cannot share a metrics port, and there is no EC2 to watch.
    assert node.node.metrics_listen == ""
    assert node.node.metadata_url == ""
    assert env["PATH"] == "/bin"
