"""Notices reaching a node while its task runs, on an Auto Scaling group's member: moto's
group behind our lifecycle endpoint, a node process per member (:mod:`tests.fleet.harness`),
the embedded queue, no manager. A spot notice hands the task to another member; a scale-in
lifecycle hook holds the instance, with heartbeats, until the task ends.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from batchfarm.actors.backends.fleet import CONTINUE, TERMINATED, TERMINATING_WAIT
from tests.fleet.conftest import aws
from tests.fleet.handlers import runs
from tests.fleet.harness import FULL_LIFE, RECORD, hooked_group, in_service
from tests.node.nodeproc import env_for
from tests.worker.grid import Completions, completions, make_settings, task, wait_for
from tests.worker.grid import submit as send_tasks

pytestmark = pytest.mark.slow


def node_grid(tmp_path: Path):
    """Settings and node environment of an embedded grid without a manager."""
    state = tmp_path / "state"
    settings = make_settings(state)
    env = env_for(node_workers=1, node_prefetch=0, node_heartbeat_interval=0.5)
    return state, settings, env


def test_a_spot_notice_mid_task_hands_it_back_and_it_completes_elsewhere_once(
    tmp_path, lifecycle, make_group, fleet_harness
):
    group = hooked_group(lifecycle, make_group, minimum=2, maximum=2, terminate_timeout=60)
    state, settings, env = node_grid(tmp_path)
    harness = fleet_harness(group, state, env)
    wait_for(lambda: len(in_service(lifecycle, group)) == 2, timeout=40, what="two nodes")
    log = tmp_path / "runs.jsonl"
    send_tasks(settings, task(0, RECORD, params={"seconds": 8.0, "log": str(log)}))
    wait_for(lambda: len(runs(log)) == 1, timeout=20, what="the task started")
    (first,) = runs(log)
    spot = harness.by_pid()[first["node_pid"]]
    # The instance stops in 17 s: 2 s of grace beyond the hand-back margin, too little for
    # the task, so it is handed back at once and taken by the other node.
    deadline = time.time() + 17
    harness.node(spot).imds.spot_interruption(deadline)
    node = harness.node(spot)
    assert node.process.wait(15) == 0, node.output()
    assert time.time() < deadline
    wait_for(lambda: any(r["event"] == "end" for r in runs(log)), timeout=30, what="the rerun")
    starts = [harness.by_pid()[r["node_pid"]] for r in runs(log) if r["event"] == "start"]
    ends = [harness.by_pid()[r["node_pid"]] for r in runs(log) if r["event"] == "end"]
    assert starts[0] == spot
    assert ends == [starts[-1]]
    assert ends[0] != spot
    seen = Completions(settings)
    wait_for(lambda: len(seen()) >= 1, timeout=10, what="the completion")
    time.sleep(1.0)  # a second completion, were there one, would come within this
    assert [(c.task_id, c.ok) for c in seen()] == [("job1/s1/0", True)]
    assert "spot-interruption notice" in node.output()


def test_a_scale_in_hook_mid_task_holds_the_instance_with_heartbeats_until_the_task_ends(
    tmp_path, lifecycle, make_group, fleet_harness
):
    # The hook times out in 6 s (and would then ABANDON); the task runs 10 s.
    group = hooked_group(lifecycle, make_group, minimum=1, maximum=1, terminate_timeout=6)
    state, settings, env = node_grid(tmp_path)
    harness = fleet_harness(group, state, env)
    wait_for(lambda: len(in_service(lifecycle, group)) == 1, timeout=30, what="a node")
    (instance,) = in_service(lifecycle, group)
    log = tmp_path / "runs.jsonl"
    send_tasks(settings, task(0, RECORD, params={"seconds": 10.0, "log": str(log)}))
    wait_for(lambda: len(runs(log)) == 1, timeout=20, what="the task started")
    client = aws("autoscaling", lifecycle.url)
    client.terminate_instance_in_auto_scaling_group(
        InstanceId=instance, ShouldDecrementDesiredCapacity=True
    )
    client.close()
    assert lifecycle.state(instance) == TERMINATING_WAIT
    node = harness.node(instance)
    wait_for(lambda: lifecycle.state(instance) == TERMINATED, timeout=30, what="the hook done")
    wait_for(lambda: node.code is not None, timeout=15, what="the node's exit")

    (start, end) = runs(log)
    assert (start["event"], end["event"]) == ("start", "end")
    ended = lifecycle.history[instance][-1]
    assert ended.cause == f"CompleteLifecycleAction {CONTINUE}"
    # Held past the hook's 6 s by heartbeats, and released only after the task ended.
    held = ended.at - lifecycle.history[instance][-2].at
    assert held > 6
    assert end["at"] < ended.wall
    beats = [p for a, p in lifecycle.calls if a == "RecordLifecycleActionHeartbeat"]
    assert len(beats) >= 2
    assert {p["InstanceId"] for p in beats} == {instance}
    assert [(c.task_id, c.ok) for c in completions(settings)] == [("job1/s1/0", True)]
    assert (node.code, node.stopped) == (0, False), node.output()
    assert lifecycle.sequence(instance) == FULL_LIFE
