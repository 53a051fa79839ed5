"""What the autoscaler measures: task time, deadlines, open jobs, idle nodes, workers per node.

All of it comes from what the manager already has: tasks and jobs in the store, and the
latest heartbeat of every node (the telemetry processor keeps them in memory), so deciding
costs three aggregate queries and one queue depth read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import sqlalchemy as sa

from batchfarm.actors.backends.store import JobState, StageState, Store, TaskState
from batchfarm.actors.backends.store.engine import store_errors
from batchfarm.actors.backends.store.models import JOBS, STAGES, TASKS
from batchfarm.actors.manager.autoscale import DeadlineWork
from batchfarm.actors.messages import Heartbeat
from batchfarm.actors.settings.model import Settings

#: Seconds of finished tasks the measured task duration is the mean of.
DURATION_WINDOW_S = 900.0
#: Worker states of a node that is doing (or about to do) work.
_WORKING = ("busy", "starting")
#: Worker states of a worker that will take no more work.
_DONE = ("stopped", "failed")
#: Jobs whose deadline the autoscaler plans for: those that may run now. A scheduled job
#: counts from its start time, a paused one once resumed: nodes for them now would idle.
_DEADLINE_JOBS = (JobState.PENDING, JobState.RUNNING)
#: Tasks that still have to run.
_LEFT = (TaskState.PENDING, TaskState.QUEUED, TaskState.RUNNING, TaskState.RETRYING)


def recent_task_seconds(store: Store, node_class: str, since: float) -> float | None:
    """Mean run time (start to finish) of the class's tasks that succeeded since ``since``.

    None when none did: the policy then assumes ``[autoscale] default_task``.
    """
    t = TASKS.c
    query = (
        sa.select(sa.func.avg(t.finished_at - t.started_at))
        .select_from(
            TASKS.join(STAGES, sa.and_(STAGES.c.job_id == t.job_id, STAGES.c.name == t.stage))
        )
        .where(
            STAGES.c.node_class == node_class,
            t.state == TaskState.SUCCEEDED,
            t.finished_at >= since,
            t.started_at.is_not(None),
        )
    )
    with store_errors("measure task duration", store.url), store.engine.connect() as connection:
        mean = connection.execute(query).scalar()
    # AVG is a Decimal on some databases; a clock step can make a run look negative.
    return None if mean is None or float(mean) <= 0 else float(mean)


def deadline_work(store: Store, node_class: str) -> list[DeadlineWork]:
    """Each pending or running job with a deadline, with its tasks left in ``node_class``.

    Tasks not created yet (a chained stage's, made as the stage before completes) are not
    counted: the policy sees them once they exist. Jobs with nothing left in the class are
    left out.
    """
    t = TASKS.c
    query = (
        sa.select(JOBS.c.id, JOBS.c.deadline, sa.func.count().label("left"))
        .select_from(
            JOBS.join(TASKS, t.job_id == JOBS.c.id).join(
                STAGES, sa.and_(STAGES.c.job_id == t.job_id, STAGES.c.name == t.stage)
            )
        )
        .where(
            JOBS.c.deadline.is_not(None),
            JOBS.c.state.in_(list(_DEADLINE_JOBS)),
            STAGES.c.node_class == node_class,
            t.state.in_(list(_LEFT)),
        )
        .group_by(JOBS.c.id, JOBS.c.deadline)
        .order_by(JOBS.c.deadline, JOBS.c.id)
    )
    with store_errors("read deadlines", store.url), store.engine.connect() as connection:
        rows = connection.execute(query).all()
    return [DeadlineWork(row.id, int(row.left), float(row.deadline)) for row in rows]


def open_jobs(store: Store, node_class: str) -> int:
    """Pending or running jobs with a stage of ``node_class`` not done yet.

    Work that may still come to the class beyond its queue: a stage's tasks are made as the
    stage before it gets its parts done. While there is any, idle nodes are held the whole
    ``[autoscale] idle`` (see :func:`~batchfarm.actors.manager.autoscale.hold_s`).
    """
    s = STAGES.c
    query = (
        sa.select(sa.func.count(sa.distinct(s.job_id)))
        .select_from(STAGES.join(JOBS, JOBS.c.id == s.job_id))
        .where(
            s.node_class == node_class,
            s.state.in_([StageState.PENDING, StageState.RUNNING]),
            JOBS.c.state.in_(list(_DEADLINE_JOBS)),
        )
    )
    with store_errors("count open jobs", store.url), store.engine.connect() as connection:
        return int(connection.execute(query).scalar() or 0)


def node_is_busy(beat: Heartbeat) -> bool:
    """Whether a node's latest heartbeat shows work: a task, or a worker busy or starting."""
    return any(w.state in _WORKING or w.task is not None for w in beat.workers)


def node_is_drained(beat: Heartbeat | None) -> bool:
    """Whether a node told to drain is done: silent (gone), or draining with no live worker."""
    if beat is None:
        return True
    return beat.state in ("draining", "stopping") and all(w.state in _DONE for w in beat.workers)


class IdleClock:
    """When each node last became idle, from its heartbeats (see :meth:`observe`).

    A node is idle while it is up, not cordoned by itself (paused), runs no task, and its
    workers' done and failed counts stand still: a task that started and ended between two
    heartbeats still counts as work.
    """

    def __init__(self) -> None:
        self._since: dict[str, float] = {}
        self._counts: dict[str, tuple[int, int]] = {}

    def observe(self, beats: Mapping[str, Heartbeat], now: float) -> dict[str, float]:
        """Update from the latest heartbeats; node id -> idle since, for each idle node."""
        for node in set(self._since) - set(beats):
            del self._since[node]
        for node in set(self._counts) - set(beats):
            del self._counts[node]
        for node, beat in beats.items():
            counts = (sum(w.done for w in beat.workers), sum(w.failed for w in beat.workers))
            moved = self._counts.get(node, counts) != counts
            self._counts[node] = counts
            if beat.state != "up" or not beat.workers or node_is_busy(beat) or moved:
                self._since.pop(node, None)
            else:
                self._since.setdefault(node, now)
        return dict(self._since)


def workers_per_node(settings: Settings, beats: Mapping[str, Heartbeat], known: int) -> int:
    """Worker actors per node: configured, else the most a node reports, else a guess.

    ``known`` is the last figure measured (kept while no node runs); without one, the local
    fleet's nodes run ``[node] workers`` each (``auto``: this machine's cores) and an AWS
    node is assumed to run one until it reports.
    """
    configured = settings.autoscale.workers_per_node
    if configured:
        return configured
    reported = max((len(beat.workers) for beat in beats.values()), default=0)
    if reported:
        return reported
    if known:
        return known
    if settings.autoscale.provider == "local":
        workers = settings.node.workers
        return workers if isinstance(workers, int) else max(1, len(os.sched_getaffinity(0)))
    return 1
