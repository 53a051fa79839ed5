"""The store's cost reads: what tasks, stages, jobs and nodes cost, in dollars.

A node is priced per hour when it first reports (``nodes.price_per_hour``: the class's
on-demand price, or the spot price at launch). A run costs its seconds times its node's price
per hour, divided by 3600 and by the node's worker count: a node of W workers runs W tasks at
once, so each pays a W-th of the node. A task's cost is the sum of all its runs (failed ones,
retries, duplicates under at-least-once delivery), each counted once: ``record_runs`` adds
each run's dollars to ``tasks.cost_dollars`` as it records the run (the rules are in
``runs``). A run whose node has no price yet when it is recorded goes to ``unpriced_runs``
with its seconds, and is priced here, when read, at its node's price and workers then; a
node whose price never comes makes it cost nothing. Stage and job costs are the sums of
their tasks'. A run still going costs nothing until it is recorded, and a run that reports
no completion (its worker killed, its lease lost) is never recorded. A node's own cost is
its time from first to last heartbeat at its price, which includes the idle time no task
pays for.

Computed in SQL (one grouped statement per read), the same on SQLite, PostgreSQL and
MySQL/MariaDB.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from batchfarm.actors.backends.store.base import StoreBase
from batchfarm.actors.backends.store.models import NODES, STAGES, TASKS, UNPRICED_RUNS

#: Seconds in an hour: prices are per node-hour.
HOUR_S = 3600.0


@dataclass(frozen=True)
class NodePrice:
    """What a node charges its runs: dollars per node-hour (None: unknown yet), and workers."""

    per_hour: float | None
    workers: int


def run_dollars(seconds: float, price: NodePrice) -> float:
    """Dollars of a run of ``seconds`` on a node priced ``price`` (a worker's share of it)."""
    return seconds * (price.per_hour or 0.0) / max(price.workers, 1) / HOUR_S


def node_prices(connection: Connection, nodes: Iterable[str]) -> dict[str, NodePrice]:
    """Node id -> its price and workers, for those of ``nodes`` the store has a row for."""
    ids = sorted(set(nodes))
    if not ids:
        return {}
    n = NODES.c
    query = sa.select(n.id, n.price_per_hour, n.workers).where(n.id.in_(ids))
    return {row.id: NodePrice(row.price_per_hour, row.workers) for row in connection.execute(query)}


def _costs(
    tasks: sa.ColumnElement[bool] | None = None, runs: sa.ColumnElement[bool] | None = None
) -> sa.Subquery:
    """Rows ``job_id, stage, part, dollars``: each task's recorded cost, each unpriced run's.

    ``tasks`` and ``runs`` filter the two halves (written inside each, so no database has
    to push a filter into the union). Sum ``dollars`` by task, stage or job.
    """
    t, u, n = TASKS.c, UNPRICED_RUNS.c, NODES.c
    recorded = sa.select(t.job_id, t.stage, t.part, t.cost_dollars.label("dollars"))
    share = sa.case((n.workers > 0, n.workers), else_=1)
    dollars = u.seconds * sa.func.coalesce(n.price_per_hour, 0.0) / share / HOUR_S
    late = sa.select(u.job_id, u.stage, u.part, dollars.label("dollars")).select_from(
        UNPRICED_RUNS.outerjoin(NODES, n.id == u.node_id)
    )
    if tasks is not None:
        recorded = recorded.where(tasks)
    if runs is not None:
        late = late.where(runs)
    return sa.union_all(recorded, late).subquery("costs")


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
        costs = _costs(TASKS.c.job_id.in_(ids), UNPRICED_RUNS.c.job_id.in_(ids)).c
        query = sa.select(costs.job_id, costs.stage, sa.func.sum(costs.dollars).label("dollars"))
        query = query.group_by(costs.job_id, costs.stage)
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
        t, u = TASKS.c, UNPRICED_RUNS.c
        costs = _costs(
            sa.and_(t.job_id == job_id, sa.tuple_(t.stage, t.part).in_(wanted)),
            sa.and_(u.job_id == job_id, sa.tuple_(u.stage, u.part).in_(wanted)),
        ).c
        query = sa.select(costs.stage, costs.part, sa.func.sum(costs.dollars).label("dollars"))
        query = query.group_by(costs.stage, costs.part)
        with self._reading(f"cost tasks of job {job_id!r}") as connection:
            rows = connection.execute(query).all()
        return {f"{job_id}/{row.stage}/{row.part}": float(row.dollars or 0) for row in rows}

    def costs_by_handler(self) -> list[HandlerCost]:
        """Dollars of every task in the store, by its stage's handler and node class."""
        costs = _costs()
        query = (
            sa.select(
                STAGES.c.handler, STAGES.c.node_class, sa.func.sum(costs.c.dollars).label("dollars")
            )
            .select_from(
                costs.join(
                    STAGES,
                    sa.and_(STAGES.c.job_id == costs.c.job_id, STAGES.c.name == costs.c.stage),
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
