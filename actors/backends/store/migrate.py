"""Schema migrations, driven from code: no ``alembic.ini`` is needed at run time.

The Alembic environment lives in the ``migrations`` package beside this module; every
function here builds an :class:`alembic.config.Config` pointing at it and hands Alembic an
open connection. Migrations run in one transaction (DDL is transactional on PostgreSQL and
SQLite; MySQL commits each DDL statement) under a lock, so processes that open the store at
the same moment on an empty database create the schema once.

To write a new migration after changing ``models.py``::

    python -m batchfarm.actors.backends.store.migrate "add the runs table"

autogenerates ``migrations/versions/NNNN_add_the_runs_table.py`` against a scratch SQLite
database at head; review it (and its downgrade) before committing it.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from batchfarm.actors.backends.store.engine import WRITE_OPTION, make_engine, store_errors
from batchfarm.actors.backends.store.models import Base
from batchfarm.actors.errors import StoreError

#: Where the Alembic environment (``env.py``, ``script.py.mako``, ``versions/``) lives.
MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
#: The table recording the schema's revision; named for batchfarm, so that a database shared
#: with another Alembic application keeps the two histories apart.
VERSION_TABLE = "batchfarm_schema_version"
#: Seconds a process waits for another one's migration before giving up (MySQL's lock).
LOCK_TIMEOUT_S = 120
_LOCK_NAME = "batchfarm.store.migrate"
_PG_LOCK_KEY = zlib.crc32(_LOCK_NAME.encode())


def alembic_config(
    connection: Connection | None = None, directory: Path = MIGRATIONS_DIR
) -> Config:
    """An Alembic config for the store's migrations, bound to ``connection`` if given."""
    config = Config()
    config.set_main_option("script_location", str(directory))
    # Revisions are numbered (0001, 0002, ...); the file name says what each one does.
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    config.attributes["version_table"] = VERSION_TABLE
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StoreError("store migrations: no revision found")
    return head


def current_revision(target: Engine | str) -> str | None:
    """The database's schema revision; None for a database the store never touched."""
    with (
        _engine(target) as engine,
        store_errors("read schema revision", engine.url),
        engine.connect() as connection,
    ):
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(target: Engine | str, revision: str = "head") -> None:
    """Bring the database's schema up to ``revision`` (the newest by default)."""
    _run(target, f"upgrade schema to {revision}", lambda c: command.upgrade(c, revision))


def downgrade(target: Engine | str, revision: str = "base") -> None:
    """Take the database's schema down to ``revision`` (``base``: no tables at all)."""
    _run(target, f"downgrade schema to {revision}", lambda c: command.downgrade(c, revision))


def schema_differences(target: Engine | str) -> list[Any]:
    """How the database's schema differs from the models (Alembic's ``compare_metadata``).

    An empty list means the migrations built exactly what ``models.py`` describes.
    """
    with (
        _engine(target) as engine,
        store_errors("compare schema", engine.url),
        engine.connect() as connection,
    ):
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        return list(compare_metadata(context, Base.metadata))


def make_revision(message: str, directory: Path = MIGRATIONS_DIR) -> Path:
    """Autogenerate the next numbered migration from the models; returns its file.

    The models are compared with a scratch SQLite database brought to head, so the new
    file holds exactly what changed in ``models.py`` since the last migration.
    """
    script = ScriptDirectory.from_config(alembic_config(directory=directory))
    head = script.get_current_head()
    rev_id = f"{int(head) + 1:04d}" if head else "0001"
    with tempfile.TemporaryDirectory() as scratch:
        engine = make_engine(f"sqlite:///{scratch}/scratch.db")
        try:
            _run(engine, "upgrade scratch schema", lambda c: command.upgrade(c, "head"), directory)
            with engine.connect() as connection:
                config = alembic_config(connection, directory)
                new = command.revision(config, message=message, autogenerate=True, rev_id=rev_id)
        finally:
            engine.dispose()
    if new is None or isinstance(new, list):
        raise StoreError("store migrations: alembic made no single revision")
    return Path(new.path)


@contextlib.contextmanager
def _engine(target: Engine | str) -> Iterator[Engine]:
    # A URL gets an engine of its own, disposed at the end; a caller's engine stays open.
    if isinstance(target, Engine):
        yield target
        return
    engine = make_engine(target)
    try:
        yield engine
    finally:
        engine.dispose()


def _run(
    target: Engine | str,
    operation: str,
    step: Callable[[Config], None],
    directory: Path = MIGRATIONS_DIR,
) -> None:
    with (
        _engine(target) as engine,
        store_errors(operation, engine.url),
        engine.connect() as connection,
    ):
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # SQLite rebuilds a table to alter it; with foreign keys on, dropping the old copy
            # would cascade. The pragma is ignored inside a transaction, so it goes to the
            # driver's connection before SQLAlchemy begins one.
            _sqlite_pragma(connection, "foreign_keys = OFF")
        try:
            connection.execution_options(**{WRITE_OPTION: True})
            with _locked_transaction(connection):
                step(alembic_config(connection, directory))
        finally:
            if sqlite:
                _sqlite_pragma(connection, "foreign_keys = ON")


def _sqlite_pragma(connection: Connection, pragma: str) -> None:
    driver = connection.connection.driver_connection
    if driver is None:
        raise StoreError("store migrations: the SQLite connection is closed")
    driver.execute(f"PRAGMA {pragma}")


@contextlib.contextmanager
def _locked_transaction(connection: Connection) -> Iterator[None]:
    # One migration at a time per database, holding the lock until its transaction has
    # committed: the next process must see the new revision, not redo the work.
    name = connection.dialect.name
    if name not in ("mysql", "mariadb"):
        with connection.begin():
            if name == "postgresql":
                # Released when the transaction ends. SQLite needs no lock: the migration's
                # BEGIN IMMEDIATE already keeps every other writer out.
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
            yield
        return
    # MySQL's named lock belongs to the session, so it can outlive the transaction.
    got = connection.execute(sa.select(sa.func.get_lock(_LOCK_NAME, LOCK_TIMEOUT_S))).scalar()
    connection.commit()
    if got != 1:
        raise StoreError(f"store migrations: another process held the lock {LOCK_TIMEOUT_S} s")
    try:
        with connection.begin():
            yield
    finally:
        connection.execute(sa.select(sa.func.release_lock(_LOCK_NAME)))
        connection.commit()


def main(argv: list[str] | None = None) -> int:
    """``python -m …store.migrate MESSAGE``: autogenerate the next migration."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m batchfarm.actors.backends.store.migrate MESSAGE", file=sys.stderr)
        return 2
    print(make_revision(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
