"""The autoscaler with the ``local`` provider, as real processes: a manager that starts and
stops ``batchfarm node`` processes as a burst of tasks comes and goes.
"""

from __future__ import annotations

import re
import signal
import time

import httpx
import psutil
import pytest

from batchfarm.actors.backends import open_store
from tests.manager.jobs_grid import SLEEP, files_job
from tests.manager.managerproc import ManagerGrid
from tests.manager.test_manager_process import job_state, submit
from tests.worker.grid import wait_for

pytestmark = pytest.mark.slow


def local_nodes(manager_pid: int) -> dict[str, int]:
    """The manager's live ``batchfarm node --name local-N`` children: name -> pid."""
    found = {}
    for child in psutil.Process(manager_pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            command = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "node" in command and "--name" in command:
            found[command[command.index("--name") + 1]] = child.pid
    return found


@pytest.fixture
def grid(tmp_path):
    processes = ManagerGrid(
        tmp_path,
        autoscale_provider="local",
        autoscale_min_nodes=0,
        autoscale_max_nodes=2,
        autoscale_interval=0.3,
        autoscale_idle=1.5,
        autoscale_target_drain=2.0,
        autoscale_default_task=1.0,
        node_workers=1,
        node_prefetch=0,  # a node running the long task holds no short one back
    )
    yield processes
    processes.close()


def test_a_burst_grows_the_local_fleet_which_shrinks_to_zero_without_stopping_a_busy_node(
    tmp_path, grid
):
    manager = grid.manager()
    api = httpx.Client(base_url=grid.api_url, timeout=10)

    def scaling() -> dict:
        return api.get("/api/v1/scaling").json()

    wait_for(lambda: _answers(api), timeout=30, what="the manager's API")
    time.sleep(1.0)
    assert local_nodes(manager.proc.pid) == {}  # min 0: no node until there is work
    # One long task and six short ones: once the short ones are done, one node idles while
    # the other still runs the long task, and only the idle one may go.
    long_job = submit(grid.settings, files_job(tmp_path, "long", 1, SLEEP, {"seconds": 14.0}))
    short_job = submit(grid.settings, files_job(tmp_path, "short", 6, SLEEP, {"seconds": 0.5}))
    wait_for(lambda: len(local_nodes(manager.proc.pid)) == 2, timeout=30, what="two local nodes")
    assert sorted(local_nodes(manager.proc.pid)) == ["local-1", "local-2"]
    wait_for(
        lambda: job_state(grid.settings, short_job) == "succeeded", timeout=60, what="short job"
    )
    # The idle node is drained and removed while the long task still runs on the other.
    wait_for(lambda: len(local_nodes(manager.proc.pid)) == 1, timeout=30, what="one node removed")
    assert job_state(grid.settings, long_job) == "running"
    with open_store(grid.settings.store) as store:
        (long_task,) = store.tasks(long_job)
    assert long_task.state == "running"
    assert list(local_nodes(manager.proc.pid)) == [long_task.node_id]
    # Then the long task ends, its node idles, and the fleet goes back to zero.
    wait_for(lambda: job_state(grid.settings, long_job) == "succeeded", timeout=60, what="long")
    wait_for(lambda: local_nodes(manager.proc.pid) == {}, timeout=30, what="no node left")

    # Every node the fleet ran drained and exited by itself, cleanly (reaped, then logged).
    def exits() -> dict[str, str]:
        return dict(re.findall(r"node (local-\d+) exited \(code (-?\d+)\)", manager.output()))

    wait_for(lambda: exits().keys() >= {"local-1", "local-2"}, timeout=10, what="nodes reaped")
    assert set(exits().values()) == {"0"}

    with open_store(grid.settings.store) as store:
        tasks = [*store.tasks(long_job), *store.tasks(short_job)]
        events = list(reversed(store.scaling_events()))
    # Every task ran once, to the end: no run was cut short and none ran twice.
    assert [(t.state, t.attempts, t.duplicate_runs) for t in tasks] == [("succeeded", 1, 0)] * 7
    (done_long,) = (t for t in tasks if t.stage == "work" and t.job_id == long_job)
    assert done_long.finished_at - done_long.started_at >= 14.0

    moves = [(e.desired_before, e.desired_after) for e in events]
    moves = [move for move in moves if move[0] != move[1]]
    assert moves[0][0] == 0
    assert max(after for _, after in moves) == 2
    assert moves[-2:] == [(2, 1), (1, 0)]
    shrink = next(e for e in events if (e.desired_before, e.desired_after) == (2, 1))
    assert shrink.reason.startswith("scale in:")
    assert shrink.backlog == 1  # the long task was still running when the other node went
    assert shrink.details["remove"] != [done_long.node_id]
    grow = next(e for e in events if e.desired_after > e.desired_before)
    assert (grow.provider, grow.nodes) == ("local", 0)
    assert grow.backlog >= 1
    assert grow.reason.startswith("scale out:")

    # The last node's heartbeats stop; the store stops counting it once they are missed.
    wait_for(lambda: scaling()["nodes"] == 0, timeout=10, what="no node reporting")
    shown = scaling()
    assert (shown["provider"], shown["desired"]) == ("local", 0)
    changes = [e for e in shown["events"] if e["direction"] != "hold"]  # newest first
    assert [(e["desired_before"], e["desired_after"]) for e in changes[:2]] == [(1, 0), (2, 1)]
    assert shown["last_decision"] == shown["events"][0]
    metrics = api.get("/metrics").text
    assert 'batchfarm_autoscaler_desired_nodes{node_class="default"} 0.0' in metrics
    outs = sum(1 for before, after in moves if after > before)
    assert f'batchfarm_scaling_events_total{{direction="out"}} {outs:.1f}' in metrics
    assert 'batchfarm_scaling_events_total{direction="in"} 2.0' in metrics

    manager.proc.send_signal(signal.SIGTERM)
    assert manager.proc.wait(30) == 0, manager.output()
    api.close()


def _answers(api: httpx.Client) -> bool:
    try:
        return api.get("/api/v1/health").status_code == 200
    except httpx.HTTPError:
        return False
