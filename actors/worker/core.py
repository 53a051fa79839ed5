"""The worker's engine: three threads that keep one core busy with tasks from the queue.

- intake: receives messages (as many as :class:`IntakePolicy` allows, high-priority tasks
  first: :class:`Receiver`), downloads each task's inputs, and queues it as waiting;
- executor: runs the waiting tasks' handlers one at a time (the CPU-heavy part);
- output: stores each finished task's outputs, reports its completion, deletes its message
  (or schedules its retry, or dead-letters it): :mod:`~batchfarm.actors.worker.settle`. It
  settles every task finished since its last settle together (up to a queue batch), and
  never waits for more: a lone task is settled at once.

So while a task computes, the next one's input is downloading and the last one's output is
uploading. The actor's loop drives the rest from timers: renewing leases
(:meth:`WorkerCore.renew_leases`) and enforcing time limits (:meth:`WorkerCore.enforce_limits`).
The core knows nothing of ZeroMQ or the actor runtime; tests drive it directly.
"""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from batchfarm.actors.backends import COMPLETIONS, open_blobs, open_queue, open_task_queues
from batchfarm.actors.backends.queue import MAX_BATCH, TaskQueue
from batchfarm.actors.errors import QueueError, TaskCancelled
from batchfarm.actors.messages import WorkerState, WorkerStatus
from batchfarm.actors.settings import Settings
from batchfarm.actors.worker import assignment as steps
from batchfarm.actors.worker import settle
from batchfarm.actors.worker.assignment import Assignment
from batchfarm.actors.worker.control import ControlChecks
from batchfarm.actors.worker.execute import past_time_limit, run_handler
from batchfarm.actors.worker.intake import IntakePolicy, Receiver
from batchfarm.actors.worker.leases import Leases, hand_back

log = logging.getLogger(__name__)


