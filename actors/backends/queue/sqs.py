"""The task queue on Amazon SQS, or any SQS-compatible server (``sqs://PREFIX``).

The grid's queue ``NAME`` is the SQS queue ``PREFIX-NAME``; its dead-letter queue is
``PREFIX-NAME-dlq``, wired by the source queue's redrive policy, so SQS itself moves a
message received more than ``max_receives`` times. Queues are found or created as
:mod:`~batchfarm.actors.backends.queue.sqs_setup` describes.

Where SQS differs from the :class:`TaskQueue` contract, and what this class does about it:

- **Whole seconds.** SQS takes delays, visibility timeouts and long polls in whole seconds.
  Fractions are rounded up: a message hidden or delayed a little longer is safe, one shown
  early could run twice.
- **All-or-nothing sends.** Every limit SQS checks per message (size, characters, delay) is
  checked before the call, so a batch SQS refuses is refused whole. Entries SQS fails on
  its side (``SenderFault`` false) are sent again with the same ids, up to
  :data:`SEND_ROUNDS` times; anything still failed raises :class:`SendBatchError`, which
  names each failed entry and its code and lists the entries that were sent.
- **Stale receipts.** AWS documents that a delete through an old receipt handle "will
  succeed, but the message might not be deleted", and says nothing firmer about visibility
  changes. So this queue reports a receipt as ``stale`` when SQS refuses it
  (``ReceiptHandleIsInvalid``, ``MessageNotInflight``, an invalid ``ReceiptHandle``
  parameter), as ``invalid`` when it never came from SQS (empty, spaces, control
  characters: refused without a call), and as ``ok`` when SQS accepts it,
  applied or not. Nothing is lost either way: a message whose delete did not apply comes
  back and runs again, and consumers are idempotent (deterministic output keys; the store
  counts a task once). Delivery is at least once, as on the embedded queue.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Sequence
from typing import Any

from batchfarm.actors.backends.queue import (
    DLQ_SUFFIX,
    MAX_BODY_BYTES,
    BatchResult,
    Outgoing,
    QueueDepth,
    Received,
    TaskQueue,
    check_outgoing,
    check_queue_name,
    check_receipts,
    check_receive,
    check_visibility,
)
from batchfarm.actors.backends.queue.sqs_setup import call, make_client, on_aws, resolve, sqs_names
from batchfarm.actors.errors import QueueError

#: IAM actions every process using a queue needs (config/iam/; a test checks the calls
#: below against them). SQS authorises a batch call by its single action.
ACTIONS = (
    "sqs:SendMessage",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
)
#: Only the manager empties a queue.
MANAGER_ACTIONS = ("sqs:PurgeQueue",)
#: Rounds of sending the entries SQS failed on its side before giving up.
SEND_ROUNDS = 3
#: Most body bytes in one SendMessageBatch call. AWS now allows 1 MiB; 256 KiB suits every
#: queue and SQS-compatible server, and a larger batch is split over several calls.
MAX_CALL_BYTES = MAX_BODY_BYTES
#: The message attributes a receive asks for: they give ``sent_at`` and ``receive_count``.
SYSTEM_ATTRIBUTES = ["SentTimestamp", "ApproximateReceiveCount"]

# Codes of a per-entry failure meaning "this receipt holds no message here now".
_STALE_CODES = {
    "ReceiptHandleIsInvalid",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
}
# SQS receipt handles are opaque tokens without spaces or control characters; anything
# else never came from a receive, and is reported without asking SQS.
_RECEIPT = re.compile(r"[\x21-\x7e]{1,8192}")


class SendBatchError(QueueError):
    """SQS failed some entries of a send batch; ``sent`` maps the others' positions to ids."""

    def __init__(self, message: str, sent: dict[int, str]) -> None:
        super().__init__(message)
        self.sent = sent


