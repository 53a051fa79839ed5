"""The store's writes of the fleet: nodes and workers, metric samples, scaling events."""

from __future__ import annotations

import enum
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from batchfarm.actors.backends.store.base import StoreBase, check_ident, clip
from batchfarm.actors.backends.store.dialects import upsert, upsert_statement
from batchfarm.actors.backends.store.models import (
    NODE_ID_LEN,
    NODES,
    SAMPLES,
    SCALING_EVENTS,
    TASKS,
    WORKERS,
    NodeState,
    TaskState,
)
from batchfarm.actors.backends.store.records import NewSample, NewScalingEvent, NodeBeat
from batchfarm.actors.errors import StoreError

#: States the manager gives the workers of a node that fell silent (nodes report the rest).
WORKER_LOST = "lost"
WORKER_STOPPED = "stopped"


@dataclass(frozen=True)
class RunningTask:
    """A task a worker reports running, since when (the heartbeat that first showed it)."""

    node: str
    worker: int
    job: str
    stage: str
    part: int
    since: float


@dataclass(frozen=True)
class FleetChanges:
    """One coalesced write of the nodes' telemetry (see :meth:`FleetWrites.write_fleet`)."""

    #: The latest heartbeat of each node; its ``workers`` are only those whose row changed.
    beats: Sequence[NodeBeat]
    #: Node id -> workers it reports (its row's ``workers``).
    counts: Mapping[str, int]
    #: Node id -> the indexes of all its workers, for nodes whose set of workers may have
    #: changed: the rows of the others are removed.
    rosters: Mapping[str, Sequence[int]]
    #: Tasks to mark running, if they are queued or retrying.
    running: Sequence[RunningTask]


# What a heartbeat updates: not first_seen, and not a cordon, which is the manager's call.
_NODE_UPDATE = [
    *("node_class", "host", "state", "reason", "last_heartbeat"),
    *("cpu_percent", "rss_bytes", "workers"),
    *("price_per_hour", "instance_type", "zone", "lifecycle"),
]
_WORKER_UPDATE = [
    *("pid", "core", "state", "task", "done", "failed"),
    *("cpu_percent", "rss_bytes", "updated_at"),
]


