"""Alembic environment of the analytics store, run by Alembic for every migration command.

``batchfarm.actors.backends.store.migrate`` drives Alembic from code and passes an open
connection (with its transaction and lock) in ``config.attributes``; this file only binds
the migration context to it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from batchfarm.actors.backends.store.models import Base
from batchfarm.actors.errors import StoreError


def run_migrations() -> None:
    """Run the pending migrations on the connection ``migrate`` handed over."""
    config = context.config
    connection = config.attributes.get("connection")
    if not isinstance(connection, Connection):
        # Offline (--sql) mode and alembic.ini-driven runs are not supported: the store
        # configures its engines (SQLite pragmas, drivers) in code.
        raise StoreError("store migrations run through batchfarm...store.migrate only")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=config.attributes["version_table"],
        compare_type=True,
        # SQLite alters a table by copying it; Alembic's batch mode does that for us.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
