"""Submitting a job: the order that keeps a bad spec from writing anything, then enqueueing.

The job manager (and, until the HTTP API lands, tests standing in for it) submit through
:func:`submit_job`; a scheduled job's first tasks are sent later by :func:`start_job`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.queue import Outgoing
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.backends.store import Store
from batchfarm.actors.backends.store.models import JobState, StageState, TaskState
from batchfarm.actors.codec import encode_body
from batchfarm.actors.manager.accept import accept_job
from batchfarm.actors.manager.node_classes import check_node_classes
from batchfarm.actors.manager.plan import first_tasks, make_plan, new_job_id
from batchfarm.actors.manager.spec import JobSpec
from batchfarm.actors.manager.upload import input_keys, upload_inputs
from batchfarm.actors.messages import TaskBody
from batchfarm.actors.settings import DEFAULT_CLASS, TasksSettings


def submit_job(
    spec: JobSpec,
    *,
    store: Store,
    blobs: BlobStore,
    tasks: TaskQueues,
    defaults: TasksSettings,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Upload a checked job's files, then accept it as the HTTP API does; return its id.

    Planning comes first, so an oversized body or a name clash stops the job before a byte
    is uploaded; the store learns of the job only once its inputs are all in the blob store
    (:func:`~batchfarm.actors.manager.accept.accept_job` records and enqueues it).
    """
    check_node_classes(spec.stages, tasks.node_classes(), spec.source)
    job_id = new_job_id(spec.name)
    keys = input_keys(spec, job_id)
    if spec.files:
        stored = make_plan(spec, job_id, keys, defaults).job.spec
        upload_inputs(spec, blobs, job_id, progress)
    else:
        # Nothing to upload, so nothing for an early plan to guard: accept_job plans before
        # it writes anything (planning a large job's bodies twice cost a third of a submit).
        stored = spec.to_stored(keys, spec.start_time(time.time()))
    uploaded = keys[: len(spec.files)]
    job_id, _ = accept_job(
        stored,
        job_id,
        store=store,
        blobs=blobs,
        tasks=tasks,
        defaults=defaults,
        source=spec.source,
        uploaded=uploaded,
    )
    return job_id


def start_job(store: Store, tasks: TaskQueues, job_id: str, defaults: TasksSettings) -> None:
    """Enqueue a scheduled job's first stage now that it is due (from its stored spec)."""
    job = store.job(job_id)
    if job is None or job.state != JobState.SCHEDULED:
        return
    spec = JobSpec.from_stored(job.spec)
    bodies = first_tasks(spec, job_id, list(spec.keys), defaults)
    node_class = spec.stages[0].node_class
    enqueue_first(store, tasks, job_id, bodies, priority=job.priority, node_class=node_class)


def enqueue_first(
    store: Store,
    tasks: TaskQueues,
    job_id: str,
    bodies: list[TaskBody],
    *,
    priority: int | None = None,
    node_class: str = DEFAULT_CLASS,
) -> None:
    """Send the first stage's bodies to its queue, then mark it running.

    The queue is the one of the stage's ``node_class`` for the job's priority.

    ``priority`` is the job's stored priority (None: read from the store). The store is
    updated after the sends: a manager killed in between leaves the tasks pending, and
    sending them again is harmless (a task's outputs have fixed keys and the store counts a
    re-run once).
    """
    if priority is None:
        job = store.job(job_id)
        priority = 0 if job is None else job.priority
    queue = tasks.for_priority(priority, node_class)
    now = time.time()
    stamped = [replace(body, enqueued_at=now) for body in bodies]
    # One durable send for the lot: the store says "queued" only once every body is stored.
    queue.send_all([Outgoing(encode_body(body)) for body in stamped])
    if stamped:
        first = stamped[0].stage
        store.set_tasks_state(
            job_id, TaskState.QUEUED, from_states=[TaskState.PENDING], stage=first
        )
        store.set_stage_state(job_id, first, StageState.RUNNING, started_at=now)
    store.set_job_state(job_id, JobState.RUNNING, started_at=now)
