"""Retrying a job: only its failed tasks run again, and the job goes on as in a first run."""

from __future__ import annotations

import pytest

from batchfarm.actors.backends import (
    COMPLETIONS,
    TASKS,
    TASKS_HIGH,
    open_blobs,
    open_queue,
    open_store,
    open_task_queues,
)
from batchfarm.actors.backends.store import JobState
from batchfarm.actors.codec import decode_body
from batchfarm.actors.manager.cancel import UnknownJobError, cancel_job
from batchfarm.actors.manager.plan import SpecPlanner
from batchfarm.actors.manager.results import ResultsProcessor
from batchfarm.actors.manager.retry import retry_job
from batchfarm.actors.messages import TaskBody
from tests.manager import jobs_grid
from tests.manager.managerproc import ManagerGrid
from tests.manager.results_grid import InlineWorker, drive
from tests.worker.grid import make_settings, wait_for


@pytest.fixture
def grid(tmp_path):
    """Store, queues and blobs of an embedded grid, an in-process worker and the processor."""
    settings = make_settings(tmp_path / "state")
    store = open_store(settings.store)
    queues = open_task_queues(settings.queue)
    completions = open_queue(settings.queue, COMPLETIONS)
    blobs = open_blobs(settings.storage)
    worker = InlineWorker(queues, completions, blobs)
    planner = SpecPlanner(lambda job_id: store.job(job_id).spec, settings.tasks)
    results = ResultsProcessor(store, queues, completions, planner)
    yield settings, store, queues, blobs, worker, results
    for closing in (queues, completions, blobs, store):
        closing.close()


def three_stages(blobs, parts: int, priority: str = "normal"):
    keys = [f"in/{p}.bin" for p in range(parts)]
    for part, key in enumerate(keys):
        blobs.put(key, f"input {part}".encode())
    stages = [
        {"name": "first", "handler": "noop"},
        {"name": "second", "handler": "noop"},
        {"name": "all", "handler": "noop", "mode": "fan_in"},
    ]
    data = {"name": "r", "priority": priority, "inputs": {"keys": keys}, "stages": stages}
    return jobs_grid.spec(data)


def states(store, job_id) -> dict[str, str]:
    return {f"{t.stage}/{t.part}": t.state for t in store.tasks(job_id, limit=None)}


def test_retry_runs_only_the_failed_tasks_and_the_job_finishes(grid):
    settings, store, queues, blobs, worker, results = grid
    job_id = jobs_grid.submit(settings, three_stages(blobs, 4, priority="high"))
    worker.fail |= {f"{job_id}/first/1", f"{job_id}/second/2"}  # each fails once, for good
    settled = {
        **{f"first/{p}": "succeeded" for p in (0, 2, 3)},
        **{f"second/{p}": "succeeded" for p in (0, 3)},
        "first/1": "failed",
        "second/2": "failed",
    }
    drive(results, lambda: states(store, job_id) == settled, between=worker, what="settled")
    job = store.job(job_id)
    assert job.state == JobState.FAILED
    assert job.finished_at is not None
    assert [s.state for s in store.stages(job_id)] == ["failed", "failed", "pending"]
    good = {(t.stage, t.part): t for t in store.tasks(job_id, states=["succeeded"])}

    assert retry_job(store, queues, job_id, settings.tasks) == 2
    job = store.job(job_id)
    assert (job.state, job.reason, job.finished_at) == ("running", None, None)
    assert [s.state for s in store.stages(job_id)] == ["running", "running", "pending"]
    retried = [store.task(job_id, "first", 1), store.task(job_id, "second", 2)]
    assert [(t.state, t.attempts, t.failed_nodes) for t in retried] == [("queued", 0, [])] * 2
    # A high job's retried tasks go to the high queue, and nothing else was queued.
    assert {n: d.visible for n, d in queues.depths().items()} == {TASKS_HIGH: 2, TASKS: 0}
    assert retry_job(store, queues, job_id, settings.tasks) == 0  # nothing failed now

    done = lambda: store.job(job_id).state == JobState.SUCCEEDED  # noqa: E731
    drive(results, done, between=worker, what="the retried job to succeed")
    assert [s.state for s in store.stages(job_id)] == ["succeeded"] * 3
    [fan_in] = store.tasks(job_id, stage="all")
    assert fan_in.inputs == [f"jobs/{job_id}/second/{p}/out.bin" for p in range(4)]
    # The good tasks ran once and kept their records; the failed ones ran twice.
    for (stage, part), before in good.items():
        assert worker.runs.count(before.task_id) == 1
        after = store.task(job_id, stage, part)
        assert (after.state, after.started_at, after.outputs) == (
            "succeeded",
            before.started_at,
            before.outputs,
        )
    assert worker.runs.count(f"{job_id}/first/1") == worker.runs.count(f"{job_id}/second/2") == 2
    assert sum(t.duplicate_runs for t in store.tasks(job_id)) == 0


