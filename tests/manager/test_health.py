"""Knowing why: poison tasks fail for good, bad nodes are cordoned and kept paused."""

from __future__ import annotations

import dataclasses
import time

import pytest

from batchfarm.actors.backends import (
    COMPLETIONS,
    open_blobs,
    open_queue,
    open_store,
    open_task_queues,
)
from batchfarm.actors.backends.store import JobState, NewStage, NodeBeat
from batchfarm.actors.codec import encode_body
from batchfarm.actors.manager.health import NodeHealth
from batchfarm.actors.manager.results import ResultsProcessor
from batchfarm.actors.messages import ErrorInfo, OutputRef, TaskBody, poison_marker
from tests.manager import jobs_grid
from tests.manager.managerproc import ManagerGrid
from tests.manager.results_grid import StorePlanner, completion, submit_job
from tests.node.nodeproc import NodeProcess, env_for
from tests.worker.grid import make_settings, wait_for
from tests.worker.handlers import BAD_NODE_ENV

ERROR = ErrorInfo("TaskError", "the input is cursed")


@pytest.fixture
def grid(tmp_path):
    """A store with two nodes, queues, blobs, and a results processor judging health."""
    settings = make_settings(tmp_path / "state")
    store = open_store(settings.store)
    store.record_heartbeats([NodeBeat(n, time.time(), "up") for n in ("node-a", "node-b")])
    queues = open_task_queues(settings.queue)
    completions = open_queue(settings.queue, COMPLETIONS)
    blobs = open_blobs(settings.storage)
    health = NodeHealth(store, blobs)
    results = ResultsProcessor(store, queues, completions, StorePlanner(), health=health)
    submit_job(store, queues, "j", [NewStage("s", 0, "noop")], [[] for _ in range(6)])

    def report(part: int, node: str, attempt: int, *, ok: bool = False, final: bool = False):
        body = TaskBody(job="j", stage="s", part=part, handler="noop")
        outputs = [OutputRef(f"jobs/j/s/{part}/out", 1)] if ok else []
        event = completion(body, ok=ok, attempt=attempt, error=None if ok else ERROR)
        event = dataclasses.replace(
            event, node=node, final=final, outputs=outputs, started_at=1000.0 * attempt + part
        )
        completions.send(encode_body(event))
        results.step(10)

    yield store, blobs, health, results, report
    for closing in (queues, completions, blobs, store):
        closing.close()


def test_a_task_failing_on_two_nodes_is_poison_and_fails_for_good(grid):
    store, blobs, health, results, report = grid
    report(0, "node-a", 1)
    report(0, "node-a", 2)  # the same node again: not yet poison
    task = store.task("j", "s", 0)
    assert (task.state, task.failed_nodes) == ("retrying", ["node-a"])
    assert not blobs.exists(poison_marker("j", "s", 0))

    before = time.time()
    report(0, "node-b", 3)  # not final by its attempts, but a second node
    task = store.task("j", "s", 0)
    why = "poison: failed on nodes node-a and node-b"
    assert (task.state, task.reason, task.failed_nodes) == ("failed", why, ["node-a", "node-b"])
    assert task.error["message"] == "the input is cursed"
    job = store.job("j")
    assert job.state == JobState.FAILED
    assert job.reason == f"task j/s/0 failed: {why}; TaskError: the input is cursed"
    # The marker workers read before rerunning the task's queued retry: time, then reason.
    stamp, reason = blobs.read(poison_marker("j", "s", 0)).decode().strip().split(" ", 1)
    assert (float(stamp) >= before, reason) == (True, why)
    assert health.counters.poisoned == results.counters.failures == 1
    # A third node's late failure changes nothing but the list.
    report(0, "node-c", 4)
    assert store.task("j", "s", 0).state == "failed"
    assert results.counters.jobs_failed == 1


