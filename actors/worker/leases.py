"""The messages a worker holds, and keeping them hidden for as long as it holds them.

A received message stays hidden for the queue's visibility timeout. A worker holds a message
from the moment it receives it (waiting to start, running, or having its results stored)
until it deletes it or hands it back, and renews every lease it holds at a third of the
timeout, so a task that runs for hours is never delivered to a second worker while its
worker lives. A renewal the queue refuses means the lease is lost (the message was received
again elsewhere, or is gone): the holder must stop and commit nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from batchfarm.actors.backends.queue import MAX_BATCH, TaskQueue
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.errors import QueueError

log = logging.getLogger(__name__)


@dataclass
class Lease:
    """One held message."""

    receipt: str
    #: The task id when the body decoded, else the message id.
    label: str
    received_at: float = field(default_factory=time.monotonic)
    #: Set once a renewal was refused; whoever holds the message must let it go.
    lost: bool = False
    #: The task queue the message came from: its receipt is good only there.
    queue: str = ""


class Leases:
    """The leases one worker holds; thread-safe (intake, executor, output and the loop share it).

    ``renew`` is called from one place (the actor's loop, on a timer) with a queue object of
    its own, so renewals never wait behind a long poll.
    """

    def __init__(self, visibility_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.visibility_s = visibility_s
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, Lease] = {}
        #: Renewals applied, and leases found lost, since the start (for metrics and tests).
        self.renewed = 0
        self.lost = 0

    @property
    def interval_s(self) -> float:
        """How often to renew: a third of the visibility timeout, so two renewals may fail."""
        return max(self.visibility_s / 3.0, 0.1)

    def hold(self, receipt: str, label: str, queue: str = "") -> Lease:
        """Start holding a message just received from the task queue named ``queue``."""
        lease = Lease(receipt, label, self._clock(), queue=queue)
        with self._lock:
            self._held[receipt] = lease
        return lease

    def release(self, receipt: str) -> None:
        """Stop holding a message (deleted, handed back, or lost)."""
        with self._lock:
            self._held.pop(receipt, None)

    def receipts(self) -> list[str]:
        """Every receipt held now."""
        with self._lock:
            return list(self._held)

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def renew(self, queues: TaskQueues) -> list[Lease]:
        """Extend every held lease by the visibility timeout; return the leases found lost.

        Each lease is renewed in the queue its message came from. A queue error (the queue
        unreachable) loses nothing: the leases are tried again at the next interval, and a
        third of the timeout leaves room for two failed rounds.
        """
        with self._lock:
            held = list(self._held.values())
        by_queue: dict[str, list[Lease]] = {}
        for lease in held:
            by_queue.setdefault(lease.queue, []).append(lease)
        lost: list[Lease] = []
        for name, leases in by_queue.items():
            lost.extend(self._renew_in(queues.named(name), leases))
        self.lost += len(lost)
        return lost

    def _renew_in(self, queue: TaskQueue, held: list[Lease]) -> list[Lease]:
        lost: list[Lease] = []
        for start in range(0, len(held), MAX_BATCH):
            chunk = held[start : start + MAX_BATCH]
            try:
                result = queue.change_visibility_batch(
                    [(lease.receipt, self.visibility_s) for lease in chunk]
                )
            except QueueError as error:
                log.warning(
                    "cannot renew %d leases in %s (%s); trying again in %.1f s",
                    len(chunk),
                    queue.name,
                    error,
                    self.interval_s,
                )
                continue
            self.renewed += len(result.ok)
            with self._lock:
                for lease in chunk:
                    # Released while the call ran: not ours any more, not lost either.
                    if lease.receipt in result.failed and lease.receipt in self._held:
                        lease.lost = True
                        del self._held[lease.receipt]
                        lost.append(lease)
        return lost


def hand_back(queue: TaskQueue, receipts: Sequence[str], delay_s: float = 0.0) -> list[str]:
    """Make held messages visible again after ``delay_s``; return the receipts that were stale.

    Used for retries (with a backoff) and for releasing work a worker will not do (0).
    """
    stale: list[str] = []
    for start in range(0, len(receipts), MAX_BATCH):
        chunk = receipts[start : start + MAX_BATCH]
        result = queue.change_visibility_batch([(receipt, delay_s) for receipt in chunk])
        stale.extend(result.failed)
    return stale


def hand_back_anywhere(
    queues: Iterable[TaskQueue], receipts: Sequence[str], delay_s: float = 0.0
) -> list[str]:
    """Hand back messages whose queue is not known: each queue in turn tries the rest.

    A receipt is good only in the queue its message came from (the others report it
    stale), so this is for holders that kept receipts alone, such as a node releasing a
    dead worker's messages. Returns the receipts no queue took.
    """
    left = list(receipts)
    for queue in queues:
        if not left:
            break
        left = hand_back(queue, left, delay_s)
    return left


def retry_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds before attempt ``attempt + 1``: ``base_s`` doubled per attempt, at most ``max_s``.

    Capped at SQS's longest visibility (12 hours) whatever the settings say.
    """
    exponent = max(attempt - 1, 0)
    delay = base_s * (2.0 ** min(exponent, 32))
    return min(delay, max_s, 43_200.0)
