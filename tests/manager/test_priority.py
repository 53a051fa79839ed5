"""Priority classes in the manager: every body of a high job goes to ``tasks-high``, first."""

from __future__ import annotations

import pytest

from batchfarm.actors.backends import (
    COMPLETIONS,
    TASK_QUEUES,
    TASKS,
    TASKS_HIGH,
    open_blobs,
    open_queue,
    open_store,
    open_task_queues,
    task_queue_name,
)
from batchfarm.actors.backends.store import JobState, NewStage, StageMode
from batchfarm.actors.codec import decode_body
from batchfarm.actors.manager.results import ResultsProcessor
from batchfarm.actors.manager.spec import PRIORITIES
from batchfarm.actors.manager.submit import start_job
from batchfarm.actors.messages import TaskBody
from tests.manager import jobs_grid
from tests.manager.managerproc import ManagerGrid
from tests.manager.results_grid import InlineWorker, StorePlanner, drive, submit_job
from tests.worker.grid import make_settings, wait_for


def visible(queues) -> dict[str, int]:
    return {name: depth.visible for name, depth in queues.depths().items()}


def test_each_spec_priority_has_its_own_queue_highest_first():
    assert [task_queue_name(PRIORITIES[p]) for p in ("high", "normal")] == [TASKS_HIGH, TASKS]
    assert list(TASK_QUEUES.values()) == [TASKS_HIGH, TASKS]
    assert task_queue_name(5) == TASKS_HIGH  # a stored priority above "high" is high
    assert task_queue_name(-1) == TASKS


@pytest.fixture
def backends(tmp_path):
    settings = make_settings(tmp_path / "state")
    store = open_store(settings.store)
    queues = open_task_queues(settings.queue)
    completions = open_queue(settings.queue, COMPLETIONS)
    blobs = open_blobs(settings.storage)
    yield settings, store, queues, completions, blobs
    for closing in (queues, completions, blobs, store):
        closing.close()


def test_submitted_and_scheduled_jobs_go_to_their_priority_queue(backends):
    settings, store, queues, _, _ = backends
    jobs_grid.submit(settings, jobs_grid.sleep_job(3, 0.1, name="urgent", priority="high"))
    jobs_grid.submit(settings, jobs_grid.sleep_job(2, 0.1, name="routine"))
    assert visible(queues) == {TASKS_HIGH: 3, TASKS: 2}
    [message] = queues.named(TASKS_HIGH).receive(1)
    assert decode_body(message.body, TaskBody).job.startswith("urgent-")

    later = jobs_grid.spec(
        {"priority": "high", "after": "1h", "stages": [{"handler": "noop", "parts": 2}]}
    )
    job_id = jobs_grid.submit(settings, later)
    assert visible(queues) == {TASKS_HIGH: 2, TASKS: 2}  # nothing queued before its time
    store.set_job_state(job_id, JobState.SCHEDULED)  # (its time has come)
    start_job(store, queues, job_id, settings.tasks)
    assert visible(queues) == {TASKS_HIGH: 4, TASKS: 2}
    assert store.job(job_id).state == JobState.RUNNING


def test_a_high_jobs_chained_and_fan_in_tasks_go_to_the_high_queue(backends):
    _, store, queues, completions, blobs = backends
    stages = [
        NewStage("first", 0, "noop"),
        NewStage("second", 1, "noop", mode=StageMode.CHAIN),
        NewStage("all", 2, "noop", mode=StageMode.FAN_IN),
    ]
    for part in range(3):
        blobs.put(f"in/{part}", b"x")
    submit_job(store, queues, "hi", stages, [[f"in/{p}"] for p in range(3)], priority=1)
    worker = InlineWorker(queues, completions, blobs)
    results = ResultsProcessor(store, queues, completions, StorePlanner())
    assert visible(queues) == {TASKS_HIGH: 3, TASKS: 0}
    worker()
    drive(results, lambda: visible(queues)[TASKS_HIGH] == 3, what="the chained tasks sent")
    assert visible(queues)[TASKS] == 0
    worker()
    drive(results, lambda: visible(queues)[TASKS_HIGH] == 1, what="the fan-in task sent")
    assert visible(queues)[TASKS] == 0
    drive(results, lambda: store.job("hi").state == JobState.SUCCEEDED, between=worker)
    assert sorted(worker.runs) == sorted(t.task_id for t in store.tasks("hi"))


def test_a_high_job_submitted_behind_a_normal_backlog_runs_first(tmp_path):
    grid = ManagerGrid(tmp_path)
    try:
        grid.manager()
        # One worker holding only the task it runs: each start is a fresh choice.
        grid.node(node_workers=1, node_prefetch=0)
        settings = grid.settings
        backlog = jobs_grid.submit(settings, jobs_grid.sleep_job(12, 0.3, name="backlog"))

        def under_way() -> bool:
            return any(t.state != "queued" for t in jobs_grid.tasks(settings, backlog))

        wait_for(under_way, timeout=30, what="the backlog under way")
        urgent = jobs_grid.sleep_job(3, 0.05, name="urgent", priority="high")
        urgent_id = jobs_grid.submit(settings, urgent)
        for job_id in (urgent_id, backlog):
            done = jobs_grid.state_is(settings, job_id, "succeeded")
            wait_for(done, timeout=60, what=f"job {job_id} done")
        normal = jobs_grid.tasks(settings, backlog)
        high = jobs_grid.tasks(settings, urgent_id)
    finally:
        grid.close()
    # Judged from when the urgent tasks were queued (a task's start less its queue wait),
    # not from when the submit began: on a loaded machine a submit can take longer than a
    # few backlog tasks.
    queued = max((t.started_at or 0.0) - t.queue_wait_s for t in high)
    last_urgent = max(t.started_at or 0.0 for t in high)
    waiting = [t for t in normal if (t.started_at or 0.0) > queued]
    assert len(waiting) >= 2, "the backlog should still have been waiting: the test proves nothing"
    # The worker may already have been taking one backlog task when the urgent ones came.
    overtaken = [t for t in waiting if (t.started_at or 0.0) < last_urgent]
    assert len(overtaken) <= 1, [(t.part, t.started_at) for t in overtaken]