class WorkerCore:
    """Runs tasks from the grid's task queues on this process's core, until closed."""

    def __init__(
        self,
        settings: Settings,
        index: int,
        node: str,
        *,
        threads: int,
        scratch_root: Path,
        on_drained: Callable[[], None],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.index = index
        self.node = node
        self.threads = threads
        self.scratch_root = scratch_root
        self._on_drained = on_drained
        self._on_change = on_change
        self.leases = Leases(settings.queue.visibility_timeout)
        self.policy = IntakePolicy(settings.node.prefetch)
        self._cond = threading.Condition()
        self._waiting: deque[Assignment] = deque()
        self._current: Assignment | None = None
        self._held: dict[str, Assignment] = {}  # receipt -> assignment, every stage
        self._outbox: stdqueue.Queue[Assignment | None] = stdqueue.Queue()
        self._settling = 0  # finished tasks the output thread has taken and not yet settled
        self._accepting = True
        self._paused = False
        self._draining = False
        # An Event, not a bool: other threads set it while a loop reads it.
        self._closing = threading.Event()
        self._intake_busy = False
        self._drained_sent = False
        self.done = 0
        self.failed = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.rejected = 0
        self.cancelled = 0
        self.poisoned = 0
        self._threads: list[threading.Thread] = []

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the backends and start the intake, executor and output threads."""
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        queue = self.settings.queue
        own_class = (self.settings.node.node_class,)  # a node takes its class's tasks only
        # The intake's long poll gets queue objects of its own, so renewals, deletes and
        # hand-backs never wait behind it.
        self._receiver = Receiver(
            open_task_queues(queue, own_class),
            wait_s=queue.wait,
            visibility_s=queue.visibility_timeout,
            closing=self._closing,
            name=f"worker {self.index}",
        )
        self._queues = open_task_queues(queue, own_class)
        self._completions = open_queue(queue, COMPLETIONS)
        self._blobs = open_blobs(self.settings.storage)
        self.control = ControlChecks(self._blobs, f"worker {self.index}")
        for name, target in (
            ("intake", self._intake_loop),
            ("executor", self._executor_loop),
            ("output", self._output_loop),
        ):
            thread = threading.Thread(target=target, name=f"worker-{self.index}-{name}")
            thread.daemon = True  # a hung handler must not keep a stopping process alive
            thread.start()
            self._threads.append(thread)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads and release the backends; held messages are handed back."""
        with self._cond:
            self._closing.set()
            self._accepting = False
            current = self._current
            self._cond.notify_all()
        if current is not None:
            current.stop("drain")  # its message goes back to the queue
        self._outbox.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            # The intake may sit in a long poll for a while: never wait long for it.
            wait = 0.1 if thread.name.endswith("intake") else deadline - time.monotonic()
            thread.join(max(0.0, wait))
        self._release_all()
        for backend in (self._queues, self._completions, self._blobs):
            backend.close()
        if not self._intake_busy:
            # An intake still in its long poll keeps its queues; the process is ending and
            # what the poll returns reappears when its visibility runs out.
            self._receiver.close()

    # -- commands (from the actor's loop) ------------------------------------------------------

    def drain(self) -> None:
        """Take no new task, hand back waiting ones, let the running one finish, then report."""
        with self._cond:
            self._draining = True
            self._accepting = False
            waiting = self._take_waiting()
            self._cond.notify_all()
        self._give_back(waiting, 0.0)
        self._check_drained()

    def stop_now(self) -> None:
        """Drain by force: stop the running task too and hand its message back."""
        self.drain()
        current = self._current
        if current is not None:
            current.stop("drain")

    def pause(self, force: bool = False) -> None:
        """Take no new task; with ``force``, stop the running one and hand it back."""
        with self._cond:
            self._paused = True
            self._accepting = False
            waiting = self._take_waiting()
            current = self._current
        self._give_back(waiting, 0.0)
        if force and current is not None:
            current.stop("paused")
        self._on_change()

    def resume(self) -> None:
        """Take tasks again after a pause (a drain is not undone)."""
        with self._cond:
            self._paused = False
            self._accepting = not self._draining and not self._closing.is_set()
            self._cond.notify_all()
        self._on_change()

    # -- timers (from the actor's loop) --------------------------------------------------------

    def renew_leases(self) -> None:
        """Extend every held message's visibility; stop any task whose lease was lost."""
        for lease in self.leases.renew(self._queues):
            held = self._held.get(lease.receipt)
            log.warning("worker %d lost the lease on %s", self.index, lease.label)
            if held is not None:
                held.stop("lease_lost")

    def check_cancelled(self) -> None:
        """Stop the running task if its job was cancelled (the actor's loop calls this)."""
        current = self._current
        task = current.task if current is not None else None
        if current is not None and task is not None and self.control.job_cancelled(task.job):
            current.stop("cancelled")

    def enforce_limits(self, now: float | None = None) -> Assignment | None:
        """Stop a task past its time limit; return it if it ignored the stop (the worker hung)."""
        current = self._current
        if current is None or not past_time_limit(current, self.settings.tasks, now):
            return None
        return current

    def abandon(self, hung: Assignment) -> None:
        """Report a hung task as failed (its retry follows the usual rules) and hand back the rest.

        Called just before the process exits: a handler thread cannot be stopped from outside.
        """
        hung.failure = TaskCancelled(
            hung.cancel_reason or "time_limit", "the handler did not stop when told"
        )
        with self._cond:
            self._current = None
        self._finish([hung])
        self._release_all()

    # -- status ---------------------------------------------------------------------------------

    @property
    def state(self) -> WorkerState:
        """What the worker is doing, as its node reports it."""
        if self._draining:
            return "draining"
        if self._paused:
            return "paused"
        return "busy" if self._current is not None else "idle"

    def status(self, pid: int, core: int | None) -> WorkerStatus:
        """A status frame for the supervisor."""
        current = self._current
        return WorkerStatus(
            index=self.index,
            pid=pid,
            state=self.state,
            core=core,
            task=current.label if current else None,
            progress=current.progress if current else None,
            done=self.done,
            failed=self.failed,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            receipts=self.leases.receipts(),
            started_at=(current.started_wall or None) if current else None,
            attempt=current.attempt if current and current.started_wall else 0,
        )

    # -- threads --------------------------------------------------------------------------------

    def _intake_loop(self) -> None:
        while True:
            with self._cond:
                wanted = 0
                while not self._closing.is_set():
                    # Finished tasks still settling hold their messages too: beyond the one
                    # whose output overlaps the next run, they count as held, so a flood of
                    # quick tasks cannot pile up faster than the output thread settles them.
                    settling = self._outbox.qsize() + self._settling
                    held = len(self._waiting) + max(0, settling - 1)
                    wanted = self.policy.to_receive(held, self._running_for())
                    if self._accepting and wanted > 0:
                        break
                    # Woken by every change; the timeout re-checks a long task's progress.
                    self._cond.wait(timeout=0.5)
                if self._closing.is_set():
                    return
                self._intake_busy = True
            try:
                for taken in self._receiver.receive(wanted):
                    lease = self.leases.hold(taken.message.receipt, "", taken.queue)
                    self._take(steps.receive(taken.message, lease))
            finally:
                with self._cond:
                    self._intake_busy = False
                self._check_drained()

    def _is_accepting(self) -> bool:
        # A method, so type checkers do not assume the flag cannot change between reads.
        return self._accepting

    def _running_for(self) -> float | None:
        current = self._current
        if current is None:
            return None
        return 0.0 if current.run_started is None else time.monotonic() - current.run_started

    def _take(self, assignment: Assignment) -> None:
        assignment.lease.label = assignment.label
        self._held[assignment.message.receipt] = assignment
        if not self._is_accepting():
            self._give_back([assignment], 0.0)
            return
        if assignment.task is None:
            self._outbox.put(assignment)  # a bad body: the output thread dead-letters it
            return
        if assignment.attempt > 1 and self.control.poison(assignment.task) is not None:
            assignment.stop("poison")  # the output thread dead-letters it, unrun
            self._outbox.put(assignment)
            return
        steps.fetch(assignment, self._blobs, self.scratch_root)
        self.bytes_in += assignment.bytes_in
        with self._cond:
            if self._is_accepting():
                self._waiting.append(assignment)
                self._cond.notify_all()
                return
        self._give_back([assignment], 0.0)

    def _executor_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing.is_set() and (self._paused or not self._waiting):
                    self._cond.wait()
                if self._closing.is_set():
                    return
                assignment = self._waiting.popleft()
                self._current = assignment
                self._cond.notify_all()  # room for the intake to fetch the next one
            self._on_change()
            if assignment.task is not None and self.control.job_cancelled(assignment.task.job):
                assignment.stop("cancelled")
            elif assignment.failure is None:
                run_handler(assignment, self.settings.media, self.threads)
            if not isinstance(assignment.failure, TaskCancelled):  # a stopped run says little
                self.policy.record(assignment.timings.get("compute_s", 0.0))
            with self._cond:
                if self._current is assignment:
                    self._current = None
                self._cond.notify_all()
            self._outbox.put(assignment)

    def _output_loop(self) -> None:
        closing = False
        while not closing:
            first = self._outbox.get()
            if first is None:
                return
            batch = [first]
            # What else has finished already, never waiting for more: a lone task settles now.
            while len(batch) < MAX_BATCH:
                try:
                    more = self._outbox.get_nowait()
                except stdqueue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                batch.append(more)
            with self._cond:
                self._settling = len(batch)
            try:
                self._finish(batch)
            except Exception:  # bad luck with some tasks must not stop the worker's output
                log.exception("worker %d could not finish %d tasks", self.index, len(batch))
            with self._cond:
                self._settling = 0
                self._cond.notify_all()  # the intake may be waiting for the outbox to shrink
            self._on_change()
            self._check_drained()

    # -- finishing tasks -------------------------------------------------------------------------

    def _finish(self, batch: list[Assignment]) -> None:
        """Settle finished tasks: the ones not to commit one by one, the rest together."""
        committing: list[Assignment] = []
        outcomes: list[str | None] = []
        stopped: list[Assignment] = []
        unfinished: list[Assignment] = []
        try:
            for assignment in batch:
                try:
                    dropped = settle.drop(assignment, self._source(assignment), self.index)
                except Exception:  # one task's bad luck must not stop the others
                    log.exception("worker %d could not finish %s", self.index, assignment.label)
                    continue
                if dropped is None:
                    committing.append(assignment)
                elif dropped in ("stopped", "lost", "cancelled"):
                    unfinished.append(assignment)  # a run without an outcome, if it ran
                    if dropped == "stopped":
                        stopped.append(assignment)  # not failed: another run will do
                self.rejected += dropped == "rejected"
                self.poisoned += dropped == "poisoned"
                self.cancelled += dropped == "cancelled"
            # Its node time is charged to the task; reported before the message goes back.
            settle.report_abandoned(unfinished, self._completions, self.node, self.index)
            self._give_back(stopped, 0.0)
            if committing:
                outcomes = settle.commit_retrying(
                    [(assignment, self._source(assignment)) for assignment in committing],
                    self._completions,
                    self._blobs,
                    node=self.node,
                    worker=self.index,
                    tasks=self.settings.tasks,
                    closing=self._closing,
                )
        finally:
            for assignment in batch:
                self._held.pop(assignment.message.receipt, None)
                self.leases.release(assignment.message.receipt)
                assignment.cleanup()
        # Counted once everything about the task is settled, its scratch files included.
        for assignment, outcome in zip(committing, outcomes, strict=False):
            self.bytes_out += assignment.bytes_out
            self.done += outcome == "done"
            self.failed += outcome == "failed"

    def _source(self, assignment: Assignment) -> TaskQueue:
        """The (non-polling) object of the task queue the assignment's message came from."""
        return self._queues.named(assignment.lease.queue)

    # -- handing back ---------------------------------------------------------------------------

    def _take_waiting(self) -> list[Assignment]:
        waiting = list(self._waiting)
        self._waiting.clear()
        return waiting

    def _give_back(self, assignments: list[Assignment], delay_s: float) -> None:
        by_queue: dict[str, list[str]] = {}
        for assignment in assignments:
            by_queue.setdefault(assignment.lease.queue, []).append(assignment.message.receipt)
        for name, receipts in by_queue.items():
            try:
                hand_back(self._queues.named(name), receipts, delay_s)
            except QueueError as error:
                # They reappear when their visibility runs out instead: nothing is lost.
                log.warning(
                    "worker %d could not hand back %d tasks: %s", self.index, len(receipts), error
                )
        for assignment in assignments:
            self._held.pop(assignment.message.receipt, None)
            self.leases.release(assignment.message.receipt)
            assignment.cleanup()

    def _release_all(self) -> None:
        with self._cond:
            rest = [a for a in self._held.values() if a is not self._current]
            self._waiting.clear()
        self._give_back(rest, 0.0)

    def _check_drained(self) -> None:
        with self._cond:
            idle = (
                self._draining
                and not self._drained_sent
                and self._current is None
                and not self._waiting
                and not self._intake_busy
                and self._outbox.empty()
                and not self._held
            )
            if idle:
                self._drained_sent = True
        if idle:
            self._on_drained()