class SqsQueue(TaskQueue):
    """The grid queue ``name`` as the SQS queue ``PREFIX-NAME`` (see the module docstring).

    Opening finds both queues (creating missing ones where IAM allows) and reads the source
    queue's redrive policy, whose ``maxReceiveCount`` becomes :attr:`max_receives`. A queue
    object holds one boto3 client, which is thread-safe: threads may share the object.
    Processes may not (open one in each).
    """

    def __init__(
        self,
        prefix: str,
        name: str,
        max_receives: int | None = 5,
        *,
        region: str = "",
        endpoint_url: str = "",
    ) -> None:
        check_queue_name(name)
        if max_receives is not None and (
            isinstance(max_receives, bool) or not isinstance(max_receives, int) or max_receives < 1
        ):
            raise QueueError(
                f"queue {name!r}: max_receives {max_receives!r}; expected an integer >= 1 or None"
            )
        self.name = name
        self.sqs_name, dlq_name = sqs_names(prefix, name)
        self._client: Any = make_client(region, endpoint_url, self.sqs_name)
        self._owns_client = True
        self._closed = False
        try:
            found = resolve(self._client, prefix, name, max_receives, settle=on_aws(endpoint_url))
        except BaseException:
            self.close()
            raise
        self.url = found.url
        self.max_receives = found.max_receives
        self._dlq: tuple[str, str] | None = (dlq_name, found.dlq_url)

    @classmethod
    def _attached(cls, client: Any, name: str, sqs_name: str, url: str) -> SqsQueue:
        """A handle on a queue already found, sharing ``client`` (a dead-letter queue)."""
        queue = cls.__new__(cls)
        queue.name = name
        queue.sqs_name = sqs_name
        queue.url = url
        queue.max_receives = None
        queue._client = client
        queue._owns_client = False
        queue._closed = False
        queue._dlq = None
        return queue

    def __repr__(self) -> str:
        return f"SqsQueue({self.sqs_name!r}, max_receives={self.max_receives})"

    # -- the contract ------------------------------------------------------------------------

    def send_batch(self, messages: Sequence[Outgoing], *, durable: bool = True) -> list[str]:
        """Send up to 10 messages; return their ids (see the module docstring on failures).

        ``durable`` is ignored: SQS has stored a message once its send returns.
        """
        check_outgoing(messages)
        entries = [
            {"Id": str(i), "MessageBody": m.body, "DelaySeconds": _whole(m.delay_s)}
            for i, m in enumerate(messages)
        ]
        ids: dict[int, str] = {}
        start, size = 0, 0
        for end, message in enumerate(messages):
            body_bytes = len(message.body.encode("utf-8", "surrogatepass"))
            if size + body_bytes > MAX_CALL_BYTES and end > start:
                ids.update(self._send_entries(entries[start:end], ids))
                start, size = end, 0
            size += body_bytes
        ids.update(self._send_entries(entries[start:], ids))
        return [ids[i] for i in range(len(messages))]

    def receive(
        self, max_messages: int = 1, wait_s: float = 0.0, visibility_s: float = 30.0
    ) -> list[Received]:
        """Take up to ``max_messages`` messages, long-polling up to ``wait_s`` seconds.

        SQS moves a message past its receive limit to the dead-letter queue on the way.
        """
        check_receive(max_messages, wait_s, visibility_s)
        response = self._call(
            "ReceiveMessage",
            QueueUrl=self.url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=_whole(wait_s),
            VisibilityTimeout=_whole(visibility_s),
            MessageSystemAttributeNames=SYSTEM_ATTRIBUTES,
        )
        return [self._received(message) for message in response.get("Messages", [])]

    def delete_batch(self, receipts: Sequence[str]) -> BatchResult:
        """Delete up to 10 messages; receipts SQS refuses are reported, with the reason."""
        check_receipts("delete_batch", len(receipts))
        return self._receipt_batch("DeleteMessageBatch", receipts, [{} for _ in receipts])

    def change_visibility_batch(self, changes: Sequence[tuple[str, float]]) -> BatchResult:
        """Hide each message for the given seconds from now; 0 hands it back at once."""
        check_receipts("change_visibility_batch", len(changes))
        for _, seconds in changes:
            check_visibility("change_visibility_batch", seconds)
        return self._receipt_batch(
            "ChangeMessageVisibilityBatch",
            [receipt for receipt, _ in changes],
            [{"VisibilityTimeout": _whole(seconds)} for _, seconds in changes],
        )

    def depth(self) -> QueueDepth:
        """SQS's approximate counts (exact on moto), and the dead-letter queue's total."""
        counts = self._counts(self.url)
        dead = sum(self._counts(self._dlq[1])) if self._dlq is not None else 0
        return QueueDepth(visible=counts[0], in_flight=counts[1], delayed=counts[2], dead=dead)

    def purge(self) -> None:
        """Delete every message in this queue (PurgeQueue; SQS allows one a minute)."""
        self._call("PurgeQueue", QueueUrl=self.url)

    def dead_letters(self) -> SqsQueue:
        """This queue's dead-letter queue (``PREFIX-NAME-dlq``), sharing this queue's client."""
        if self._dlq is None:
            raise QueueError(f"{self!r} is a dead-letter queue; it has no dead-letter queue")
        dlq_name, dlq_url = self._dlq
        return SqsQueue._attached(self._client, self.name + DLQ_SUFFIX, dlq_name, dlq_url)

    def close(self) -> None:
        """Release the client (when this queue made it); further calls raise. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            self._client.close()

    # -- helpers -------------------------------------------------------------------------------

    def _call(self, action: str, **kwargs: Any) -> dict[str, Any]:
        if self._closed:
            raise QueueError(f"{action}: {self!r} is closed")
        return call(self._client, action, f"SQS queue {self.sqs_name!r}", **kwargs)

    def _send_entries(self, entries: list[dict[str, Any]], sent: dict[int, str]) -> dict[int, str]:
        """Send one call's entries, again for those SQS failed on its side; return their ids.

        ``sent`` holds the ids of earlier calls of the same batch, for the error message.
        """
        ids: dict[int, str] = {}
        pending = entries
        failures: list[dict[str, Any]] = []
        for round_ in range(SEND_ROUNDS):
            response = self._call("SendMessageBatch", QueueUrl=self.url, Entries=pending)
            for entry in response.get("Successful", []):
                ids[int(entry["Id"])] = str(entry["MessageId"])
            failures = list(response.get("Failed", []))
            # A sender fault (a bad entry) fails the same way every time: stop at once.
            if not failures or any(f.get("SenderFault", True) for f in failures):
                break
            retry = {str(f["Id"]) for f in failures}
            pending = [entry for entry in pending if entry["Id"] in retry]
            time.sleep(0.05 * 2**round_ * (1 + random.random()))
        missing = [e["Id"] for e in entries if int(e["Id"]) not in ids]
        if failures or missing:
            raise self._send_error(failures, missing, {**sent, **ids})
        return ids

    def _send_error(
        self, failures: list[dict[str, Any]], missing: list[str], sent: dict[int, str]
    ) -> SendBatchError:
        reasons = {str(f["Id"]): f"{f.get('Code', '?')}: {f.get('Message', '')}" for f in failures}
        told = "; ".join(
            f"message {i} failed ({reasons.get(i, 'no result from SQS').rstrip(': ')})"
            for i in missing
        )
        others = f"messages {sorted(sent)} were sent" if sent else "no message was sent"
        return SendBatchError(
            f"SQS queue {self.sqs_name!r}: SendMessageBatch: {told}; {others}", sent
        )

    def _receipt_batch(
        self, action: str, receipts: Sequence[str], extras: list[dict[str, Any]]
    ) -> BatchResult:
        """Run a delete or visibility batch; map each entry's outcome to its receipt."""
        if len(set(receipts)) != len(receipts):
            raise QueueError(f"{_call_name(action)}: a receipt appears twice; expected distinct")
        failed: dict[str, str] = {
            r: "invalid" for r in receipts if not (isinstance(r, str) and _RECEIPT.fullmatch(r))
        }
        entries = [
            {"Id": str(i), "ReceiptHandle": receipt, **extra}
            for i, (receipt, extra) in enumerate(zip(receipts, extras, strict=True))
            if receipt not in failed
        ]
        applied: set[str] = set()
        if entries:
            response = self._call(action, QueueUrl=self.url, Entries=entries)
            applied = {receipts[int(e["Id"])] for e in response.get("Successful", [])}
            for entry in response.get("Failed", []):
                failed[receipts[int(entry["Id"])]] = _reason(entry)
        for entry in entries:
            receipt = entry["ReceiptHandle"]
            if receipt not in applied and receipt not in failed:
                failed[receipt] = "no result from SQS"
        return BatchResult(
            ok=tuple(r for r in receipts if r not in failed),
            failed={r: failed[r] for r in receipts if r in failed},
        )

    def _received(self, message: dict[str, Any]) -> Received:
        attributes = message.get("Attributes", {})
        try:
            return Received(
                message_id=str(message["MessageId"]),
                body=str(message["Body"]),
                receipt=str(message["ReceiptHandle"]),
                receive_count=int(attributes["ApproximateReceiveCount"]),
                sent_at=int(attributes["SentTimestamp"]) / 1000.0,
            )
        except (KeyError, ValueError) as exc:
            raise QueueError(
                f"SQS queue {self.sqs_name!r}: ReceiveMessage returned a message without "
                f"{exc} (asked for {', '.join(SYSTEM_ATTRIBUTES)}); expected an "
                "SQS-compatible server that returns them"
            ) from exc

    def _counts(self, url: str) -> tuple[int, int, int]:
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        found = self._call("GetQueueAttributes", QueueUrl=url, AttributeNames=names)
        attributes = found.get("Attributes", {})
        visible, in_flight, delayed = (int(attributes.get(n, 0)) for n in names)
        return visible, in_flight, delayed


def _whole(seconds: float) -> int:
    """Seconds as SQS takes them: whole, rounded up."""
    return math.ceil(seconds)


def _reason(entry: dict[str, Any]) -> str:
    """``stale`` when the receipt holds no message here now, else SQS's code and message."""
    code = str(entry.get("Code", ""))
    message = str(entry.get("Message", ""))
    # AWS answers a visibility change of a deleted or expired message with "Value ... for
    # parameter ReceiptHandle is invalid. Reason: Message does not exist or is not
    # available for visibility timeout change."
    if code in _STALE_CODES or (code == "InvalidParameterValue" and "ReceiptHandle" in message):
        return "stale"
    return f"{code}: {message}".rstrip(": ")


def _call_name(action: str) -> str:
    return "delete_batch" if action == "DeleteMessageBatch" else "change_visibility_batch"
