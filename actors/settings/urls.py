"""Check backend URLs: what each scheme needs, and which SQLAlchemy URLs are usable."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# SQS queue names: letters, digits, '-' and '_'; the grid appends suffixes such as -dlq.
_SQS_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# S3 bucket names (general purpose buckets): 3-63 lowercase letters, digits, '.', '-'.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

_FORMS = {
    "local": "local:///absolute/path/queue.db",
    "sqs": "sqs://queue-name-prefix",
    "file": "file:///absolute/path",
    "s3": "s3://bucket/optional/prefix",
    "tcp": "tcp://host:port",
    "http": "http://host:port",
}


def check_url(value: str, schemes: tuple[str, ...]) -> str | None:
    """Return what was expected if ``value`` is not a usable URL of ``schemes``, else None.

    An empty ``schemes`` tuple means a SQLAlchemy database URL.
    """
    if not schemes:
        return _check_database_url(value)
    forms = " or ".join(_FORMS[s] for s in schemes)
    if "{" in value or "}" in value:
        return f"a URL ({forms}); only {{state_dir}} may be substituted"
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        return f"a URL of the form {forms}"
    if parts.query or parts.fragment:
        return f"a URL of the form {forms}, without ?query or #fragment"
    if parts.scheme in ("local", "file"):
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            return f"a URL of the form {_FORMS[parts.scheme]} (three slashes, absolute path)"
    elif parts.scheme == "sqs":
        if not _SQS_NAME.fullmatch(parts.netloc) or parts.path not in ("", "/"):
            return f"a URL of the form {_FORMS['sqs']} (1-64 letters, digits, '-' or '_')"
    elif parts.scheme == "s3" and not _BUCKET.fullmatch(parts.netloc):
        return f"a URL of the form {_FORMS['s3']} with a valid bucket name"
    elif parts.scheme in ("tcp", "http"):
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or port == 0 or parts.path not in ("", "/"):
            what = "a ZeroMQ endpoint" if parts.scheme == "tcp" else "an address"
            return f"{what} of the form {_FORMS[parts.scheme]} (a port from 1 to 65535)"
    return None


def _check_database_url(value: str) -> str | None:
    # Imported here: SQLAlchemy takes a quarter of a second to import, and worker processes,
    # which never open the store, import this module to unpickle their settings.
    from sqlalchemy.engine import make_url  # noqa: PLC0415
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError  # noqa: PLC0415

    expected = "a SQLAlchemy URL such as sqlite:///path/grid.db or postgresql+psycopg://host/db"
    try:
        url = make_url(value)
    except ArgumentError:
        return expected
    try:
        url.get_dialect()
    except NoSuchModuleError:
        return f"{expected} (no SQLAlchemy dialect {url.drivername!r})"
    database = url.database or ""
    relative = database not in ("", ":memory:") and not database.startswith("/")
    if url.get_backend_name() == "sqlite" and relative:
        return "sqlite:////absolute/path/grid.db (four slashes: an absolute path)"
    return None
