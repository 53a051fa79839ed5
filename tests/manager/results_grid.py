"""Helpers for the results tests: jobs in the store, a planner, an in-process worker."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Sequence

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.queue import BatchResult, Outgoing, QueueDepth, Received, TaskQueue
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.backends.store import (
    JobState,
    NewJob,
    NewStage,
    NewTask,
    StageState,
    StageView,
    Store,
    TaskState,
)
from batchfarm.actors.codec import decode_body, encode_body
from batchfarm.actors.manager.results import ResultsProcessor
from batchfarm.actors.messages import Completion, ErrorInfo, OutputRef, TaskBody

HANDLERS = "tests.manager.results_handlers"


class StorePlanner:
    """The simplest planner: a stage's handler and params, from its stored row."""

    def next_task(self, stage: StageView, part: int, inputs: Sequence[str]) -> TaskBody:
        return TaskBody(
            job=stage.job_id,
            stage=stage.name,
            part=part,
            handler=stage.handler,
            inputs=list(inputs),
            params=dict(stage.params),
            max_attempts=1,
        )


def submit_job(
    store: Store,
    tasks: TaskQueues,
    job: str,
    stages: Sequence[NewStage],
    inputs: Sequence[Sequence[str]],
    *,
    priority: int = 0,
) -> None:
    """Create a job (first stage running, one task per input list) and enqueue stage 0."""
    now = time.time()
    first = [
        NewTask(stages[0].name, p, list(k), TaskState.QUEUED, queued_at=now)
        for p, k in enumerate(inputs)
    ]
    store.create_job(NewJob(job, stages, priority=priority, state=JobState.RUNNING), first)
    store.set_stage_state(job, stages[0].name, StageState.RUNNING, started_at=now)
    stage = store.stages(job)[0]
    bodies = [StorePlanner().next_task(stage, p, keys) for p, keys in enumerate(inputs)]
    queue = tasks.for_priority(priority)
    for start in range(0, len(bodies), 10):
        queue.send_batch([Outgoing(encode_body(b)) for b in bodies[start : start + 10]])


def drive(
    processor: ResultsProcessor,
    done: Callable[[], bool],
    *,
    between: Callable[[], object] = lambda: None,
    timeout: float = 30.0,
    what: str = "",
) -> None:
    """Step the processor (and ``between``, a worker) until ``done``."""
    deadline = time.monotonic() + timeout
    while not done():
        between()
        processor.step(10, wait_s=0.05)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or done}")


class InlineWorker:
    """Runs tasks in this process, as a worker would: output blob, completion, delete.

    It takes from the task queues highest class first. Each task writes
    ``jobs/<task id>/out.bin`` holding the SHA-256 of its inputs' bytes. ``fail`` lists task
    ids whose next run fails for good (once each).
    """

    def __init__(self, tasks: TaskQueues, completions: TaskQueue, blobs: BlobStore) -> None:
        self.tasks = tasks
        self.completions = completions
        self.blobs = blobs
        self.fail: set[str] = set()
        self.runs: list[str] = []
        self._clock = itertools.count(1)

    def __call__(self) -> int:
        """Run every task now visible; returns how many."""
        count = 0
        while taken := self._receive():
            queue, batch = taken
            for message in batch:
                body = decode_body(message.body, TaskBody)
                assert isinstance(body, TaskBody)
                self.completions.send(encode_body(self.run(body, message.receive_count)))
                queue.delete(message.receipt)
                count += 1
        return count

    def _receive(self) -> tuple[TaskQueue, list[Received]] | None:
        for queue in self.tasks.in_order():
            if batch := queue.receive(10, 0.0, 60.0):
                return queue, batch
        return None

    def run(self, body: TaskBody, attempt: int = 1) -> Completion:
        self.runs.append(body.task_id)
        started = 1_000_000.0 + next(self._clock)  # distinct per run, as a worker's clock
        if body.task_id in self.fail:
            self.fail.discard(body.task_id)
            error = ErrorInfo("TaskError", "bad input: not a clip", permanent=True)
            return completion(body, ok=False, started=started, attempt=attempt, error=error)
        digest = hashlib.sha256(b"".join(self.blobs.read(k) for k in body.inputs)).hexdigest()
        key = f"{body.output_prefix}out.bin"
        info = self.blobs.put(key, digest.encode())
        out = OutputRef(key, info.size, info.sha256)
        return completion(body, ok=True, started=started, attempt=attempt, outputs=[out])


def completion(
    body: TaskBody,
    *,
    ok: bool = True,
    started: float = 1_000_000.0,
    worker: int = 0,
    attempt: int = 1,
    outputs: Sequence[OutputRef] = (),
    error: ErrorInfo | None = None,
) -> Completion:
    """The completion event of one run of ``body``."""
    return Completion(
        job=body.job,
        stage=body.stage,
        part=body.part,
        ok=ok,
        node="node-x",
        worker=worker,
        attempt=attempt,
        started_at=started,
        finished_at=started + 0.5,
        outputs=list(outputs),
        error=error,
        final=not ok,
        cpu_s=0.25,
    )


class CrashingQueue(TaskQueue):
    """A task queue whose next ``send_batch`` raises: a manager killed mid-step.

    ``after_send`` says whether the crash comes after the messages went out, or before.
    """

    def __init__(self, inner: TaskQueue, *, after_send: bool) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_receives = inner.max_receives
        self.after_send = after_send
        self.crashes = 0

    def send_batch(self, messages: Sequence[Outgoing], *, durable: bool = True) -> list[str]:
        if self.crashes == 0:
            self.crashes += 1
            if self.after_send:
                self.inner.send_batch(messages, durable=durable)
            raise SystemExit("killed")  # outside Exception, as a kill is
        return self.inner.send_batch(messages, durable=durable)

    def receive(
        self, max_messages: int = 1, wait_s: float = 0.0, visibility_s: float = 30.0
    ) -> list[Received]:
        return self.inner.receive(max_messages, wait_s, visibility_s)

    def delete_batch(self, receipts: Sequence[str]) -> BatchResult:
        return self.inner.delete_batch(receipts)

    def change_visibility_batch(self, changes: Sequence[tuple[str, float]]) -> BatchResult:
        return self.inner.change_visibility_batch(changes)

    def depth(self) -> QueueDepth:
        return self.inner.depth()

    def purge(self) -> None:
        self.inner.purge()

    def dead_letters(self) -> TaskQueue:
        return self.inner.dead_letters()
