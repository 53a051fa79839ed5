"""Cancelling a job: durable marker first, then the store; finished jobs stay as they are."""

from __future__ import annotations

import pytest

from batchfarm.actors.backends import open_blobs, open_store, open_task_queues
from batchfarm.actors.manager.cancel import UnknownJobError, cancel_job
from batchfarm.actors.manager.spec import parse_spec
from batchfarm.actors.manager.submit import submit_job
from batchfarm.actors.messages import cancel_marker
from tests.worker.grid import make_settings


@pytest.fixture
def backends(tmp_path):
    settings = make_settings(tmp_path / "state")
    store = open_store(settings.store)
    blobs = open_blobs(settings.storage)
    tasks = open_task_queues(settings.queue)
    yield settings, store, blobs, tasks
    tasks.close()
    blobs.close()
    store.close()


def noop_job(parts: int):
    spec = {"stages": [{"handler": "noop", "parts": parts}]}
    return parse_spec(spec, source="job.toml", base_dir=".")


def test_cancel_marks_the_job_and_leaves_the_marker_workers_look_for(backends):
    settings, store, blobs, tasks = backends
    job_id = submit_job(noop_job(3), store=store, blobs=blobs, tasks=tasks, defaults=settings.tasks)
    assert tasks.depth().visible == 3
    assert cancel_job(store, blobs, job_id, reason="changed my mind") is True
    assert blobs.exists(cancel_marker(job_id))
    job = store.job(job_id)
    assert (job.state, job.reason) == ("cancelled", "changed my mind")
    assert {t.state for t in store.tasks(job_id)} == {"cancelled"}
    assert {s.state for s in store.stages(job_id)} == {"cancelled"}
    # A second cancel changes nothing: the job is over.
    assert cancel_job(store, blobs, job_id) is False


def test_cancelling_an_unknown_job_names_it(backends):
    _, store, blobs, _ = backends
    with pytest.raises(UnknownJobError, match="no job 'nope-1'"):
        cancel_job(store, blobs, "nope-1")
