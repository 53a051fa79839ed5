"""The results processor: completion events in, tasks and stages moved on in the store.

Workers send one :class:`~batchfarm.actors.messages.Completion` per run to the completion
queue (the data plane). :class:`ResultsProcessor` takes every event waiting, up to
:data:`RECORD_BATCH` a step (receive batches taken back to back, never waiting for more):

1. decode each body (a bad one is counted, copied to the dead-letter queue and deleted);
2. record every run with one :meth:`Store.record_runs` call, which counts each task's first
   success once and recognises a redelivered event (abandoned runs, which only add their
   cost, are recorded in a call of their own before the others);
3. advance the jobs the runs belong to, each job and each stage it touches once per step
   (whether a stage is done is one query): chain successes into the next stage, fail stages
   and jobs on final failures, finish stages and jobs, start fan-in and fan-out stages (a
   fan-out stage gets one task per output of the stage before, so its size is known only
   once that stage is done);
4. only then delete the completion messages.

A manager killed at any point between 1 and 4 loses nothing: the messages reappear, the
store reports their runs as *redelivered*, and step 3 is replayed for them, because every
write in it is idempotent. A next-stage task is created ``pending``, its body sent, and only
then marked ``queued``: a replay sends the body of a task still ``pending`` again, so a body
may reach the queue twice (at least once), which the workers' deterministic output keys and
the store's duplicate counting make harmless.

Failure policy: a task that fails for good fails its stage and its job at once (the reason
names the task and its error), but the job's other parts keep running and chaining. Their
work is independent of the failed part, and ``batchfarm retry JOB`` resubmits only failed
parts, so letting the good parts finish means a retry redoes the least work. A fan-in stage
never starts while a part of its previous stage is not succeeded, and a stage only succeeds
once all its tasks have, so a retried part that then succeeds finishes the stage and the job
as if it had never failed. A cancelled job's (or stage's) completions are recorded but never
advance anything.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchfarm.actors.backends.queue import MAX_BATCH, Outgoing, Received, TaskQueue
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.backends.store import (
    JobState,
    NewTask,
    RunsApplied,
    StageMode,
    StageState,
    StageView,
    Store,
    TaskRun,
    TaskState,
    TaskUpdate,
    TaskView,
)
from batchfarm.actors.codec import decode_body, encode_body
from batchfarm.actors.errors import MessageError
from batchfarm.actors.manager.completions import failure_reason, task_run
from batchfarm.actors.manager.health import NodeHealth
from batchfarm.actors.messages import Completion, TaskBody
from batchfarm.actors.sockets import Rejects

log = logging.getLogger(__name__)

#: How long a received completion stays hidden while the processor works on it.
VISIBILITY_S = 60.0
#: Most completion events one step records together. A backlog of events (a flood of short
#: tasks) is then recorded in one store call, and each job it touches read and moved on
#: once, per this many events rather than per receive batch (500 rather than 100 took 10
#: to 15 % off the manager's time per event on a backlog of 20,000 no-ops).
RECORD_BATCH = 500
#: Held while runs are recorded and their jobs moved on, and while a job is retried
#: (:mod:`~batchfarm.actors.manager.retry`): within a manager the two never interleave, so a
#: retry never reads a task between its run's record and its stage's update.
ADVANCING = threading.RLock()


class Planner(Protocol):
    """Makes the body of a next-stage task (the job manager's planner, adapted)."""

    def next_task(self, stage: StageView, part: int, inputs: Sequence[str]) -> TaskBody:
        """The task of part ``part`` of ``stage`` (a later stage of its job) over ``inputs``.

        ``stage.mode`` says how it is fed: ``chain`` (one task per part of the previous
        stage, ``inputs`` that part's outputs), ``fan_in`` (part 0, ``inputs`` every
        output of the previous stage in part order) or ``fan_out`` (part *i*, ``inputs``
        the *i*-th of those outputs alone).
        """
        ...


@dataclass
class ResultsCounters:
    """What the processor has done since it started (for ``/metrics``)."""

    #: Completion events decoded and handed to the store.
    runs: int = 0
    #: Tasks that succeeded for the first time.
    succeeded: int = 0
    #: Re-runs of tasks that had already succeeded (``batchfarm_task_duplicate_runs_total``).
    duplicates: int = 0
    #: The same run reported again (a redelivered event): nothing changed, advance replayed.
    redelivered: int = 0
    #: Failed runs that will be retried.
    retrying: int = 0
    #: Tasks that failed for good.
    failures: int = 0
    #: Runs of cancelled tasks, stale failures, and runs of tasks the store does not know.
    ignored: int = 0
    #: Runs that stopped without an outcome (see ``AbandonedRun``): their cost counted.
    abandoned: int = 0
    #: Bodies that were not completion events, by reason (dead-lettered).
    bad_bodies: Rejects = field(default_factory=Rejects)
    #: Next-stage task bodies sent (a replay after a crash may send one again).
    enqueued: int = 0
    #: Stages and jobs this processor saw through to success.
    stages_succeeded: int = 0
    jobs_succeeded: int = 0
    jobs_failed: int = 0


class ResultsProcessor:
    """Consumes completion events and moves tasks, stages and jobs on (see the module doc).

    Runtime-independent: the manager's results actor calls :meth:`step` in its loop; tests
    call it directly.
    """

    def __init__(
        self,
        store: Store,
        task_queues: TaskQueues,
        completions_queue: TaskQueue,
        planner: Planner,
        *,
        visibility_s: float = VISIBILITY_S,
        clock: Callable[[], float] = time.time,
        observer: Callable[[Sequence[TaskRun], RunsApplied], None] | None = None,
        health: NodeHealth | None = None,
    ) -> None:
        self._store = store
        self._tasks = task_queues
        self._completions = completions_queue
        self._planner = planner
        self._visibility_s = visibility_s
        self._clock = clock
        #: Told of each batch of runs once the store has recorded it (``/metrics``' durations).
        self._observer = observer
        #: Judges poison tasks before runs are recorded and bad nodes after (None: no one).
        self._health = health
        self.counters = ResultsCounters()

    def step(self, max_messages: int = RECORD_BATCH, wait_s: float = 0.0) -> int:
        """Handle the completion events waiting, up to ``max_messages``; return how many.

        Waits up to ``wait_s`` for the first event, never for more. Raises what the store
        or a queue raises; the step's messages are then not deleted and come back after the
        visibility timeout, to be handled again.
        """
        received = self._receive(max_messages, wait_s)
        if not received:
            return 0
        runs: list[TaskRun] = []
        bad: list[Received] = []
        for message in received:
            try:
                event = decode_body(message.body)
                if not isinstance(event, Completion):  # an AbandonedRun is a Completion too
                    raise MessageError("kind", f"got a {event.KIND} message, expected completion")
            except MessageError as error:
                self.counters.bad_bodies.count(error)
                log.warning("completion %s is not a completion: %s", message.message_id, error)
                bad.append(message)
                continue
            runs.append(task_run(event))
        # Abandoned runs only add their cost: recorded apart, so that what the rest of the
        # step reads (the health judge, the metrics, advancing) sees only runs with outcomes.
        abandoned = [run for run in runs if run.abandoned]
        runs = [run for run in runs if not run.abandoned]
        if abandoned:
            self._count(len(abandoned), self._store.record_runs(abandoned))
        if runs:
            with ADVANCING:
                if self._health is not None:
                    runs = self._health.judge(runs)  # a poison task's failure is final
                applied = self._store.record_runs(runs)
                self._count(len(runs), applied)
                if self._health is not None:
                    self._health.observe(runs, applied)
                if self._observer is not None:
                    self._observer(runs, applied)
                self._advance(runs, applied)
        if bad:
            # Kept where an operator can read them; a crash before the delete copies twice.
            dead = self._completions.dead_letters()
            dead.send_all([Outgoing(m.body) for m in bad])
        for start in range(0, len(received), MAX_BATCH):
            chunk = received[start : start + MAX_BATCH]
            result = self._completions.delete_batch([m.receipt for m in chunk])
            for receipt, reason in result.failed.items():
                # The visibility ran out and the event went to another receive: that counts.
                log.warning("completion receipt %s not deleted: %s", receipt, reason)
        return len(received)

    def _receive(self, max_messages: int, wait_s: float) -> list[Received]:
        """Up to ``max_messages`` events, in receive batches back to back while they come full."""
        received: list[Received] = []
        while len(received) < max_messages:
            want = min(MAX_BATCH, max_messages - len(received))
            batch = self._completions.receive(want, 0.0 if received else wait_s, self._visibility_s)
            received += batch
            if len(batch) < want:
                break
        return received

    def _count(self, runs: int, applied: RunsApplied) -> None:
        c = self.counters
        c.runs += runs
        c.succeeded += len(applied.succeeded)
        c.duplicates += len(applied.duplicates)
        c.redelivered += len(applied.redelivered)
        c.retrying += len(applied.retrying)
        c.failures += len(applied.failed)
        c.ignored += len(applied.ignored) + len(applied.unknown)
        c.abandoned += len(applied.abandoned)
        if applied.unknown:
            log.warning("completions of unknown tasks: %s", ", ".join(applied.unknown[:5]))

    # -- advancing ------------------------------------------------------------------------------

    def _advance(self, runs: Sequence[TaskRun], applied: RunsApplied) -> None:
        """Move on the jobs of ``runs``: every write here may be replayed after a crash."""
        done = set(applied.succeeded) | set(applied.redelivered)
        failed = set(applied.failed)
        by_job: dict[str, _JobWork] = {}
        for run in runs:
            work = by_job.setdefault(run.job, _JobWork())
            if run.ok and run.task_id in done and run.task_id not in work.seen:
                work.seen.add(run.task_id)
                work.successes.append(run)
            elif (
                not run.ok
                and run.final
                and (run.task_id in failed or run.task_id in applied.redelivered)
            ):
                work.failures.append(run)
        for job_id, work in by_job.items():
            if work.successes or work.failures:
                self._advance_job(job_id, work)

    def _advance_job(self, job_id: str, work: _JobWork) -> None:
        job = self._store.job(job_id)
        if job is None or job.state == JobState.CANCELLED:
            return
        job_state = job.state
        priority = job.priority  # with each stage's node class, it picks the stage's queue
        # Positions in this list, not stored indexes, so a gap in the indexes cannot confuse.
        stages = self._store.stages(job_id)
        position = {stage.name: at for at, stage in enumerate(stages)}
        now = self._clock()
        for run in work.failures:
            at = position.get(run.stage)
            if at is None or stages[at].state == StageState.CANCELLED:
                continue
            reason = failure_reason(run)
            if stages[at].state != StageState.FAILED:
                self._store.set_stage_state(job_id, run.stage, StageState.FAILED, reason)
                stages[at] = _with_state(stages[at], StageState.FAILED)
            if job_state != JobState.FAILED:
                self._store.set_job_state(job_id, JobState.FAILED, reason, finished_at=now)
                job_state = JobState.FAILED
                self.counters.jobs_failed += 1
        chained: dict[int, list[tuple[int, list[str]]]] = {}
        touched: set[int] = set()
        for run in work.successes:
            at = position.get(run.stage)
            if at is None or stages[at].state == StageState.CANCELLED:
                continue
            touched.add(at)
            following = _next(stages, at)
            if following is not None and following.mode == StageMode.CHAIN:
                chained.setdefault(at + 1, []).append((run.part, output_keys(run.outputs)))
        for index, parts in sorted(chained.items()):
            self._enqueue(priority, stages, index, parts)
        finished = self._finish_stages(priority, stages, sorted(touched))
        if finished and job_state != JobState.SUCCEEDED:
            self._store.set_job_state(job_id, JobState.SUCCEEDED, None, finished_at=now)
            self.counters.jobs_succeeded += 1

    def _finish_stages(
        self, priority: int, stages: list[StageView], touched: Iterable[int]
    ) -> bool:
        """Mark done stages succeeded and start fan-in stages; True if the last one is done."""
        checked: set[int] = set()
        for start in touched:
            index = start
            while index not in checked:
                checked.add(index)
                if not self._stage_done(stages, index):
                    break
                stage = stages[index]
                if stage.state != StageState.SUCCEEDED:
                    self._store.set_stage_state(
                        stage.job_id,
                        stage.name,
                        StageState.SUCCEEDED,
                        None,
                        finished_at=self._clock(),
                    )
                    stages[index] = _with_state(stage, StageState.SUCCEEDED)
                    self.counters.stages_succeeded += 1
                following = _next(stages, index)
                if following is None:
                    return True
                if following.state == StageState.CANCELLED:
                    break
                if following.mode in (StageMode.FAN_IN, StageMode.FAN_OUT):
                    tasks = self._store.tasks(stage.job_id, stage=stage.name, limit=None)
                    inputs = [
                        key
                        for task in sorted(tasks, key=_part)
                        for key in output_keys(task.outputs)
                    ]
                    if following.mode == StageMode.FAN_IN:
                        self._enqueue(priority, stages, index + 1, [(0, inputs)])
                    elif inputs:
                        # One task per output, numbered in the previous stage's part order.
                        parts = [(part, [key]) for part, key in enumerate(inputs)]
                        self._enqueue(priority, stages, index + 1, parts)
                    else:
                        self._fail_empty_fan_out(stages, index + 1)
                        break
                index += 1
        return False

    def _fail_empty_fan_out(self, stages: list[StageView], index: int) -> None:
        """A ``fan_out`` stage fed nothing: it can never run, so it and its job fail."""
        stage = stages[index]
        if stage.state == StageState.FAILED:
            return
        previous = stages[index - 1].name
        reason = (
            f"stage {stage.name!r} (fan_out) got no inputs: stage {previous!r} wrote no "
            "outputs; expected one or more, one task each"
        )
        now = self._clock()
        self._store.set_stage_state(stage.job_id, stage.name, StageState.FAILED, reason)
        stages[index] = _with_state(stage, StageState.FAILED)
        self._store.set_job_state(stage.job_id, JobState.FAILED, reason, finished_at=now)
        self.counters.jobs_failed += 1

    def _stage_done(self, stages: list[StageView], index: int) -> bool:
        """True when every task of the stage succeeded (and so did its previous stage)."""
        stage = stages[index]
        if stage.state == StageState.SUCCEEDED:
            return True
        if stage.state == StageState.CANCELLED:
            return False
        if index > 0 and stages[index - 1].state != StageState.SUCCEEDED:
            return False
        return self._store.stage_done(stage.job_id, stage.name)

    def _enqueue(
        self,
        priority: int,
        stages: list[StageView],
        index: int,
        parts: Sequence[tuple[int, list[str]]],
    ) -> None:
        """Create tasks of stage ``index`` (if new) and send those not yet queued.

        They go to the queue of the stage's node class for the job's ``priority``.
        """
        stage = stages[index]
        queue = self._tasks.for_priority(priority, stage.node_class)
        job = stage.job_id
        inputs = dict(parts)
        self._store.add_tasks(job, [NewTask(stage.name, part, keys) for part, keys in parts])
        # Not only the tasks just created: after a crash, one created but never sent is
        # still pending, and this is the replay that must send it.
        pending = self._store.tasks(job, stage=stage.name, states=[TaskState.PENDING], limit=None)
        due = sorted(task.part for task in pending if task.part in inputs)
        if not due:
            return
        now = self._clock()
        bodies = [
            dataclasses.replace(self._planner.next_task(stage, part, inputs[part]), enqueued_at=now)
            for part in due
        ]
        # One durable send for the lot, before the store marks the tasks queued.
        queue.send_all([Outgoing(encode_body(body)) for body in bodies])
        self.counters.enqueued += len(bodies)
        self._store.update_tasks(
            TaskUpdate(job, stage.name, part, TaskState.QUEUED, queued_at=now) for part in due
        )
        if stage.state == StageState.PENDING:
            self._store.set_stage_state(job, stage.name, StageState.RUNNING, started_at=now)
            stages[index] = _with_state(stage, StageState.RUNNING)


@dataclass
class _JobWork:
    """The runs of one job in a batch that may move it on."""

    successes: list[TaskRun] = field(default_factory=list)
    failures: list[TaskRun] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


def output_keys(outputs: Any) -> list[str]:
    """The blob keys in a task's stored outputs (a list of ``{"key": ...}`` objects)."""
    if not isinstance(outputs, list):
        return []
    return [o["key"] for o in outputs if isinstance(o, dict) and isinstance(o.get("key"), str)]


def _part(task: TaskView) -> int:
    return task.part


def _next(stages: Sequence[StageView], index: int) -> StageView | None:
    return stages[index + 1] if index + 1 < len(stages) else None


def _with_state(stage: StageView, state: str) -> StageView:
    return dataclasses.replace(stage, state=str(state))
