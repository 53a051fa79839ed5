"""The store's writes of the fleet: nodes and workers, metric samples, scaling events."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from batchfarm.actors.backends.store.base import StoreBase, check_ident, clip
from batchfarm.actors.backends.store.dialects import upsert
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

# What a heartbeat updates: not first_seen, and not a cordon, which is the manager's call.
_NODE_UPDATE = [
    *("node_class", "host", "state", "reason", "last_heartbeat"),
    *("cpu_percent", "rss_bytes", "workers"),
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

    def mark_nodes_lost(self, before: float, reason: str = "missed heartbeats") -> list[str]:
        """Mark nodes silent since before ``before`` lost; returns the newly lost nodes' ids.

        A node that said it was stopping and then fell silent is ``stopped``, not lost.
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
            rows = connection.execute(silent).all()
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
        for batch in self._batches(samples):
            rows = [
                {
                    "time": sample.time,
                    "node_id": sample.node,
                    "name": sample.name,
                    "labels": sample.labels,
                    "value": sample.value,
                }
                for sample in batch
            ]
            with self._writing("add metric samples") as connection:
                connection.execute(sa.insert(SAMPLES), rows)
            count += len(rows)
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
