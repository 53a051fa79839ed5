"""The task queue: SQS semantics behind one interface.

A :class:`TaskQueue` is one named queue. Every implementation (the embedded SQLite queue,
SQS) keeps the same contract, checked by one test suite:

- ``send_batch`` takes at most :data:`MAX_BATCH` messages, each a text body of at most
  :data:`MAX_BODY_BYTES` UTF-8 bytes with an optional delay; the batch is all or nothing.
  A send that returned is durable: it survives a crash of any process and a power loss,
  unless the caller passed ``durable=False`` (see :meth:`TaskQueue.send_batch`).
- ``receive`` hides what it returns for ``visibility_s`` seconds and hands out a receipt
  handle per message; the message reappears if it is not deleted in time. A message
  received more than ``max_receives`` times goes to the dead-letter queue instead.
- A receipt handle is valid until its message is received again or deleted. A delete or
  visibility change through a stale handle is reported in :class:`BatchResult` where the
  backend can tell (the embedded queue always does). SQS may accept one: AWS documents that
  "the request will succeed, but the message might not be deleted"; delivery stays at least
  once either way.

Delivery is at least once: consumers must be idempotent.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from batchfarm.actors import codec
from batchfarm.actors.errors import QueueError, StaleReceiptError

#: Most messages in one send, receive, delete or visibility batch (SQS's limit).
MAX_BATCH = 10
#: Largest body, in UTF-8 bytes. SQS allows more on new queues; 256 KiB fits every queue.
MAX_BODY_BYTES = codec.MAX_BODY_BYTES
#: Longest long poll, in seconds (SQS's limit).
MAX_WAIT_S = 20.0
#: Longest visibility timeout, in seconds (SQS's limit: 12 hours).
MAX_VISIBILITY_S = 43_200.0
#: Longest per-message delay, in seconds (SQS's limit: 15 minutes).
MAX_DELAY_S = 900.0
#: Valid queue names (SQS's rule); a dead-letter queue is the source's name plus ``-dlq``.
QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,76}")
DLQ_SUFFIX = "-dlq"

# Characters SQS accepts in a body: #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF.
_BAD_BODY_CHARS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Outgoing:
    """A message to send: a text body and an optional delay before it becomes visible."""

    body: str
    delay_s: float = 0.0


@dataclass(frozen=True)
class Received:
    """A received message: its body, the receipt handle that holds it, and its history."""

    message_id: str
    body: str
    receipt: str
    #: How many times this message has been received, this time included (1 the first time).
    receive_count: int
    #: When the message was sent, in seconds since the epoch.
    sent_at: float


@dataclass(frozen=True)
class QueueDepth:
    """How many messages a queue holds, by state."""

    visible: int
    in_flight: int
    delayed: int
    #: Messages waiting in this queue's dead-letter queue.
    dead: int

    @property
    def backlog(self) -> int:
        """Work not yet done: visible, in flight and delayed messages."""
        return self.visible + self.in_flight + self.delayed


@dataclass(frozen=True)
class BatchResult:
    """The outcome of a delete or visibility batch: which receipts applied, which did not."""

    ok: tuple[str, ...] = ()
    #: Receipt handle -> why it was not applied (``stale``, ``invalid``, ...).
    failed: dict[str, str] = field(default_factory=dict)

    def raise_for_failures(self) -> None:
        """Raise :class:`StaleReceiptError` naming the first failed receipt, if any."""
        for receipt, reason in self.failed.items():
            raise StaleReceiptError(f"receipt {receipt!r} was not applied: {reason}")


class TaskQueue(ABC):
    """One named queue with SQS semantics (see the module docstring for the contract)."""

    #: The queue's name.
    name: str
    #: Receives after which a message moves to the dead-letter queue; None for no DLQ.
    max_receives: int | None

    @abstractmethod
    def send_batch(self, messages: Sequence[Outgoing], *, durable: bool = True) -> list[str]:
        """Send up to :data:`MAX_BATCH` messages at once, all or nothing; return their ids.

        Sent messages survive a crash of any process. With ``durable`` (the default) they
        also survive a power loss or an operating-system crash once this returns.
        ``durable=False`` lets a backend skip what that costs (the embedded queue's fsync):
        a power loss may then undo the send, but only together with every later write to
        the same backend (the embedded queue keeps a prefix of its file's commits, in
        order). It is for a caller whose next write makes this send redundant if both are
        lost, as a worker's completion event is followed by the delete of the task's
        message: lose both and the task runs again (delivery is at least once). Never use it
        where a write elsewhere (the store, another file) records that the send happened.
        A durable send makes durable every send to the same queue that returned before it
        (what :meth:`send_all` builds on). SQS ignores the flag: a send that returned is
        stored.
        """

    @abstractmethod
    def receive(
        self, max_messages: int = 1, wait_s: float = 0.0, visibility_s: float = 30.0
    ) -> list[Received]:
        """Take up to ``max_messages`` visible messages, waiting up to ``wait_s`` for one.

        Returns as soon as at least one message is available (long polling), or an empty
        list once ``wait_s`` has passed. What is returned stays hidden for ``visibility_s``.
        """

    @abstractmethod
    def delete_batch(self, receipts: Sequence[str]) -> BatchResult:
        """Delete up to :data:`MAX_BATCH` messages by receipt handle."""

    @abstractmethod
    def change_visibility_batch(self, changes: Sequence[tuple[str, float]]) -> BatchResult:
        """Set, for each (receipt, seconds), how long from now the message stays hidden.

        Zero makes it visible at once (hands it back); the count of receives is unchanged.
        """

    @abstractmethod
    def depth(self) -> QueueDepth:
        """Count the messages by state."""

    @abstractmethod
    def purge(self) -> None:
        """Delete every message in this queue (not in its dead-letter queue)."""

    @abstractmethod
    def dead_letters(self) -> TaskQueue:
        """This queue's dead-letter queue, to inspect or redrive what landed there."""

    def close(self) -> None:  # noqa: B027 - most backends have nothing to release
        """Release connections; the queue is unusable afterwards."""

    def __getstate__(self) -> object:
        # A queue holds a connection or a client: each process opens its own.
        kind = type(self).__name__
        # "an SqsQueue", "a LocalQueue": letters whose names start with a vowel sound.
        article = "an" if kind[0] in "AEFHILMNORSX" else "a"
        raise QueueError(
            f"{self!r} cannot be sent to another process; open {article} {kind} in each process"
        )

    # Conveniences over the batch calls: one way to do each thing, single-message spelling.

    def send(self, body: str, delay_s: float = 0.0, *, durable: bool = True) -> str:
        """Send one message; return its id (``durable`` as for :meth:`send_batch`)."""
        return self.send_batch([Outgoing(body, delay_s)], durable=durable)[0]

    def send_all(self, messages: Sequence[Outgoing]) -> list[str]:
        """Send any number of messages, :data:`MAX_BATCH` a batch; return their ids in order.

        Durable once it returns, for the price of one durable send: every batch but the last
        goes with ``durable=False``, and the last one's durability covers them (see
        :meth:`send_batch`). Each batch is all or nothing (a backend may commit several as
        one); an error part way leaves the batches before it sent (at least once: a caller
        that tries again may send them twice).
        """
        ids: list[str] = []
        for start in range(0, len(messages), MAX_BATCH):
            end = start + MAX_BATCH
            ids += self.send_batch(messages[start:end], durable=end >= len(messages))
        return ids

    def delete(self, receipt: str) -> None:
        """Delete one message; raise :class:`StaleReceiptError` if the receipt is stale."""
        self.delete_batch([receipt]).raise_for_failures()

    def change_visibility(self, receipt: str, visibility_s: float) -> None:
        """Change one message's visibility; raise :class:`StaleReceiptError` if stale."""
        self.change_visibility_batch([(receipt, visibility_s)]).raise_for_failures()

    def __enter__(self) -> TaskQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def check_queue_name(name: str) -> str:
    """Return ``name`` if it is a valid queue name, else raise :class:`QueueError`."""
    if not QUEUE_NAME.fullmatch(name):
        raise QueueError(f"queue name {name!r}: expected 1 to 76 letters, digits, '-' or '_'")
    return name


def check_outgoing(messages: Sequence[Outgoing]) -> None:
    """Check a send batch against the contract's limits; raise :class:`QueueError`."""
    _check_batch_size("send_batch", len(messages))
    for i, message in enumerate(messages):
        size = len(message.body.encode("utf-8", "surrogatepass"))
        if size > MAX_BODY_BYTES:
            raise QueueError(
                f"send_batch: message {i} is {size} bytes; expected at most {MAX_BODY_BYTES}"
            )
        bad = _BAD_BODY_CHARS.search(message.body)
        if bad:
            raise QueueError(
                f"send_batch: message {i} holds character {bad.group()!r} at {bad.start()};"
                " expected text SQS accepts (no control characters but tab, CR, LF)"
            )
        if not 0.0 <= message.delay_s <= MAX_DELAY_S:
            raise QueueError(
                f"send_batch: message {i} delay {message.delay_s}; "
                f"expected 0 to {MAX_DELAY_S:g} seconds"
            )


def check_receive(max_messages: int, wait_s: float, visibility_s: float) -> None:
    """Check receive arguments against the contract's limits; raise :class:`QueueError`."""
    if not 1 <= max_messages <= MAX_BATCH:
        raise QueueError(f"receive: max_messages {max_messages}; expected 1 to {MAX_BATCH}")
    if not 0.0 <= wait_s <= MAX_WAIT_S:
        raise QueueError(f"receive: wait_s {wait_s}; expected 0 to {MAX_WAIT_S:g} seconds")
    check_visibility("receive", visibility_s)


def check_visibility(call: str, visibility_s: float) -> None:
    """Check a visibility timeout; raise :class:`QueueError`."""
    if not 0.0 <= visibility_s <= MAX_VISIBILITY_S:
        raise QueueError(
            f"{call}: visibility {visibility_s}; expected 0 to {MAX_VISIBILITY_S:g} seconds"
        )


def check_receipts(call: str, count: int) -> None:
    """Check the size of a delete or visibility batch; raise :class:`QueueError`."""
    _check_batch_size(call, count)


def _check_batch_size(call: str, count: int) -> None:
    if not 1 <= count <= MAX_BATCH:
        raise QueueError(f"{call}: {count} entries; expected 1 to {MAX_BATCH}")