class FleetWrites(StoreBase):
    """Writes of nodes, workers, metric samples and scaling events."""

    def record_heartbeats(self, beats: Iterable[NodeBeat]) -> None:
        """Upsert nodes and their workers from heartbeats, ``batch_size`` beats a transaction.

        Within a batch the latest beat of each node wins. A node that comes back after being
        marked lost is up again; workers it no longer reports are removed. A queued or
        retrying task a worker reports running is marked running, with its node and worker
        (its completion, recorded later, wins over this).
        """
        for batch in self._batches(beats):
            latest: dict[str, NodeBeat] = {}
            for beat in batch:
                check_ident("record heartbeats", "node id", beat.node, NODE_ID_LEN)
                seen = latest.get(beat.node)
                if seen is None or beat.time >= seen.time:
                    latest[beat.node] = beat
            node_rows = [_node_row(beat) for beat in latest.values()]
            worker_rows = [row for beat in latest.values() for row in _worker_rows(beat)]
            # A worker row older than its node's latest heartbeat is one the node no longer has.
            node_time = (
                sa.select(NODES.c.last_heartbeat)
                .where(NODES.c.id == WORKERS.c.node_id)
                .scalar_subquery()
            )
            gone = sa.delete(WORKERS).where(
                WORKERS.c.node_id.in_(list(latest)), WORKERS.c.updated_at < node_time
            )
            running = [row for beat in latest.values() for row in _running_rows(beat)]
            with self._writing("record heartbeats") as connection:
                upsert(connection, NODES, node_rows, _NODE_UPDATE)
                upsert(connection, WORKERS, worker_rows, _WORKER_UPDATE)
                connection.execute(gone)
                if running:
                    connection.execute(_MARK_RUNNING, running)

    def write_fleet(self, changes: FleetChanges) -> None:
        """Write coalesced telemetry: node rows, changed worker rows, rosters, running tasks.

        ``batch_size`` nodes a transaction. Unlike :meth:`record_heartbeats`, a worker not in
        a beat keeps its row unless its node's roster leaves it out. A queued or retrying
        task in :attr:`FleetChanges.running` is marked running, with its node and worker:
        with its node's row, or after the rows when its node has none in ``changes``.
        """
        with_row = {beat.node for beat in changes.beats}
        for batch in self._batches(changes.beats):
            node_rows = []
            worker_rows: dict[tuple[str, int], dict[str, Any]] = {}
            for beat in batch:
                check_ident("write fleet telemetry", "node id", beat.node, NODE_ID_LEN)
                row = _node_row(beat)
                row["workers"] = changes.counts.get(beat.node, row["workers"])
                node_rows.append(row)
                # A repeated index in a heartbeat keeps its last entry.
                worker_rows.update(((beat.node, w["index"]), w) for w in _worker_rows(beat))
            nodes = {beat.node for beat in batch}
            gone = [
                sa.delete(WORKERS).where(
                    WORKERS.c.node_id == node, WORKERS.c["index"].not_in(list(roster))
                )
                for node, roster in changes.rosters.items()
                if node in nodes
            ]
            running = [_mark_row(task) for task in changes.running if task.node in nodes]
            with self._writing("write fleet telemetry") as connection:
                nodes_upsert = upsert_statement(connection, NODES, _NODE_UPDATE)
                workers_upsert = upsert_statement(connection, WORKERS, _WORKER_UPDATE)
                _execute_many(connection, "upsert nodes", nodes_upsert, node_rows)
                _execute_many(connection, "upsert workers", workers_upsert, [*worker_rows.values()])
                for statement in gone:
                    connection.execute(statement)
                _execute_many(connection, "mark running", _MARK_RUNNING, running)
        rest = (task for task in changes.running if task.node not in with_row)
        for tasks in self._batches(rest):
            with self._writing("mark running tasks") as connection:
                rows = [_mark_row(task) for task in tasks]
                _execute_many(connection, "mark running", _MARK_RUNNING, rows)

    def mark_nodes_lost(
        self, before: float, reason: str = "missed heartbeats", *, keep: Collection[str] = ()
    ) -> list[str]:
        """Mark nodes silent since before ``before`` lost; returns the newly lost nodes' ids.

        A node that said it was stopping and then fell silent is ``stopped``, not lost. The
        nodes in ``keep`` are left as they are, whatever their ``last_heartbeat``: the
        manager heard them lately, and writes a node's last heartbeat only every few
        seconds while nothing else about it changes.
        """
        silent = (
            sa.select(NODES.c.id, NODES.c.state)
            .where(
                NODES.c.last_heartbeat < before,
                NODES.c.state.not_in([NodeState.LOST, NodeState.STOPPED]),
            )
            .order_by(NODES.c.id)
            .with_for_update()
        )
        with self._writing("mark lost nodes") as connection:
            rows = [row for row in connection.execute(silent).all() if row.id not in keep]
            lost = [row.id for row in rows if row.state != NodeState.STOPPING]
            stopped = [row.id for row in rows if row.state == NodeState.STOPPING]
            for ids, state, worker_state, why in (
                (lost, NodeState.LOST, WORKER_LOST, reason),
                (stopped, NodeState.STOPPED, WORKER_STOPPED, "stopped"),
            ):
                for part in self._batches(ids):
                    connection.execute(
                        sa.update(NODES)
                        .where(NODES.c.id.in_(part))
                        .values(state=str(state), reason=clip(why))
                    )
                    connection.execute(
                        sa.update(WORKERS)
                        .where(WORKERS.c.node_id.in_(part))
                        .values(state=worker_state, task=None)
                    )
        return lost

    def set_cordoned(self, node: str, cordoned: bool, reason: str | None = None) -> bool:
        """Cordon a node (it takes no new work) or release it; False if the node is unknown."""
        query = (
            sa.update(NODES)
            .where(NODES.c.id == node)
            .values(cordoned=cordoned, cordon_reason=clip(reason) if cordoned else None)
        )
        with self._writing(f"cordon node {node!r}") as connection:
            return connection.execute(query).rowcount > 0

    def add_samples(self, samples: Iterable[NewSample]) -> int:
        """Store metric samples, ``batch_size`` rows a transaction; returns how many."""
        count = 0
        # Encoded here, once per distinct set, as the JSON type would (see _execute_many).
        labels_json: dict[tuple[tuple[str, str], ...], str] = {}
        for batch in self._batches(samples):
            rows = []
            for sample in batch:
                key = tuple(sample.labels.items())
                labels = labels_json.get(key)
                if labels is None:
                    labels = labels_json[key] = json.dumps(sample.labels)
                rows.append(
                    {
                        "time": sample.time,
                        "node_id": sample.node,
                        "name": sample.name,
                        "labels": labels,
                        "value": sample.value,
                    }
                )
            with self._writing("add metric samples") as connection:
                _execute_many(connection, "insert samples", sa.insert(SAMPLES), rows)
            count += len(batch)
        return count

    def delete_samples(self, before: float) -> int:
        """Delete samples older than ``before`` (retention); returns how many."""
        with self._writing("delete old metric samples") as connection:
            return connection.execute(sa.delete(SAMPLES).where(SAMPLES.c.time < before)).rowcount

    def record_scaling_event(self, event: NewScalingEvent) -> int:
        """Record one autoscaler decision; returns its id."""
        row = {
            "time": event.time,
            "node_class": event.node_class,
            "provider": event.provider,
            "desired_before": event.desired_before,
            "desired_after": event.desired_after,
            "backlog": event.backlog,
            "rate": event.rate,
            "nodes": event.nodes,
            "reason": clip(event.reason) or "",
            "details": event.details,
        }
        with self._writing("record scaling event") as connection:
            key = connection.execute(sa.insert(SCALING_EVENTS), row).inserted_primary_key
        if key is None:
            raise StoreError("record scaling event: the database returned no id")
        return int(key[0])


