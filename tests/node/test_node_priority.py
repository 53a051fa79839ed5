"""Priority classes on a real node: a dead worker's high task goes back to its own queue."""

from __future__ import annotations

import time

from batchfarm.actors.backends import TASKS, TASKS_HIGH, open_queue
from tests.node.nodeproc import env_for
from tests.worker.grid import Completions, submit, task, wait_for


def depth(settings, name):
    with open_queue(settings.queue, name) as queue:
        return queue.depth()


def test_a_killed_workers_high_task_is_handed_back_at_once_and_runs_again(start_node, settings):
    submit(settings, task(0, "sleep", job="urgent", params={"seconds": 3.0}), queue_name=TASKS_HIGH)
    submit(settings, *[task(n, "sleep", job="later", params={"seconds": 0.1}) for n in range(2)])
    # A 30 s visibility: only the supervisor's hand-back can bring the task back soon.
    node = start_node(env=env_for(node_workers=1, node_prefetch=0, queue_visibility_timeout=30))
    [worker] = node.wait_workers(1)
    wait_for(lambda: depth(settings, TASKS_HIGH).in_flight == 1, what="the high task running")
    assert depth(settings, TASKS).visible == 2  # the normal ones wait behind it
    # The worker reports its receipts every second: after that, its node knows what to hand
    # back (killed before, it would leave the message to its 30 s visibility).
    time.sleep(1.5)
    worker.kill()
    seen = Completions(settings)
    wait_for(lambda: len(seen()) == 3, timeout=30, what="every task done")
    order = [(e.job, e.attempt) for e in sorted(seen(), key=lambda e: e.started_at)]
    # Handed back to tasks-high (not to tasks, where its receipt means nothing), it is taken
    # first again by the new worker.
    assert order == [("urgent", 2), ("later", 1), ("later", 1)]
    assert depth(settings, TASKS_HIGH).backlog == depth(settings, TASKS).backlog == 0
    assert node.proc.poll() is None
