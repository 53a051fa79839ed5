"""The store's cost reads: what tasks, stages, jobs and nodes cost, in dollars.

A node is priced per hour when it first reports (``nodes.price_per_hour``: the class's
on-demand price, or the spot price at launch). A task's cost is the seconds its recorded run
took times its node's price per hour, divided by 3600 and by the node's worker count: a node
of W workers runs W tasks at once, so each pays a W-th of the node. Stage and job costs are
the sums of their tasks'. A task keeps its latest run (the one that succeeded, or the last
that failed), so earlier failed attempts and duplicate runs are not in it; a run still going
costs nothing until it is recorded. A node's own cost is its time from first to last
heartbeat at its price, which includes the idle time no task pays for.

Computed in SQL (one grouped statement per read), the same on SQLite, PostgreSQL and
MySQL/MariaDB.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from batchfarm.actors.backends.store.base import StoreBase
from batchfarm.actors.backends.store.models import NODES, STAGES, TASKS

#: Seconds in an hour: prices are per node-hour.
HOUR_S = 3600.0


def _task_cost() -> sa.ColumnElement[Any]:
    """Dollars of a task row joined (outer) with its node's row; 0 without a finished run."""
    t, n = TASKS.c, NODES.c
    ran = sa.and_(t.started_at.is_not(None), t.finished_at > t.started_at)
    share = sa.case((n.workers > 0, n.workers), else_=1)
    dollars = (t.finished_at - t.started_at) * sa.func.coalesce(n.price_per_hour, 0.0)
    return sa.case((ran, dollars / share / HOUR_S), else_=0.0)


def _tasks_with_nodes() -> sa.Join:
    return TASKS.outerjoin(NODES, NODES.c.id == TASKS.c.node_id)


@dataclass(frozen=True)
class HandlerCost:
    """What the tasks of one handler on one node class cost, over every job in the store."""

    handler: str
    node_class: str
    dollars: float


class CostQueries(StoreBase):
    """Read side of the store's costs (see the module docstring)."""

    def stage_costs_of(self, job_ids: Iterable[str]) -> dict[str, dict[str, float]]:
        """Job id -> stage name -> dollars, for each stage that has tasks."""
        ids = sorted(set(job_ids))
        if not ids:
            return {}
        query = (
            sa.select(TASKS.c.job_id, TASKS.c.stage, sa.func.sum(_task_cost()).label("dollars"))
            .select_from(_tasks_with_nodes())
            .where(TASKS.c.job_id.in_(ids))
            .group_by(TASKS.c.job_id, TASKS.c.stage)
        )
        out: dict[str, dict[str, float]] = {job_id: {} for job_id in ids}
        with self._reading(f"sum costs of {len(ids)} jobs") as connection:
            for row in connection.execute(query):
                out[row.job_id][row.stage] = float(row.dollars or 0)
        return out

    def task_costs(self, job_id: str, keys: Iterable[tuple[str, int]]) -> dict[str, float]:
        """Task id (``job/stage/part``) -> dollars, for the tasks of ``job_id`` in ``keys``."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        query = (
            sa.select(TASKS.c.stage, TASKS.c.part, _task_cost().label("dollars"))
            .select_from(_tasks_with_nodes())
            .where(TASKS.c.job_id == job_id, sa.tuple_(TASKS.c.stage, TASKS.c.part).in_(wanted))
        )
        with self._reading(f"cost tasks of job {job_id!r}") as connection:
            rows = connection.execute(query).all()
        return {f"{job_id}/{row.stage}/{row.part}": float(row.dollars or 0) for row in rows}

    def costs_by_handler(self) -> list[HandlerCost]:
        """Dollars of every task in the store, by its stage's handler and node class."""
        query = (
            sa.select(
                STAGES.c.handler, STAGES.c.node_class, sa.func.sum(_task_cost()).label("dollars")
            )
            .select_from(
                _tasks_with_nodes().join(
                    STAGES,
                    sa.and_(STAGES.c.job_id == TASKS.c.job_id, STAGES.c.name == TASKS.c.stage),
                )
            )
            .group_by(STAGES.c.handler, STAGES.c.node_class)
            .order_by(STAGES.c.handler, STAGES.c.node_class)
        )
        with self._reading("sum task costs by handler") as connection:
            rows = connection.execute(query).all()
        return [HandlerCost(r.handler, r.node_class, float(r.dollars or 0)) for r in rows]

    def node_costs(self) -> dict[str, float]:
        """Node class -> dollars of its nodes' time, first to last heartbeat, idle included."""
        n = NODES.c
        dollars = (
            (n.last_heartbeat - n.first_seen) * sa.func.coalesce(n.price_per_hour, 0.0) / HOUR_S
        )
        query = sa.select(n.node_class, sa.func.sum(dollars).label("dollars")).group_by(
            n.node_class
        )
        with self._reading("sum node costs") as connection:
            return {row.node_class: float(row.dollars or 0) for row in connection.execute(query)}
