"""Settling a finished run: store outputs, report the completion, then delete or retry.

A run ends in this order: outputs are uploaded, the completion event goes to the completions
queue, then the task's message is deleted (success, or a final failure, whose body is copied
to the dead-letter queue first) or made visible again after its backoff (a failure to be
retried). Each message is settled in the task queue it came from (its receipt is good only
there). Also here: dropping a body that is not a task, and a task found to be poison.

:func:`commit` may be called again for the same run after a backend error (the queue out of
reach): what is done stays done (the outputs stored, the completion sent once), and the
rest is tried again.
"""

from __future__ import annotations

import logging

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.queue import TaskQueue
from batchfarm.actors.codec import encode_body
from batchfarm.actors.errors import BatchfarmError, TaskError
from batchfarm.actors.settings import TasksSettings
from batchfarm.actors.worker import assignment as steps
from batchfarm.actors.worker.assignment import Assignment
from batchfarm.actors.worker.leases import hand_back, retry_delay

log = logging.getLogger(__name__)


def commit(
    assignment: Assignment,
    queue: TaskQueue,
    completions: TaskQueue,
    blobs: BlobStore,
    *,
    node: str,
    worker: int,
    tasks: TasksSettings,
) -> str | None:
    """Store, report and settle a finished run; return "done", "failed" or None (lease lost).

    ``queue`` is the task queue the message came from; ``tasks`` the grid's retry defaults.
    Raises :class:`~batchfarm.actors.errors.BackendError` when a queue call fails; calling
    again resumes where it stopped.
    """
    task = assignment.task
    assert task is not None
    if assignment.failure is None and not assignment.stored:
        try:
            steps.store_outputs(assignment, blobs)
        except BatchfarmError as error:
            assignment.failure = TaskError(f"cannot store outputs: {error}")
    assignment.stored = True
    failure = assignment.failure
    limit = min(task.max_attempts, queue.max_receives or task.max_attempts)
    final = failure is not None and (failure.permanent or assignment.attempt >= limit)
    if assignment.lease.lost:
        return None  # another worker has the task now; what it reports counts
    if not assignment.reported:
        event = steps.completion(assignment, node, worker, final=final)
        completions.send(encode_body(event))
        assignment.reported = True
    if failure is None:
        queue.delete(assignment.message.receipt)
        return "done"
    log.info("worker %d: %s failed (final: %s): %s", worker, task.task_id, final, failure)
    if final:
        queue.dead_letters().send(assignment.message.body)
        queue.delete(assignment.message.receipt)
    else:
        base = tasks.retry_backoff if task.retry_backoff_s is None else task.retry_backoff_s
        delay = retry_delay(assignment.attempt, base, tasks.retry_backoff_max)
        hand_back(queue, [assignment.message.receipt], delay)
    return "failed"


def dead_letter(assignment: Assignment, queue: TaskQueue, worker: int, why: str) -> None:
    """Move the message to the dead-letter queue, unrun, unreported (``why`` is logged)."""
    dead = queue.dead_letters()
    log.warning("worker %d: %s %s; moved to %s", worker, assignment.label, why, dead.name)
    dead.send(assignment.message.body)
    queue.delete(assignment.message.receipt)
