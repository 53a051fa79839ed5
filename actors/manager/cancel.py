"""Cancelling a job: durable first, then recorded.

The marker object (:func:`~batchfarm.actors.messages.cancel_marker`) goes to the blob store
before anything else, so every worker finds it, also one on a node that missed the manager's
messages: a queued task of the job is dropped unrun, a running one is stopped within seconds.
Then the store records the job, its stages and its unfinished tasks as cancelled, which keeps
the results processor from advancing the job's stages.
"""

from __future__ import annotations

import time

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.store import Store
from batchfarm.actors.backends.store.models import JobState, StageState, TaskState
from batchfarm.actors.errors import BatchfarmError
from batchfarm.actors.messages import cancel_marker

#: Job states a cancel leaves alone: the job is already over.
FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
#: Task states a cancel moves to cancelled.
UNFINISHED_TASKS = (TaskState.PENDING, TaskState.QUEUED, TaskState.RUNNING, TaskState.RETRYING)


class UnknownJobError(BatchfarmError, LookupError):
    """A job id the store does not know."""


def cancel_job(store: Store, blobs: BlobStore, job_id: str, reason: str = "cancelled") -> bool:
    """Cancel ``job_id``; return False if it had already finished (nothing changes then)."""
    job = store.job(job_id)
    if job is None:
        raise UnknownJobError(f"no job {job_id!r}")
    if job.state in FINISHED:
        return False
    blobs.put(cancel_marker(job_id), f"{time.time():.3f} {reason}\n".encode())
    now = time.time()
    store.set_tasks_state(job_id, TaskState.CANCELLED, from_states=UNFINISHED_TASKS, reason=reason)
    for stage in store.stages(job_id):
        if stage.state not in (StageState.SUCCEEDED, StageState.FAILED):
            store.set_stage_state(job_id, stage.name, StageState.CANCELLED, reason, finished_at=now)
    store.set_job_state(job_id, JobState.CANCELLED, reason, finished_at=now)
    return True
