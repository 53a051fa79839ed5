"""Priority classes on the worker: high-priority tasks first, each message settled at home."""

from __future__ import annotations

import time

from batchfarm.actors.backends import TASKS, TASKS_HIGH, open_blobs, open_queue
from batchfarm.actors.backends.queue import QueueDepth
from batchfarm.actors.messages import poison_marker
from tests.worker.grid import Completions, make_settings, submit, task, wait_for


def depth(settings, name):
    with open_queue(settings.queue, name) as queue:
        return queue.depth()


def test_a_high_job_queued_behind_a_normal_backlog_runs_first(tmp_path, start_core):
    # prefetch = 0: the worker holds only the task it runs, so each start is a fresh choice.
    settings = make_settings(tmp_path / "state", node={"prefetch": 0})
    submit(settings, *[task(n, "sleep", job="normal", params={"seconds": 0.3}) for n in range(8)])
    core = start_core(settings)
    wait_for(lambda: core.state == "busy", what="the worker busy with a normal task")
    high = [task(n, "sleep", job="urgent", params={"seconds": 0.05}) for n in range(3)]
    submit(settings, *high, queue_name=TASKS_HIGH)
    seen = Completions(settings)
    wait_for(lambda: len(seen()) == 11, timeout=30, what="all 11 tasks done")

    started = [e.job for e in sorted(seen(), key=lambda e: e.started_at)]
    first_high = started.index("urgent")
    # The high job's tasks ran one after another as soon as the running task ended ...
    assert started[first_high : first_high + 3] == ["urgent"] * 3
    assert first_high <= 2
    # ... before the normal tasks still waiting in the queue.
    assert started[first_high + 3 :] == ["normal"] * (8 - first_high)
    assert all(e.ok and e.attempt == 1 for e in seen())


def test_a_high_task_is_retried_and_dead_lettered_in_its_own_queue(tmp_path, start_core):
    settings = make_settings(tmp_path / "state")
    submit(settings, task(0, "fail", max_attempts=2), queue_name=TASKS_HIGH)
    start_core(settings)
    wait_for(lambda: depth(settings, TASKS_HIGH).dead == 1, what="the task in tasks-high-dlq")
    seen = Completions(settings)
    assert [(e.attempt, e.final) for e in seen()] == [(1, False), (2, True)]
    assert depth(settings, TASKS) == QueueDepth(visible=0, in_flight=0, delayed=0, dead=0)
    assert depth(settings, TASKS_HIGH).backlog == 0


def test_drain_hands_back_each_waiting_task_to_its_own_queue(tmp_path, start_core):
    settings = make_settings(tmp_path / "state", node={"prefetch": 3})
    submit(settings, *[task(n, "sleep", job="low", params={"seconds": 0.5}) for n in range(6)])
    submit(
        settings,
        *[task(n, "sleep", job="high", params={"seconds": 0.5}) for n in range(2)],
        queue_name=TASKS_HIGH,
    )
    core = start_core(settings)
    # One task running and three waiting: the two high ones come first, then normal ones.
    wait_for(lambda: core.done >= 1 and len(core.leases) == 4, what="a task running, 3 waiting")
    core.drain()
    assert core.drained.wait(10)
    high, low = depth(settings, TASKS_HIGH), depth(settings, TASKS)
    assert high.in_flight == low.in_flight == 0  # handed back at once, each to its queue
    assert high.visible + low.visible == 8 - core.done
    assert high.dead == low.dead == 0


def test_a_rerun_of_a_poison_task_is_dead_lettered_unrun(tmp_path, start_core):
    settings = make_settings(tmp_path / "state")
    submit(settings, task(0, "fail", job="bad", max_attempts=5, retry_backoff_s=0.5))
    core = start_core(settings)
    seen = Completions(settings)
    wait_for(lambda: len(seen()) == 1, what="the failing task's first run")
    # What the manager writes once the task failed on two nodes: the time of its verdict.
    blobs = open_blobs(settings.storage)
    blobs.put(poison_marker("bad", "s1", 0), f"{time.time()} poison: failed on a and b".encode())
    blobs.close()
    wait_for(lambda: depth(settings, TASKS).dead == 1, what="the poison task dead-lettered")
    assert core.poisoned == 1
    assert [e.attempt for e in seen()] == [1]  # its retry was dropped, not run

    # A body sent after the verdict (the job retried) runs its every attempt.
    submit(settings, task(0, "fail", job="bad", max_attempts=2, retry_backoff_s=0.1))
    wait_for(lambda: depth(settings, TASKS).dead == 2, what="the retried task's final failure")
    assert [(e.attempt, e.final) for e in seen()] == [(1, False), (1, False), (2, True)]
    assert core.poisoned == 1
