"""Submitting a job: the order that keeps a bad spec from writing anything, then enqueueing.

The job manager (and, until the HTTP API lands, tests standing in for it) submit through
:func:`submit_job`; a scheduled job's first tasks are sent later by :func:`start_job`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.queue import MAX_BATCH, Outgoing, TaskQueue
from batchfarm.actors.backends.store import Store
from batchfarm.actors.backends.store.models import JobState, StageState, TaskState
from batchfarm.actors.codec import encode_body
from batchfarm.actors.manager.plan import first_tasks, make_plan, new_job_id
from batchfarm.actors.manager.spec import JobSpec
from batchfarm.actors.manager.upload import input_keys, upload_inputs
from batchfarm.actors.messages import TaskBody
from batchfarm.actors.settings import TasksSettings


def submit_job(
    spec: JobSpec,
    *,
    store: Store,
    blobs: BlobStore,
    tasks: TaskQueue,
    defaults: TasksSettings,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Plan, upload, record and (when due) enqueue a checked job; return its id.

    Planning comes first, so an oversized body or a name clash stops the job before a byte
    is uploaded; the store learns of the job only once its inputs are all in the blob store.
    """
    job_id = new_job_id(spec.name)
    plan = make_plan(spec, job_id, input_keys(spec, job_id), defaults)
    upload_inputs(spec, blobs, job_id, progress)
    for key, data in plan.blobs.items():
        blobs.put(key, data)
    store.create_job(plan.job, plan.tasks)
    if plan.job.state != JobState.SCHEDULED:
        enqueue_first(store, tasks, job_id, plan.bodies)
    return job_id


def start_job(store: Store, tasks: TaskQueue, job_id: str, defaults: TasksSettings) -> None:
    """Enqueue a scheduled job's first stage now that it is due (from its stored spec)."""
    job = store.job(job_id)
    if job is None or job.state != JobState.SCHEDULED:
        return
    spec = JobSpec.from_stored(job.spec)
    enqueue_first(store, tasks, job_id, first_tasks(spec, job_id, list(spec.keys), defaults))


def enqueue_first(store: Store, tasks: TaskQueue, job_id: str, bodies: list[TaskBody]) -> None:
    """Send the first stage's bodies, then mark the stage and the job running.

    The store is updated after the sends: a manager killed in between leaves the tasks
    pending, and sending them again is harmless (a task's outputs have fixed keys and the
    store counts a re-run once).
    """
    now = time.time()
    stamped = [replace(body, enqueued_at=now) for body in bodies]
    for start in range(0, len(stamped), MAX_BATCH):
        tasks.send_batch([Outgoing(encode_body(b)) for b in stamped[start : start + MAX_BATCH]])
    if stamped:
        first = stamped[0].stage
        store.set_tasks_state(
            job_id, TaskState.QUEUED, from_states=[TaskState.PENDING], stage=first
        )
        store.set_stage_state(job_id, first, StageState.RUNNING, started_at=now)
    store.set_job_state(job_id, JobState.RUNNING, started_at=now)
