"""What every AWS backend shares: how boto3 clients are made and how their errors read.

Credentials come only from boto3's own chain (environment, profile, instance role): nothing
here takes a key, and nothing logs one. Throttling and transient errors are retried by
botocore's ``standard`` retry mode; an error that retrying cannot fix (a missing queue or
bucket, access denied) becomes a :class:`~batchfarm.actors.errors.BackendError` that names the
resource and the action, raised at once.
"""

from __future__ import annotations

from typing import Any

from batchfarm.actors.errors import BackendError

#: Attempts per call (the first one included) under botocore's standard retry mode, which
#: backs off with jitter on throttling, 5xx and connection errors.
MAX_ATTEMPTS = 8


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
    session = boto3.session.Session()
    return session.client(
        service,  # type: ignore[call-overload]
        region_name=region or None,
        endpoint_url=endpoint_url or None,
        config=config,
    )


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