#: Compiled forms of :func:`_execute_many`'s statements, by name, database and row keys.
_COMPILED: dict[tuple[str, str, tuple[str, ...]], _Compiled] = {}


@dataclass(frozen=True)
class _Compiled:
    sql: str
    #: Parameter names in order, for a driver taking tuples; None for one taking dicts.
    order: tuple[str, ...] | None
    #: Values the statement holds itself (a state it sets or matches).
    fixed: dict[str, Any]

    def positional(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """The rows as tuples in the statement's order (with its own values), made in C."""
        assert self.order is not None
        if len(self.order) == 1:
            (key,) = self.order
            return [({**self.fixed, **row}[key],) for row in rows]
        get = itemgetter(*self.order)
        fixed = self.fixed
        return [get({**fixed, **row}) for row in rows] if fixed else list(map(get, rows))


def _execute_many(
    connection: Connection,
    name: str,
    statement: sa.Insert | sa.Update,
    rows: list[dict[str, Any]],
) -> None:
    """Run ``statement`` once per row through the driver's own executemany.

    SQLAlchemy's work per row (its parameter handling and type processing, some 20 us) was
    most of the cost of a thousand nodes' telemetry: node rows, worker rows, running marks
    and 8,000 samples a second. So the statement is compiled once per database and the rows
    go to the driver as they are: they hold plain values only (text, numbers, booleans,
    None, and JSON already encoded), which every supported driver takes without help; the
    statement's own values (enum members) go as their text. ``name`` names the statement
    (with the rows' keys, the cache key of its compiled form).
    """
    if not rows:
        return
    keys = tuple(rows[0])
    found = _COMPILED.get((name, connection.dialect.name, keys))
    if found is None:
        dialect = connection.dialect
        compiled = (
            statement.compile(dialect=dialect, column_keys=list(keys))
            if isinstance(statement, sa.Insert)
            else statement.compile(dialect=dialect)
        )
        missing = sorted(k for k, bind in compiled.binds.items() if bind.required and k not in keys)
        if missing:
            raise StoreError(f"{name}: the rows lack {missing}")
        fixed = {
            k: str(v) if isinstance(v, enum.Enum) else v
            for k, v in compiled.params.items()
            if k not in keys
        }
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        found = _Compiled(compiled.string, order, fixed)
        _COMPILED[(name, connection.dialect.name, keys)] = found
    if found.order is None:
        params: list[Any] = [{**found.fixed, **row} for row in rows] if found.fixed else rows
    else:
        params = found.positional(rows)
    connection.exec_driver_sql(found.sql, params)


def _node_row(beat: NodeBeat) -> dict[str, Any]:
    return {
        "id": beat.node,
        "node_class": beat.node_class,
        "host": beat.host,
        "state": str(beat.state),
        "reason": None,
        "cordoned": False,
        "cordon_reason": None,
        "first_seen": beat.time,
        "last_heartbeat": beat.time,
        "cpu_percent": beat.cpu_percent,
        "rss_bytes": beat.rss_bytes,
        "workers": len({worker.index for worker in beat.workers}),
        "price_per_hour": beat.price_per_hour,
        "instance_type": beat.instance_type or None,
        "zone": beat.zone or None,
        "lifecycle": beat.lifecycle or None,
    }


# Only waiting tasks become running: a heartbeat sent before a completion that is already
# recorded must not turn a finished task back.
_MARK_RUNNING = (
    sa.update(TASKS)
    .where(
        TASKS.c.job_id == sa.bindparam("k_job"),
        TASKS.c.stage == sa.bindparam("k_stage"),
        TASKS.c.part == sa.bindparam("k_part"),
        # Not IN (...): an expanding parameter cannot go with executemany.
        sa.or_(TASKS.c.state == TaskState.QUEUED, TASKS.c.state == TaskState.RETRYING),
    )
    .values(
        state=TaskState.RUNNING,
        reason=None,
        node_id=sa.bindparam("k_node"),
        worker=sa.bindparam("k_worker"),
        started_at=sa.bindparam("k_at"),
        updated_at=sa.bindparam("k_at"),
    )
)


def _mark_row(task: RunningTask) -> dict[str, Any]:
    """Parameters of :data:`_MARK_RUNNING` for ``task``."""
    return {
        "k_job": task.job,
        "k_stage": task.stage,
        "k_part": task.part,
        "k_node": task.node,
        "k_worker": task.worker,
        "k_at": task.since,
    }


def _running_rows(beat: NodeBeat) -> list[dict[str, Any]]:
    """Parameters of :data:`_MARK_RUNNING` for the tasks ``beat``'s workers report running."""
    rows = []
    for worker in beat.workers:
        job, _, rest = (worker.task or "").partition("/")
        stage, _, part = rest.rpartition("/")
        if job and stage and part.isdigit():
            rows.append(
                {
                    "k_job": job,
                    "k_stage": stage,
                    "k_part": int(part),
                    "k_node": beat.node,
                    "k_worker": worker.index,
                    "k_at": beat.time,
                }
            )
    return rows


def _worker_rows(beat: NodeBeat) -> list[dict[str, Any]]:
    # One row per index: a repeated index in a heartbeat keeps its last entry.
    rows = {
        worker.index: {
            "node_id": beat.node,
            "index": worker.index,
            "pid": worker.pid,
            "core": worker.core,
            "state": str(worker.state),
            "task": worker.task,
            "done": worker.done,
            "failed": worker.failed,
            "cpu_percent": worker.cpu_percent,
            "rss_bytes": worker.rss_bytes,
            "updated_at": beat.time,
        }
        for worker in beat.workers
    }
    return list(rows.values())
