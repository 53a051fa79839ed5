"""What every AWS backend shares: how boto3 clients are made and how their errors read.

Credentials come only from boto3's own chain (environment, profile, instance role): nothing
here takes a key, and nothing logs one. Throttling and transient errors are retried by
botocore's ``standard`` retry mode; an error that retrying cannot fix (a missing queue or
bucket, access denied) becomes a :class:`~batchfarm.actors.errors.BackendError` that names the
resource and the action, raised at once.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from batchfarm.actors.errors import BackendError

log = logging.getLogger(__name__)

#: Attempts per call (the first one included) under botocore's standard retry mode, which
#: backs off with jitter on throttling, 5xx and connection errors.
MAX_ATTEMPTS = 8

# One boto3 session per process and credential environment: making a session loads
# botocore's data files (0.3-0.45 s), a client from an existing one takes ~20 ms. A session
# resolves its credentials once, so a change of the variables boto3's chain reads first
# (keys, profile, region) gets a session of its own. Sessions are not thread-safe to create
# clients from, so making clients is serialised; the clients themselves are thread-safe.
_CHAIN_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_sessions: dict[tuple[str | None, ...], Any] = {}
_session_lock = threading.Lock()


def client(
    service: str,
    *,
    region: str = "",
    endpoint_url: str = "",
    max_pool_connections: int = 10,
    read_timeout: float = 60.0,
) -> Any:
    """A boto3 client for ``service`` with the grid's retry policy.

    ``region`` and ``endpoint_url`` may be empty: boto3 then takes the region from its chain
    and talks to AWS itself. A client is thread-safe; make one per process (a spawned worker
    makes its own) and share it between threads.
    """
    # Imported here: an embedded grid never loads boto3 (it costs ~0.3 s per process).
    import boto3  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    config = Config(
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        max_pool_connections=max_pool_connections,
        connect_timeout=10,
        # Longer than the longest long poll (20 s), so a poll never times out on the client.
        read_timeout=read_timeout,
    )
    chain = tuple(os.environ.get(name) for name in _CHAIN_VARIABLES)
    with _session_lock:
        session: Any = _sessions.get(chain)
        if session is None:
            session = _sessions[chain] = boto3.session.Session()
        made = session.client(
            service,
            region_name=region or None,
            endpoint_url=endpoint_url or None,
            config=config,
        )
    _log_retries(made)
    return made


def _log_retries(made: Any) -> None:
    """Log each failed attempt botocore is about to retry, so a process backing off says so.

    botocore's standard mode retries throttling, 5xx and dropped connections silently; an
    outage of a few seconds would leave no trace in the logs without this, and one that
    outlasts the retries ends in an error the caller reports.
    """
    from botocore.retries.standard import (  # noqa: PLC0415
        RetryEventAdapter,
        StandardRetryConditions,
    )

    adapter = RetryEventAdapter()
    retryable = StandardRetryConditions(max_attempts=MAX_ATTEMPTS)
    service = made.meta.service_model.service_id

    def on_attempt(**kwargs: Any) -> None:
        context = adapter.create_retry_context(**kwargs)
        if not retryable.is_retryable(context):
            return  # it worked, or retrying cannot help: the caller gets the error
        failure = context.caught_exception
        if failure is not None:
            reason = f"{type(failure).__name__}: {failure}"
        else:
            status = getattr(context.http_response, "status_code", "?")
            reason = f"HTTP {status} {context.get_error_code() or ''}".rstrip()
        log.warning(
            "%s %s failed (attempt %d of %d: %s); backing off and retrying",
            service,
            context.operation_model.name,
            context.attempt_number,
            MAX_ATTEMPTS,
            reason,
        )

    made.meta.events.register(f"needs-retry.{service.hyphenize()}", on_attempt)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (``""`` for any other exception)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def backend_error(
    exc: BaseException, *, action: str, resource: str, kind: type[BackendError] = BackendError
) -> BackendError:
    """A :class:`BackendError` (or ``kind``) naming the resource, the action and AWS's reason.

    Use as ``raise backend_error(exc, action="SendMessageBatch", resource="queue 'x'") from exc``.
    """
    code = error_code(exc)
    response = getattr(exc, "response", None)
    message = ""
    if isinstance(response, dict):
        message = str(response.get("Error", {}).get("Message", ""))
    reason = f"{code}: {message}" if code else f"{type(exc).__name__}: {exc}"
    return kind(f"{resource}: {action} failed ({reason.rstrip(': ')})")
