"""Finding, and where allowed creating, the two SQS queues behind one grid queue.

The grid's queue ``NAME`` under the URL ``sqs://PREFIX`` is the SQS queue ``PREFIX-NAME``,
and its dead-letter queue is ``PREFIX-NAME-dlq``, wired by the source queue's redrive policy.

A queue that exists is used as it is, never modified: infrastructure code (CloudFormation,
Terraform) may own its attributes. Its redrive policy is read, and its ``maxReceiveCount``
is the one that counts (a warning says so when it differs from ``[queue] max_receives``).
A queue that is missing is created (the dead-letter queue first, then the source queue with
its redrive policy), if the caller's IAM policy allows ``sqs:CreateQueue``; if it does not,
opening fails with an error that names the queue, the action and what to do.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from batchfarm.actors.backends.aws import backend_error, error_code
from batchfarm.actors.errors import QueueError

log = logging.getLogger(__name__)

#: Longest SQS queue name.
MAX_SQS_NAME = 80
#: How long created queues keep a message: SQS's maximum, 14 days. A dead-letter queue must
#: keep messages at least as long as its source does, because a standard queue's message
#: keeps its first enqueue time when it moves; and a batch backlog should not silently
#: expire after SQS's default of 4 days.
RETENTION_S = 1_209_600
#: AWS asks to wait a second after creating a queue before using it.
CREATE_SETTLE_S = 1.0
#: IAM actions every process opening a queue needs (config/iam/).
ACTIONS = ("sqs:GetQueueUrl", "sqs:GetQueueAttributes")
#: Creating missing queues is left to the manager: a node's policy leaves it out.
MANAGER_ACTIONS = ("sqs:CreateQueue",)

_SQS_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")
_MISSING = {"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"}
_ALREADY_EXISTS = {"QueueAlreadyExists", "QueueNameExists", "QueueDeletedRecently"}


@dataclass(frozen=True)
class Resolved:
    """The queue URLs behind one grid queue, and the receive limit SQS applies to it."""

    url: str
    dlq_url: str
    #: The source queue's ``maxReceiveCount``; None when it has no redrive policy.
    max_receives: int | None


def sqs_names(prefix: str, name: str) -> tuple[str, str]:
    """The SQS names of the grid queue ``name`` under ``prefix``, and of its DLQ."""
    source = f"{prefix}-{name}"
    dlq = f"{source}-dlq"
    if not _SQS_NAME.fullmatch(dlq):
        raise QueueError(
            f"SQS queue {dlq!r} (sqs://{prefix}, queue {name!r}): expected at most "
            f"{MAX_SQS_NAME} letters, digits, '-' or '_'; use a shorter sqs:// prefix"
        )
    return source, dlq


def call(client: Any, action: str, resource: str, **kwargs: Any) -> dict[str, Any]:
    """Run one SQS API call; any failure becomes a :class:`QueueError` naming both.

    botocore's standard retry mode has already retried what retrying can fix (throttling,
    5xx, dropped connections) by the time an error reaches here.
    """
    from botocore import xform_name  # noqa: PLC0415
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        response: dict[str, Any] = getattr(client, xform_name(action))(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise backend_error(exc, action=action, resource=resource, kind=QueueError) from exc
    return response


def make_client(region: str, endpoint_url: str, sqs_name: str) -> Any:
    """An SQS client for ``region`` and ``endpoint_url`` ("" for boto3's own choice)."""
    from botocore.exceptions import BotoCoreError  # noqa: PLC0415

    from batchfarm.actors.backends.aws import client  # noqa: PLC0415

    try:
        return client("sqs", region=region, endpoint_url=endpoint_url)
    except BotoCoreError as exc:
        raise QueueError(
            f"SQS queue {sqs_name!r}: cannot make an SQS client ({exc}); set [queue] region "
            "or AWS_REGION, and [queue] endpoint_url only for an SQS-compatible server"
        ) from exc


def resolve(
    client: Any, prefix: str, name: str, max_receives: int | None, *, settle: bool
) -> Resolved:
    """Find (or create) ``PREFIX-NAME`` and ``PREFIX-NAME-dlq``; check how they are wired.

    ``settle`` waits :data:`CREATE_SETTLE_S` after creating a queue, as AWS asks.
    """
    source, dlq = sqs_names(prefix, name)
    retention = {"MessageRetentionPeriod": str(RETENTION_S)}
    dlq_url = _find_or_create(client, dlq, retention, settle=settle)
    dlq_arn = _attributes(client, dlq_url, dlq, ["QueueArn"])["QueueArn"]
    attributes = dict(retention)
    if max_receives is not None:
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives}
        )
    url = _find_or_create(client, source, attributes, settle=settle)
    actual = _redrive_limit(client, url, source, dlq, dlq_arn)
    if actual != max_receives:
        log.warning(
            "SQS queue %r: its redrive policy moves a message to %r after %s receives, not "
            "the %s of [queue] max_receives; the queue's own setting applies",
            source,
            dlq,
            actual if actual is not None else "no number of",
            max_receives,
        )
    return Resolved(url=url, dlq_url=dlq_url, max_receives=actual)