def test_a_node_whose_failures_succeed_elsewhere_is_cordoned_after_three(grid):
    store, _, health, _, report = grid
    for part in (0, 1):
        report(part, "node-b", 1)
        report(part, "node-a", 2, ok=True)
    report(2, "node-b", 1)
    report(3, "node-b", 1, ok=True)  # a success of its own clears node-b's strikes
    report(2, "node-a", 2, ok=True)
    assert not any(n.cordoned for n in store.nodes())
    assert health.take_cordoned() == []
    for part in (4, 5):
        report(part, "node-b", 1)
        report(part, "node-a", 2, ok=True)
    nodes = {n.id: n for n in store.nodes()}
    assert (nodes["node-a"].cordoned, nodes["node-b"].cordoned) == (False, True)
    assert nodes["node-b"].cordon_reason == (
        "failed 3 tasks that succeeded on other nodes:"
        " j/s/2 (ok on node-a), j/s/4 (ok on node-a), j/s/5 (ok on node-a)"
    )
    [cordon] = health.take_cordoned()
    assert (cordon.node, cordon.recorded) == ("node-b", True)
    assert cordon.reason == nodes["node-b"].cordon_reason
    assert health.take_cordoned() == []
    assert store.job("j").state == JobState.SUCCEEDED  # every task succeeded somewhere


def node_state(settings, name: str):
    with open_store(settings.store) as store:
        found = {n.id: n for n in store.nodes()}.get(name)
    return found


def test_a_bad_node_is_cordoned_paused_and_paused_again_after_a_restart(tmp_path):
    grid = ManagerGrid(tmp_path)
    # Attempts to spare until node-good has started: retries come every second at most
    # ([tasks] retry_backoff_max), and every process sets the queue's receive limit.
    receives = {"queue_max_receives": 20}
    settings = dataclasses.replace(
        grid.settings, queue=dataclasses.replace(grid.settings.queue, max_receives=20)
    )
    bad_env = {**grid.env, **env_for(node_workers=1, **receives), BAD_NODE_ENV: "1"}

    def start_bad() -> NodeProcess:
        node = NodeProcess(grid.state, "node-bad", env=bad_env)
        grid.started.append(node)
        return node

    try:
        grid.manager(**receives)
        bad = start_bad()
        wait_for(lambda: node_state(settings, "node-bad"), timeout=30, what="the manager up")
        stage = {
            "name": "work",
            "handler": "tests.worker.handlers:flaky",
            "parts": 6,
            "params": {"seconds": 0.05},
            "max_attempts": 20,
            "retry_backoff": 0.2,
        }
        job_id = jobs_grid.submit(settings, jobs_grid.spec({"name": "ok", "stages": [stage]}))

        def failed_on_bad() -> bool:
            found = jobs_grid.tasks(settings, job_id)
            return sum(t.failed_nodes == ["node-bad"] for t in found) >= 3

        wait_for(failed_on_bad, timeout=30, what="three tasks failed on node-bad")
        grid.node("node-good", node_workers=2, **receives)
        wait_for(jobs_grid.state_is(settings, job_id, "succeeded"), timeout=60, what="job done")
        assert {t.node_id for t in jobs_grid.tasks(settings, job_id)} == {"node-good"}

        def paused() -> bool:
            node = node_state(settings, "node-bad")
            return node is not None and node.cordoned and node.state == "paused"

        wait_for(paused, timeout=20, what="node-bad cordoned and paused")
        bad_node = node_state(settings, "node-bad")
        assert bad_node.cordon_reason.startswith("failed 3 tasks that succeeded on other nodes: ")
        assert not node_state(settings, "node-good").cordoned

        # Restarted, it reports "up" again: the manager pauses it again.
        bad.close()
        bad = start_bad()
        wait_for(lambda: "command pause" in bad.output(), timeout=20, what="a pause again")
        wait_for(paused, timeout=20, what="node-bad paused again")
        more = jobs_grid.submit(settings, jobs_grid.sleep_job(4, 0.05, name="more"))
        wait_for(jobs_grid.state_is(settings, more, "succeeded"), timeout=30, what="more done")
        assert {t.node_id for t in jobs_grid.tasks(settings, more)} == {"node-good"}
    finally:
        grid.close()
