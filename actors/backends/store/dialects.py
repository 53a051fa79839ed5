"""Bulk statements each database spells its own way: upsert, insert-if-missing, update.

PostgreSQL and SQLite say ``INSERT … ON CONFLICT``; MySQL and MariaDB say
``INSERT … ON DUPLICATE KEY UPDATE``. SQLAlchemy builds both; this module picks one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

from batchfarm.actors.errors import StoreError


def upsert(
    connection: Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    update: Sequence[str],
) -> None:
    """Insert ``rows``, or update the ``update`` columns of rows whose key exists.

    The conflict target is the primary key. Rows must not repeat a key (PostgreSQL refuses
    to update one row twice in a statement).
    """
    if not rows:
        return
    connection.execute(upsert_statement(connection, table, update), list(rows))


def upsert_statement(connection: Connection, table: sa.Table, update: Sequence[str]) -> sa.Insert:
    """The statement :func:`upsert` runs, for ``connection``'s database."""
    keys = [column.name for column in table.primary_key.columns]
    name = connection.dialect.name
    statement: sa.Insert
    if name in ("postgresql", "sqlite"):
        insert = postgresql.insert(table) if name == "postgresql" else sqlite.insert(table)
        statement = insert.on_conflict_do_update(
            index_elements=keys, set_={column: insert.excluded[column] for column in update}
        )
    elif name in ("mysql", "mariadb"):
        my_insert = mysql.insert(table)
        statement = my_insert.on_duplicate_key_update(
            {column: my_insert.inserted[column] for column in update}
        )
    else:
        raise StoreError(f"upsert into {table.name}: unsupported database {name!r}")
    return statement


def insert_missing(connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows``, skipping those whose primary key exists (and only those)."""
    if not rows:
        return
    keys = [column.name for column in table.primary_key.columns]
    name = connection.dialect.name
    statement: sa.Executable
    if name == "postgresql":
        statement = postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
    elif name == "sqlite":
        statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
    elif name in ("mysql", "mariadb"):
        # A no-op update, not INSERT IGNORE, which would also swallow every other error.
        statement = mysql.insert(table).on_duplicate_key_update({keys[0]: table.c[keys[0]]})
    else:
        raise StoreError(f"insert into {table.name}: unsupported database {name!r}")
    connection.execute(statement, list(rows))


def update_rows(connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """Set columns of existing rows by primary key, in one round trip.

    Each row gives its full primary key and the same other columns. The rows must exist and
    be locked by the caller's transaction (``SELECT … FOR UPDATE``): on MySQL this is an
    upsert, which would insert a row that was not there.
    """
    if not rows:
        return
    keys = [column.name for column in table.primary_key.columns]
    columns = [name for name in rows[0] if name not in keys]
    name = connection.dialect.name
    if name in ("mysql", "mariadb"):
        # MySQL's one statement that sets many rows to different values is the upsert (an
        # UPDATE executemany is a round trip per row). Its INSERT half never happens (the
        # rows exist), but it must be a valid row.
        filler = {
            column.name: _filler(column)
            for column in table.columns
            if column.name not in rows[0] and not column.nullable
        }
        upsert(connection, table, [filler | row for row in rows], columns)
    else:
        # psycopg pipelines an executemany (no round trip per row) and SQLite runs in
        # process, so one UPDATE per row costs them little.
        statement = (
            sa.update(table)
            .where(*(table.c[key] == sa.bindparam(f"k_{key}") for key in keys))
            .values({n: sa.bindparam(f"v_{n}") for n in columns})
        )
        connection.execute(
            statement,
            [
                {f"k_{key}": row[key] for key in keys} | {f"v_{n}": row[n] for n in columns}
                for row in rows
            ],
        )


def _filler(column: sa.Column[Any]) -> Any:
    # A valid value of the column's type: "", 0, 0.0, False, or an empty JSON object.
    if isinstance(column.type, sa.JSON):
        return {}
    return column.type.python_type()
