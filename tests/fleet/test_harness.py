"""A burst on an elastic fleet, as real processes: moto's Auto Scaling group behind our
lifecycle endpoint, a node process for each member (:mod:`tests.fleet.harness`), a manager
whose autoscaler grows the group and shrinks it back, the embedded queue and store; no task
is lost or runs twice in effect.
"""

from __future__ import annotations

from collections import Counter

import pytest

from batchfarm.actors.backends import open_store
from batchfarm.actors.backends.fleet import CONTINUE, TERMINATED, TERMINATING_WAIT
from tests.aws import REGION
from tests.fleet.handlers import runs
from tests.fleet.harness import FULL_LIFE, RECORD, group_desired, hooked_group, in_service
from tests.manager.jobs_grid import files_job
from tests.manager.managerproc import ManagerGrid
from tests.manager.test_manager_process import job_state, submit
from tests.worker.grid import wait_for

pytestmark = pytest.mark.slow

#: Tasks in the burst.
PARTS = 12


def test_a_burst_grows_the_group_which_drains_and_shrinks_back_to_its_minimum(
    tmp_path, lifecycle, make_group, fleet_harness
):
    group = hooked_group(lifecycle, make_group, minimum=1, maximum=3, terminate_timeout=60)
    grid = ManagerGrid(
        tmp_path,
        autoscale_provider="aws",
        autoscale_group=group,
        autoscale_region=REGION,
        autoscale_endpoint_url=lifecycle.url,
        autoscale_min_nodes=1,
        autoscale_max_nodes=3,
        autoscale_interval=0.3,
        autoscale_idle=1.5,
        autoscale_target_drain=2.0,
        autoscale_default_task=1.0,
        node_workers=1,
        node_prefetch=0,
    )
    harness = fleet_harness(group, grid.state, grid.env)
    try:
        manager = grid.manager()
        wait_for(lambda: len(in_service(lifecycle, group)) == 1, timeout=30, what="the first node")
        log = tmp_path / "runs.jsonl"
        # Enough work to outlast the new members' boot (a few seconds on a busy machine).
        job = submit(
            grid.settings,
            files_job(tmp_path, "burst", PARTS, RECORD, {"seconds": 2.0, "log": str(log)}),
        )
        wait_for(lambda: group_desired(lifecycle, group) > 1, timeout=30, what="the group grows")
        wait_for(
            lambda: job_state(grid.settings, job) == "succeeded", timeout=60, what="the backlog"
        )
        # Idle nodes drain and go; the group keeps its minimum.
        wait_for(
            lambda: len(harness.running()) == 1 and group_desired(lifecycle, group) == 1,
            timeout=30,
            what="the group back at its minimum",
        )
        wait_for(lambda: len(in_service(lifecycle, group)) == 1, timeout=10, what="one member")
        wait_for(
            lambda: TERMINATING_WAIT not in lifecycle.states(group).values(),
            timeout=20,
            what="the autoscaler releasing the terminated members from their hook",
        )
        with open_store(grid.settings.store) as store:
            tasks = store.tasks(job)
            events = list(reversed(store.scaling_events()))
    finally:
        grid.close()

    assert max(e.desired_after for e in events) > 1
    # Every task ran to the end once, with one output: nothing lost, nothing twice.
    assert sorted((t.part, t.state, t.duplicate_runs) for t in tasks) == [
        (n, "succeeded", 0) for n in range(PARTS)
    ]
    assert all(len(t.outputs) == 1 for t in tasks)
    recorded = runs(log)
    assert Counter(r["event"] for r in recorded) == {"start": PARTS, "end": PARTS}
    nodes_of = harness.by_pid()
    used = {nodes_of[r["node_pid"]] for r in recorded}
    assert len(used) > 1  # the burst spread over the members the group grew
    # No task started on a node after it was told to drain.
    for run in (r for r in recorded if r["event"] == "start"):
        drained_at = harness.node(nodes_of[run["node_pid"]]).drained_at()
        assert drained_at is None or run["at"] < drained_at, run

    gone = [i for i, s in lifecycle.states(group).items() if s == TERMINATED]
    assert gone
    assert len(gone) == len(harness.nodes) - 1
    for instance in gone:
        node = harness.node(instance)
        # Launched through its hook, drained, exited 0, then released by the autoscaler
        # (its node was gone), not by the hook's timeout.
        assert lifecycle.sequence(instance) == FULL_LIFE, instance
        assert lifecycle.history[instance][-1].cause == f"CompleteLifecycleAction {CONTINUE}"
        assert (node.code, node.stopped) == (0, False), node.output()
        assert node.drained_at() is not None  # told to drain (the check above is not idle)
        assert "lifecycle hook 'ready': completed (CONTINUE)" in node.output()
        assert "lifecycle hook 'drain'" not in node.output()  # the node had exited
        assert f"{instance} released from termination hook 'drain'" in manager.log.read_text()
    assert not any(t.cause.startswith("timeout") for h in lifecycle.history.values() for t in h)
