"""Engines for the store's databases, and the one way database errors leave the store.

``make_engine`` turns a store URL into a configured SQLAlchemy engine:

- SQLite (``sqlite:///path``): WAL, a busy timeout, foreign keys on, and transactions begun
  by SQLAlchemy rather than the driver, so that writes can take the write lock up front
  (``BEGIN IMMEDIATE``) and DDL is transactional.
- PostgreSQL (``postgresql+psycopg://``; plain ``postgresql://`` means psycopg too).
- MySQL/MariaDB (``mysql+pymysql://``; plain ``mysql://`` or ``mariadb://`` means PyMySQL),
  always with ``charset=utf8mb4``.

Every engine pings connections before use, so a database restart or an idle timeout on RDS
costs a reconnect, not an error.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic.util.exc import CommandError
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from batchfarm.actors.errors import StoreError

#: Seconds a SQLite writer waits for another one before giving up.
SQLITE_BUSY_TIMEOUT_S = 30.0
#: Seconds to wait for a PostgreSQL or MySQL server to answer a connect.
CONNECT_TIMEOUT_S = 10
#: Execution option marking a connection that will write (SQLite: ``BEGIN IMMEDIATE``).
WRITE_OPTION = "batchfarm_write"

# Plain dialect names resolved to the driver batchfarm installs with its extras.
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_MAX_DETAIL = 400


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


def make_engine(url: str | URL) -> Engine:
    """A configured engine for a store URL (see the module docstring)."""
    parsed = parse_url(url) if isinstance(url, str) else url
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif backend in ("postgresql", "mysql", "mariadb"):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        # Every backend then sees committed rows the same way; MySQL's REPEATABLE READ
        # default would also take gap locks on every locking read.
        kwargs["isolation_level"] = "READ COMMITTED"
        kwargs["pool_recycle"] = 3600
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as error:
        raise StoreError(f"open store {safe_url(parsed)}: {_first_line(error)}") from None
    if backend == "sqlite":
        _configure_sqlite(engine)
    return engine


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
                # WAL: readers never block the writer. synchronous=NORMAL in WAL survives
                # any process crash; only a power loss may forget the last commits.
                _enable_wal(cursor)
                cursor.execute("PRAGMA synchronous = NORMAL")
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
