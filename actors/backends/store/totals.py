"""The store's totals that ``/metrics`` needs, each one aggregate statement.

:class:`TotalQueries` is part of :class:`~batchfarm.actors.backends.store.store.Store`. A
scrape must cost the same whatever the grid's size: nothing here reads a row per task or per
worker. Tasks are counted and their bytes summed by handler and state, workers counted by
node and state. Reads only, each in its own short transaction, as the store's other reads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import sqlalchemy as sa

from batchfarm.actors.backends.store.base import StoreBase
from batchfarm.actors.backends.store.models import STAGES, TASKS, WORKERS, TaskState


@dataclass(frozen=True)
class HandlerTotals:
    """Tasks of one handler in one state: how many, and the bytes their runs read and wrote."""

    handler: str
    state: str
    count: int
    bytes_in: int
    bytes_out: int


@dataclass
class WorkerTotals:
    """Workers counted by node and state, with their resident memory summed by node."""

    #: ``(node id, worker state)`` -> workers.
    by_node_state: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: node id -> resident bytes of its workers.
    rss_by_node: Counter[str] = field(default_factory=Counter)


class TotalQueries(StoreBase):
    """Aggregates for ``/metrics``: one statement each, whatever the grid's size."""

    def handler_totals(self) -> list[HandlerTotals]:
        """Every task counted by its stage's handler and its state, with bytes in and out."""
        t = TASKS.c
        query = (
            sa.select(
                STAGES.c.handler,
                t.state,
                sa.func.count().label("n"),
                sa.func.coalesce(sa.func.sum(t.bytes_in), 0).label("bytes_in"),
                sa.func.coalesce(sa.func.sum(t.bytes_out), 0).label("bytes_out"),
            )
            .select_from(
                TASKS.join(STAGES, sa.and_(STAGES.c.job_id == t.job_id, STAGES.c.name == t.stage))
            )
            .group_by(STAGES.c.handler, t.state)
        )
        with self._reading("count tasks by handler") as connection:
            rows = connection.execute(query).all()
        # SUM is a Decimal on PostgreSQL and MySQL.
        return [
            HandlerTotals(row.handler, row.state, int(row.n), int(row.bytes_in), int(row.bytes_out))
            for row in rows
        ]

    def worker_totals(self) -> WorkerTotals:
        """Workers counted by node and state, and their memory by node."""
        w = WORKERS.c
        query = sa.select(
            w.node_id,
            w.state,
            sa.func.count().label("n"),
            sa.func.coalesce(sa.func.sum(w.rss_bytes), 0).label("rss"),
        ).group_by(w.node_id, w.state)
        with self._reading("count workers") as connection:
            rows = connection.execute(query).all()
        totals = WorkerTotals()
        for row in rows:
            totals.by_node_state[(row.node_id, row.state)] += int(row.n)
            totals.rss_by_node[row.node_id] += int(row.rss)
        return totals

    def oldest_queued_at(self) -> float | None:
        """When the task queued longest ago was queued (None when no task is queued)."""
        # A first stage's tasks are marked queued without a queued_at; their last update is it.
        since = sa.func.coalesce(TASKS.c.queued_at, TASKS.c.updated_at)
        query = sa.select(sa.func.min(since)).where(TASKS.c.state == TaskState.QUEUED)
        with self._reading("find the oldest queued task") as connection:
            found = connection.execute(query).scalar_one()
        return None if found is None else float(found)
