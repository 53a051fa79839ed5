"""Engines for the store's databases, and the one way database errors leave the store.

``make_engine`` turns a store URL into a configured SQLAlchemy engine:

- SQLite (``sqlite:///path``): WAL, a busy timeout, foreign keys on, and transactions begun
  by SQLAlchemy rather than the driver, so that writes can take the write lock up front
  (``BEGIN IMMEDIATE``) and DDL is transactional.
- PostgreSQL (``postgresql+psycopg://``; plain ``postgresql://`` means psycopg too).
- MySQL/MariaDB (``mysql+pymysql://``; plain ``mysql://`` or ``mariadb://`` means PyMySQL),
  always with ``charset=utf8mb4``.

Every engine pings connections before use, so a database restart or an idle timeout on RDS
costs a reconnect, not an error. For PostgreSQL and MySQL the ``[store]`` settings add what
RDS needs (see :func:`server_connect_args` and :func:`use_iam_tokens`): pooled connections
recycled after ``pool_recycle`` seconds, TLS (``ssl_mode``, ``ssl_ca``), and IAM database
authentication (``iam_auth``): a fresh token as the password of every new connection.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from alembic.util.exc import CommandError
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from batchfarm.actors.errors import StoreError
from batchfarm.actors.settings import StoreSettings

#: Seconds a SQLite writer waits for another one before giving up.
SQLITE_BUSY_TIMEOUT_S = 30.0
#: Seconds to wait for a PostgreSQL or MySQL server to answer a connect.
CONNECT_TIMEOUT_S = 10
#: Execution option marking a connection that will write (SQLite: ``BEGIN IMMEDIATE``).
WRITE_OPTION = "batchfarm_write"
#: IAM actions the manager (the only process that opens the store) needs for iam_auth.
MANAGER_ACTIONS = ("rds-db:connect",)

# Plain dialect names resolved to the driver batchfarm installs with its extras.
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_MAX_DETAIL = 400
_SERVERS = ("postgresql", "mysql", "mariadb")
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
# ssl_mode values that encrypt the connection (IAM tokens must never travel in clear).
_TLS_MODES = ("require", "verify-ca", "verify-full")


def parse_url(url: str) -> URL:
    """Parse a store URL, picking batchfarm's driver when the URL names only a dialect."""
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError) as error:
        # Never echo the URL: it may hold a password.
        raise StoreError(f"bad store URL: {error.__class__.__name__}") from None
    driver = _DEFAULT_DRIVERS.get(parsed.drivername)
    if driver is not None:
        parsed = parsed.set(drivername=driver)
    if parsed.get_backend_name() in ("mysql", "mariadb") and "charset" not in parsed.query:
        # Without it PyMySQL talks utf8 (3 bytes) and loses every character beyond the BMP.
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def safe_url(url: URL | str) -> str:
    """The URL as text with its password masked, fit for messages and logs."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except (exc.ArgumentError, ValueError):
            return "<unparsable URL>"
    return url.render_as_string(hide_password=True)


def make_engine(url: str | URL, settings: StoreSettings | None = None) -> Engine:
    """A configured engine for a store URL (see the module docstring).

    ``settings`` gives the connection options (its ``url`` and ``batch_size`` are not read
    here); without it, the defaults apply.
    """
    parsed = parse_url(url) if isinstance(url, str) else url
    options = settings if settings is not None else StoreSettings()
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        _refuse_server_options(parsed, options)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif backend in _SERVERS:
        kwargs["connect_args"] = server_connect_args(parsed, options)
        # Every backend then sees committed rows the same way; MySQL's REPEATABLE READ
        # default would also take gap locks on every locking read.
        kwargs["isolation_level"] = "READ COMMITTED"
        # SQLAlchemy says "never" with -1.
        kwargs["pool_recycle"] = options.pool_recycle or -1
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as error:
        raise StoreError(f"open store {safe_url(parsed)}: {_first_line(error)}") from None
    if backend == "sqlite":
        _configure_sqlite(engine)
    elif options.iam_auth:
        use_iam_tokens(engine, iam_token_source(parsed, options.region))
    return engine


def server_connect_args(url: URL, settings: StoreSettings) -> dict[str, Any]:
    """The driver's connect arguments for a PostgreSQL or MySQL store: timeout and TLS.

    psycopg takes libpq's ``sslmode`` and ``sslrootcert``; PyMySQL takes an
    :class:`ssl.SSLContext` (``ssl``), which requires TLS, or ``ssl_disabled``.
    """
    backend = url.get_backend_name()
    args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S}
    mode = settings.ssl_mode
    if settings.iam_auth:
        _check_iam(url, mode)
    if mode.startswith("verify"):
        if not settings.ssl_ca:
            raise StoreError(
                f"open store {safe_url(url)}: [store] ssl_mode = {mode!r} needs [store] ssl_ca,"
                " the CA bundle to check the server against (RDS: global-bundle.pem)"
            )
        if not os.path.isfile(settings.ssl_ca):
            raise StoreError(
                f"open store {safe_url(url)}: [store] ssl_ca {settings.ssl_ca!r}: no such file"
            )
    if not mode:
        return args
    if backend == "postgresql":
        args["sslmode"] = mode
        if mode.startswith("verify"):
            args["sslrootcert"] = settings.ssl_ca
    elif mode == "disable":
        args["ssl_disabled"] = True
    else:
        args["ssl"] = _mysql_tls(url, mode, settings.ssl_ca)
    return args


def _mysql_tls(url: URL, mode: str, ca: str) -> ssl.SSLContext:
    # An SSLContext makes PyMySQL insist on TLS (it refuses a server without it), unlike its
    # default, which falls back to clear text.
    if mode == "require":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as error:
        raise StoreError(f"open store {safe_url(url)}: [store] ssl_ca {ca!r}: {error}") from None
    context.check_hostname = mode == "verify-full"
    return context


def _check_iam(url: URL, mode: str) -> None:
    where = f"open store {safe_url(url)}: [store] iam_auth"
    if mode not in _TLS_MODES:
        raise StoreError(
            f"{where} sends a token as the password, so it needs TLS: set [store] ssl_mode to"
            f' "require", "verify-ca" or "verify-full" (not {mode!r})'
        )
    if not url.username or not url.host:
        raise StoreError(f"{where} needs a URL with the database user and host")
    if url.password:
        raise StoreError(f"{where} logs in with a token: remove the password from the URL")


def _refuse_server_options(url: URL, settings: StoreSettings) -> None:
    for name in ("ssl_mode", "ssl_ca", "iam_auth"):
        if getattr(settings, name):
            raise StoreError(
                f"open store {safe_url(url)}: [store] {name} is for PostgreSQL and MySQL,"
                " not SQLite"
            )


def iam_token_source(url: URL, region: str = "") -> Callable[[], str]:
    """A function returning a fresh RDS IAM auth token for the URL's user, host and port.

    The token is a SigV4 presigned URL made locally from boto3's credentials (no call to
    AWS); it is valid for 15 minutes, long enough to open one connection.
    """
    # Imported here: a store that does not use IAM never loads boto3.
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    from batchfarm.actors.backends.aws import client  # noqa: PLC0415

    host = str(url.host)
    port = url.port or _DEFAULT_PORTS[url.get_backend_name()]
    user = str(url.username)
    where = f"store {safe_url(url)}: [store] iam_auth"
    try:
        rds = client("rds", region=region)
    except BotoCoreError as error:
        raise StoreError(f"{where}: no RDS client ({error}); set [store] region") from None
    resolved = rds.meta.region_name

    def token() -> str:
        try:
            return str(
                rds.generate_db_auth_token(
                    DBHostname=host, Port=port, DBUsername=user, Region=resolved
                )
            )
        except (BotoCoreError, ClientError) as error:
            # The error names what is missing (credentials, region), never a secret.
            raise StoreError(f"{where}: no token for {user}@{host}:{port} ({error})") from None

    return token


def use_iam_tokens(engine: Engine, token: Callable[[], str]) -> None:
    """Give every new connection of ``engine`` a fresh token from ``token`` as its password."""

    @event.listens_for(engine, "do_connect")
    def _with_token(
        _dialect: Any, _record: Any, _cargs: list[Any], cparams: dict[str, Any]
    ) -> None:
        # Only the driver sees it: SQLAlchemy does not log connect parameters.
        cparams["password"] = token()


def _configure_sqlite(engine: Engine) -> None:
    memory = engine.url.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy, not the sqlite3 module, begins transactions (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not memory:
                # WAL: readers never block the writer. synchronous=FULL fsyncs the log at
                # every commit: the manager records runs here and then deletes their
                # completion events from the queue, another file, so a store commit must
                # outlive a power loss before that delete (and before a job's tasks are
                # sent). The manager commits a batch at a time, so this is an fsync per
                # batch, not per task.
                _enable_wal(cursor)
                cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A writer takes the write lock at BEGIN: a deferred transaction that read first
        # could not upgrade its lock once another process committed (SQLITE_BUSY, no wait).
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _enable_wal(cursor: Any) -> None:
    # WAL is a property of the file, set once by whichever connection comes first. Setting
    # it needs the file to itself and SQLite does not wait for that (no busy handler), so
    # connections racing to a new file retry for as long as a writer would wait.
    # (A file system without WAL support answers with the old mode; that is kept.)
    if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextlib.contextmanager
def store_errors(operation: str, url: URL | str) -> Iterator[None]:
    """Turn database and migration errors inside the block into :class:`StoreError`.

    The message names the operation and the database (password masked) and gives the
    driver's own first line, without the statement or its parameters.
    """
    try:
        yield
    except (exc.SQLAlchemyError, CommandError) as error:
        raise StoreError(_message(operation, url, error)) from error


def _message(operation: str, url: URL | str, error: BaseException) -> str:
    # SQLAlchemy's class (IntegrityError, OperationalError) reads the same on every
    # database; the driver's own message says what exactly went wrong.
    cause: BaseException = error
    if isinstance(error, exc.DBAPIError) and error.orig is not None:
        cause = error.orig
    detail = f"{type(error).__name__}: {_first_line(cause)}"
    password = url.password if isinstance(url, URL) else None
    if password:
        # Drivers rarely echo a password, but a DSN in an error message would leak it.
        detail = detail.replace(str(password), "***")
    return f"{operation} failed on {safe_url(url)}: {detail}"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 3] + "..."