def test_a_retried_part_gets_its_own_range_value_and_unknown_jobs_are_refused(grid):
    settings, store, queues, _, worker, results = grid
    segments = {"param": "segment", "start": 10, "step": 5}
    ranged = {"name": "cut", "handler": jobs_grid.SLEEP, "parts": 4, "range": segments}
    job_id = jobs_grid.submit(settings, jobs_grid.spec({"stages": [ranged]}))
    worker.fail.add(f"{job_id}/cut/2")
    drive(results, lambda: store.job(job_id).state == "failed", between=worker, what="failed")
    drive(results, lambda: len(store.tasks(job_id, states=["succeeded"])) == 3, between=worker)

    assert retry_job(store, queues, job_id, settings.tasks) == 1
    [message] = queues.named(TASKS).receive(10)
    body = decode_body(message.body, TaskBody)
    assert (body.task_id, body.params) == (f"{job_id}/cut/2", {"segment": 20})
    with pytest.raises(UnknownJobError, match="no job 'nope-1'"):
        retry_job(store, queues, "nope-1", settings.tasks)


def test_a_job_with_nothing_failed_or_cancelled_is_left_alone(grid):
    settings, store, queues, blobs, _, _ = grid
    job_id = jobs_grid.submit(settings, three_stages(blobs, 2))
    assert retry_job(store, queues, job_id, settings.tasks) == 0
    assert store.job(job_id).state == JobState.RUNNING
    assert cancel_job(store, blobs, job_id) is True
    assert retry_job(store, queues, job_id, settings.tasks) == 0
    assert store.job(job_id).state == JobState.CANCELLED


def test_a_job_failed_on_a_real_node_succeeds_after_retry_rewriting_nothing(tmp_path):
    marker = tmp_path / "cause"
    marker.touch()
    work = {
        "name": "work",
        "handler": "tests.worker.handlers:flaky",
        "parts": 4,
        "params": {"marker": str(marker), "fail_parts": [1, 3]},
        "max_attempts": 1,
    }
    sums = {"name": "sums", "handler": "checksum", "mode": "fan_in", "params": {"manifest": "m"}}
    spec = jobs_grid.spec({"name": "flaky", "stages": [work, sums]})
    grid = ManagerGrid(tmp_path)
    settings = grid.settings
    blobs = open_blobs(settings.storage)
    try:
        grid.manager()
        grid.node(node_workers=2)
        job_id = jobs_grid.submit(settings, spec)

        def settled() -> bool:
            found = {t.part: t.state for t in jobs_grid.tasks(settings, job_id)}
            return found == {0: "succeeded", 1: "failed", 2: "succeeded", 3: "failed"}

        wait_for(settled, timeout=60, what="parts 0 and 2 done, 1 and 3 failed")
        # The job's state follows its tasks' in the same results step, a moment later.
        wait_for(jobs_grid.state_is(settings, job_id, "failed"), timeout=10, what="job failed")
        kept = {p: blobs.head(f"jobs/{job_id}/work/{p}/part.txt") for p in (0, 2)}
        marker.unlink()  # the cause is gone
        with open_store(settings.store) as store, open_task_queues(settings.queue) as queues:
            assert retry_job(store, queues, job_id, settings.tasks) == 2
        wait_for(jobs_grid.state_is(settings, job_id, "succeeded"), timeout=60, what="job done")
        tasks = {(t.stage, t.part): t for t in jobs_grid.tasks(settings, job_id)}
        after = {p: blobs.head(f"jobs/{job_id}/work/{p}/part.txt") for p in (0, 2)}
        manifest = blobs.read(f"jobs/{job_id}/sums/0/m").decode()
    finally:
        blobs.close()
        grid.close()
    assert after == kept  # same bytes, same modification time: not written again
    assert {key: (t.state, t.attempts, t.duplicate_runs) for key, t in tasks.items()} == {
        **{("work", p): ("succeeded", 1, 0) for p in range(4)},
        ("sums", 0): ("succeeded", 1, 0),
    }
    assert sorted(line.split()[1] for line in manifest.splitlines()) == [
        f"jobs/{job_id}/work/{p}/part.txt" for p in range(4)
    ]
