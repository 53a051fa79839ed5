"""The autoscaler's count of open jobs per node class, on SQLite, PostgreSQL and MariaDB: while
a class has any, its idle nodes hold the whole ``[autoscale] idle`` (more work may come).
"""

from __future__ import annotations

from batchfarm.actors.backends.store import JobState, NewJob, NewStage, StageState, Store
from batchfarm.actors.manager.autoscaler_inputs import open_jobs


def job(store: Store, job_id: str, state: str, encode: str, pack: str) -> None:
    """A job whose encode stage runs on default nodes and whose pack stage on highmem ones."""
    stages = [
        NewStage("encode", 0, "transcode", state=encode),
        NewStage("pack", 1, "concat", node_class="highmem", state=pack),
    ]
    store.create_job(NewJob(job_id, stages, state=state))


def test_open_jobs_counts_running_and_pending_jobs_with_a_stage_of_the_class_to_do(
    store: Store,
) -> None:
    pending, running, done = StageState.PENDING, StageState.RUNNING, StageState.SUCCEEDED
    job(store, "encoding", JobState.RUNNING, running, pending)  # both classes: more to come
    job(store, "packing", JobState.RUNNING, done, running)  # default's part is done
    job(store, "accepted", JobState.PENDING, pending, pending)
    job(store, "finished", JobState.SUCCEEDED, done, done)
    # Not before their start or their resume: nodes held for them now would idle.
    job(store, "later", JobState.SCHEDULED, pending, pending)
    job(store, "paused", JobState.PAUSED, running, pending)

    assert open_jobs(store, "default") == 2  # encoding, accepted
    assert open_jobs(store, "highmem") == 3  # encoding, packing, accepted
    assert open_jobs(store, "gpu") == 0

    store.set_stage_state("encoding", "encode", StageState.SUCCEEDED)
    store.set_job_state("accepted", JobState.CANCELLED)
    assert open_jobs(store, "default") == 0