def on_aws(endpoint_url: str) -> bool:
    """Whether ``endpoint_url`` is AWS itself ("" means boto3's default, AWS)."""
    host = urlsplit(endpoint_url).hostname or ""
    return not endpoint_url or host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


def _find_or_create(client: Any, sqs_name: str, attributes: dict[str, str], *, settle: bool) -> str:
    url = _queue_url(client, sqs_name)
    if url is not None:
        return url
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        created: str = client.create_queue(QueueName=sqs_name, Attributes=attributes)["QueueUrl"]
    except ClientError as exc:
        if error_code(exc) in _ALREADY_EXISTS:
            # Another process created it in between, perhaps with other attributes: use it.
            url = _queue_url(client, sqs_name)
            if url is not None:
                return url
        code = error_code(exc)
        message = str(exc.response.get("Error", {}).get("Message", ""))
        raise QueueError(
            f"SQS queue {sqs_name!r} does not exist, and CreateQueue failed ({code}: "
            f"{message}); create the queue with its dead-letter queue as the README's AWS "
            "section shows, or allow sqs:CreateQueue"
        ) from exc
    except BotoCoreError as exc:
        raise backend_error(
            exc, action="CreateQueue", resource=f"SQS queue {sqs_name!r}", kind=QueueError
        ) from exc
    log.info("created SQS queue %r", sqs_name)
    if settle:
        time.sleep(CREATE_SETTLE_S)
    return created


def _queue_url(client: Any, sqs_name: str) -> str | None:
    """The queue's URL, or None if it does not exist."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        url: str = client.get_queue_url(QueueName=sqs_name)["QueueUrl"]
    except ClientError as exc:
        if error_code(exc) in _MISSING:
            return None
        raise backend_error(
            exc, action="GetQueueUrl", resource=f"SQS queue {sqs_name!r}", kind=QueueError
        ) from exc
    except BotoCoreError as exc:
        raise backend_error(
            exc, action="GetQueueUrl", resource=f"SQS queue {sqs_name!r}", kind=QueueError
        ) from exc
    return url


def _attributes(client: Any, url: str, sqs_name: str, names: list[str]) -> dict[str, str]:
    response = call(
        client,
        "GetQueueAttributes",
        f"SQS queue {sqs_name!r}",
        QueueUrl=url,
        AttributeNames=names,
    )
    found: dict[str, str] = response.get("Attributes", {})
    return found


def _redrive_limit(client: Any, url: str, source: str, dlq: str, dlq_arn: str) -> int | None:
    """The source queue's ``maxReceiveCount``, after checking it feeds our DLQ."""
    policy_text = _attributes(client, url, source, ["RedrivePolicy"]).get("RedrivePolicy")
    if not policy_text:
        return None
    try:
        policy = json.loads(policy_text)
        target = str(policy["deadLetterTargetArn"])
        limit = int(policy["maxReceiveCount"])
    except (ValueError, KeyError, TypeError) as exc:
        raise QueueError(
            f"SQS queue {source!r}: RedrivePolicy {policy_text!r} is not a redrive policy "
            "with deadLetterTargetArn and maxReceiveCount"
        ) from exc
    if target != dlq_arn:
        # Dead letters landing where the grid never looks would leave jobs hanging.
        raise QueueError(
            f"SQS queue {source!r}: its RedrivePolicy sends dead letters to {target}; "
            f"expected {dlq_arn} (batchfarm reads a queue's dead letters from {dlq!r})"
        )
    return limit
