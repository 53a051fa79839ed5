"""The analytics store: one object for the manager's writes and everyone's reads.

Writes are batched: a call takes many rows and writes them ``batch_size`` at a time, one
transaction per batch, with one multi-row statement per table, so the store keeps up with
a large grid (a 10,000-sample flush is 20 transactions at the default 500, not 10,000).
Every write is idempotent where the grid's delivery is at least once: task runs
(:meth:`Store.record_runs`), task creation in chained stages (:meth:`Store.add_tasks`) and
heartbeats (:meth:`Store.record_heartbeats`) may be applied twice to the same effect.
"""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.engine import Engine

from batchfarm.actors.backends.store import migrate
from batchfarm.actors.backends.store.costs import CostQueries
from batchfarm.actors.backends.store.engine import make_engine, parse_url, safe_url
from batchfarm.actors.backends.store.fleet import FleetWrites
from batchfarm.actors.backends.store.jobs import JobWrites
from batchfarm.actors.backends.store.queries import Queries
from batchfarm.actors.backends.store.totals import TotalQueries
from batchfarm.actors.errors import StoreError
from batchfarm.actors.settings import StoreSettings


class Store(JobWrites, FleetWrites, Queries, CostQueries, TotalQueries):
    """The analytics store behind a SQLAlchemy URL, its schema kept at head by Alembic.

    ``sqlite:///path`` (the embedded default), ``postgresql+psycopg://user:pw@host/db`` or
    ``mysql+pymysql://user:pw@host/db`` (RDS). Opening a store brings its schema to the
    newest revision (creating it in an empty database) unless ``upgrade`` is False. Every
    database failure is raised as :class:`StoreError` naming the operation, never the
    password. Safe to share between threads; each process opens its own.

    Writes: :meth:`create_job`, :meth:`add_tasks`, :meth:`update_tasks`,
    :meth:`set_tasks_state`, :meth:`record_runs`, :meth:`set_job_state`,
    :meth:`set_stage_state`, :meth:`delete_job`, :meth:`record_heartbeats`,
    :meth:`write_fleet`, :meth:`mark_nodes_lost`, :meth:`set_cordoned`, :meth:`add_samples`,
    :meth:`delete_samples`, :meth:`record_scaling_event`. Reads: :meth:`job`, :meth:`jobs`,
    :meth:`stages`, :meth:`stage_counts`, :meth:`task`, :meth:`tasks`, :meth:`nodes`,
    :meth:`workers`, :meth:`recent_samples`, :meth:`scaling_events`; costs:
    :meth:`stage_costs_of`, :meth:`task_costs`, :meth:`costs_by_handler`, :meth:`node_costs`;
    totals for ``/metrics``: :meth:`handler_totals`, :meth:`worker_totals`,
    :meth:`oldest_queued_at`.
    """

    def __init__(
        self,
        url: str,
        batch_size: int = 500,
        *,
        upgrade: bool = True,
        connect: StoreSettings | None = None,
    ) -> None:
        if batch_size < 1:
            raise StoreError(f"store batch_size must be at least 1, not {batch_size}")
        self.batch_size = batch_size
        self._url = parse_url(url)
        # ``connect``: pool recycle, TLS and IAM auth (see engine.make_engine).
        self._engine = make_engine(self._url, connect)
        if upgrade:
            try:
                self.upgrade()
            except BaseException:
                self._engine.dispose()
                raise

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for instrumentation and tests; write through the store)."""
        return self._engine

    @property
    def url(self) -> str:
        """The store's URL with its password masked."""
        return safe_url(self._url)

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` through the Alembic migrations."""
        migrate.upgrade(self._engine, revision)

    def close(self) -> None:
        """Close every pooled connection. The store may not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"
