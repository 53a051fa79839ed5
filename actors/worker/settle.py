"""Settling finished runs: store outputs, report the completions, then delete or retry.

A run ends in this order: outputs are uploaded, the completion event goes to the completions
queue, then the task's message is deleted (success, or a final failure, whose body is copied
to the dead-letter queue first) or made visible again after its backoff (a failure to be
retried). Each message is settled in the task queue it came from (its receipt is good only
there). Also here: dropping a body that is not a task, and a task found to be poison.

The worker settles the runs that finished since its last settle together (:func:`commit`,
at most :data:`~batchfarm.actors.backends.queue.MAX_BATCH`): every run's outputs, then every
completion in one send, then every delete of a queue in one batch, so a flood of short tasks
costs two queue transactions per batch instead of two per task. The order holds for each run,
and each run's fate is its own: a run whose lease was lost commits nothing (or, when only its
delete finds the receipt stale, counts as not done) while the others are committed.

A run that ends without an outcome (its lease lost; stopped by a forced pause, a drain or a
cancelled job) is reported as an :class:`~batchfarm.actors.messages.AbandonedRun`
(:func:`report_abandoned`), so that the manager charges its node time to its task.

:func:`commit` may be called again for the same runs after a backend error (the queue out of
reach): what is done stays done (the outputs stored, the completion sent once, the message
settled once), and the rest is tried again.

The completion events are sent with ``durable=False`` (no fsync on the embedded queue: it
was the largest cost of a short task). The outputs are already stored for good (the blob
store fsyncs them), and every queue of a grid is in one place (one ``local://`` file, whose
power loss undoes only a suffix of its commits, or SQS, which ignores the flag), so a power
loss that undoes an event also undoes the delete that followed it: the task runs again and
the manager counts it once. A delete never outlives its event, and nothing is lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.queue import MAX_BATCH, Outgoing, TaskQueue
from batchfarm.actors.codec import encode_body
from batchfarm.actors.errors import BackendError, BatchfarmError, TaskCancelled, TaskError
from batchfarm.actors.settings import TasksSettings
from batchfarm.actors.worker import assignment as steps
from batchfarm.actors.worker.assignment import Assignment
from batchfarm.actors.worker.leases import hand_back, retry_delay

log = logging.getLogger(__name__)

#: A finished run and the task queue its message came from.
Finished = tuple[Assignment, TaskQueue]
#: Pauses between tries to settle finished runs while a queue cannot be reached (about a
#: minute in all: less than the visibility timeout's default, which renewals extend).
SETTLE_RETRY_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


def commit(
    batch: Sequence[Finished],
    completions: TaskQueue,
    blobs: BlobStore,
    *,
    node: str,
    worker: int,
    tasks: TasksSettings,
) -> list[str | None]:
    """Store, report and settle finished runs; return each one's "done", "failed" or None.

    None means the lease was lost: another worker has the task, and what it reports counts.
    ``tasks`` gives the grid's retry defaults. Raises
    :class:`~batchfarm.actors.errors.BackendError` when a queue call fails; calling again
    with the same runs resumes where it stopped.
    """
    for assignment, _ in batch:
        _store(assignment, blobs)
    live = [(a, q) for a, q in batch if not a.lease.lost]
    report_abandoned([a for a, _ in batch if a.lease.lost], completions, node, worker)
    _report([(a, q) for a, q in live if not a.reported], completions, node, worker, tasks)
    outcomes: dict[int, str | None] = {}
    deletes: dict[str, tuple[TaskQueue, list[Assignment]]] = {}
    for assignment, queue in live:
        if assignment.settled:
            outcomes[id(assignment)] = "done" if assignment.failure is None else "failed"
        elif assignment.failure is None or _final(assignment, queue, tasks):
            if assignment.failure is not None:
                _log_failure(assignment, worker, final=True)
                queue.dead_letters().send(assignment.message.body)
            deletes.setdefault(queue.name, (queue, []))[1].append(assignment)
        else:
            _log_failure(assignment, worker, final=False)
            _retry_later(assignment, queue, tasks)
            assignment.settled = True
            outcomes[id(assignment)] = "failed"
    for queue, assignments in deletes.values():
        outcomes.update(_delete(queue, assignments, worker))
    return [outcomes.get(id(assignment)) for assignment, _ in batch]


def commit_retrying(
    batch: Sequence[Finished],
    completions: TaskQueue,
    blobs: BlobStore,
    *,
    node: str,
    worker: int,
    tasks: TasksSettings,
    closing: threading.Event,
) -> list[str | None]:
    """:func:`commit`, backing off and trying again while a queue is unreachable.

    botocore has already retried each call; an error reaching here means the link has been
    down for a while. The runs' outputs are stored and their leases still renewed, so
    waiting is cheaper than running them again; past :data:`SETTLE_RETRY_S` (or once
    ``closing`` is set) the error stands, and the messages reappear when their visibility
    runs out.
    """
    pauses = iter(SETTLE_RETRY_S)
    while True:
        try:
            return commit(batch, completions, blobs, node=node, worker=worker, tasks=tasks)
        except BackendError as error:
            pause = next(pauses, None)
            if pause is None or closing.is_set() or all(a.lease.lost for a, _ in batch):
                raise
            log.warning(
                "worker %d cannot settle %d tasks (%s); backing off %.1f s",
                worker,
                len(batch),
                error,
                pause,
            )
            closing.wait(pause)


def drop(assignment: Assignment, queue: TaskQueue, worker: int) -> str | None:
    """Settle a task with nothing to commit; say how, or None if its run is to be committed.

    "rejected" (a body that is not a task) and "poisoned" go to the dead-letter queue,
    "cancelled" (its job was) is deleted, "lost" (its lease) is left alone, and "stopped"
    (by a pause or drain) is for the caller to hand back.
    """
    if assignment.task is None:
        # No task to report on: keep the body where an operator can read it.
        dead_letter(assignment, queue, worker, f"is not a task ({assignment.bad_body})")
        return "rejected"
    if assignment.lease.lost or assignment.cancel_reason == "lease_lost":
        log.warning("worker %d dropped %s: lease lost", worker, assignment.label)
        return "lost"
    if assignment.cancel_reason == "poison":
        # The manager has failed the task for good: a final failure's message.
        dead_letter(assignment, queue, worker, "is poison")
        return "poisoned"
    if assignment.cancel_reason == "cancelled":
        # The job is cancelled (durably, in the blob store): the task is dropped for good,
        # with nothing to report; the manager has already settled its state.
        queue.delete(assignment.message.receipt)
        return "cancelled"
    if assignment.cancel_reason in ("paused", "drain") and isinstance(
        assignment.failure, TaskCancelled
    ):
        return "stopped"
    return None


def report_abandoned(
    assignments: Sequence[Assignment], completions: TaskQueue, node: str, worker: int
) -> None:
    """Report the runs among ``assignments`` that started and were not reported as abandoned.

    A run that lost its lease, or that a pause, a drain or a cancel stopped, has no outcome
    to report, but its node time was spent: an
    :class:`~batchfarm.actors.messages.AbandonedRun` lets the manager charge it to its task.
    Sent before the message is handed back, but nothing waits on it: the event is only about
    cost, so it is sent once, not durably, and a failure to send it is logged and forgotten
    (that run's cost is then not counted).
    """
    ran = [a for a in assignments if a.started_wall and not a.reported and a.task is not None]
    for start in range(0, len(ran), MAX_BATCH):
        chunk = ran[start : start + MAX_BATCH]
        events = [steps.abandoned(assignment, node, worker) for assignment in chunk]
        try:
            completions.send_batch([Outgoing(encode_body(e)) for e in events], durable=False)
        except BatchfarmError as error:
            log.warning("worker %d cannot report %d abandoned runs: %s", worker, len(chunk), error)
        for assignment in chunk:
            assignment.reported = True


def dead_letter(assignment: Assignment, queue: TaskQueue, worker: int, why: str) -> None:
    """Move the message to the dead-letter queue, unrun, unreported (``why`` is logged)."""
    dead = queue.dead_letters()
    log.warning("worker %d: %s %s; moved to %s", worker, assignment.label, why, dead.name)
    dead.send(assignment.message.body)
    queue.delete(assignment.message.receipt)


def _store(assignment: Assignment, blobs: BlobStore) -> None:
    """Upload the run's outputs once; a store error fails the run instead."""
    if assignment.failure is None and not assignment.stored:
        try:
            steps.store_outputs(assignment, blobs)
        except BatchfarmError as error:
            assignment.failure = TaskError(f"cannot store outputs: {error}")
    assignment.stored = True


def _final(assignment: Assignment, queue: TaskQueue, tasks: TasksSettings) -> bool:
    """True if the run failed and its task will not be tried again."""
    task = assignment.task
    assert task is not None
    failure = assignment.failure
    limit = min(task.max_attempts, queue.max_receives or task.max_attempts)
    return failure is not None and (failure.permanent or assignment.attempt >= limit)


def _report(
    batch: Sequence[Finished], completions: TaskQueue, node: str, worker: int, tasks: TasksSettings
) -> None:
    """Send the runs' completion events, up to a batch per send (each send all or nothing)."""
    for start in range(0, len(batch), MAX_BATCH):
        chunk = batch[start : start + MAX_BATCH]
        events = [
            steps.completion(assignment, node, worker, final=_final(assignment, queue, tasks))
            for assignment, queue in chunk
        ]
        # Not durable: the delete that follows goes to the same place and is undone with it
        # (see the module docstring).
        completions.send_batch([Outgoing(encode_body(event)) for event in events], durable=False)
        for assignment, _ in chunk:
            assignment.reported = True


def _delete(
    queue: TaskQueue, assignments: Sequence[Assignment], worker: int
) -> dict[int, str | None]:
    """Delete the runs' messages, a batch per call; a stale receipt loses its run alone."""
    outcomes: dict[int, str | None] = {}
    for start in range(0, len(assignments), MAX_BATCH):
        chunk = assignments[start : start + MAX_BATCH]
        result = queue.delete_batch([a.message.receipt for a in chunk])
        for assignment in chunk:
            assignment.settled = True
            reason = result.failed.get(assignment.message.receipt)
            if reason is None:
                outcomes[id(assignment)] = "done" if assignment.failure is None else "failed"
                continue
            # Received again elsewhere (the visibility ran out): that run reports too, and
            # the store counts the task once.
            assignment.lease.lost = True
            outcomes[id(assignment)] = None
            log.warning(
                "worker %d: %s reported but its message not deleted (%s): lease lost",
                worker,
                assignment.label,
                reason,
            )
    return outcomes


def _retry_later(assignment: Assignment, queue: TaskQueue, tasks: TasksSettings) -> None:
    task = assignment.task
    assert task is not None
    base = tasks.retry_backoff if task.retry_backoff_s is None else task.retry_backoff_s
    delay = retry_delay(assignment.attempt, base, tasks.retry_backoff_max)
    hand_back(queue, [assignment.message.receipt], delay)


def _log_failure(assignment: Assignment, worker: int, *, final: bool) -> None:
    task_id = assignment.label
    log.info("worker %d: %s failed (final: %s): %s", worker, task_id, final, assignment.failure)
