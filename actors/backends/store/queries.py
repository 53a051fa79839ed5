"""The store's reads: jobs, stage progress, tasks, nodes, workers, samples, scaling events.

:class:`Queries` is the read half of :class:`~batchfarm.actors.backends.store.store.Store`.
Every read runs in its own short transaction and returns frozen ``*View`` records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa

from batchfarm.actors.backends.store.base import StoreBase
from batchfarm.actors.backends.store.models import (
    JOBS,
    NODES,
    SAMPLES,
    SCALING_EVENTS,
    STAGES,
    TASKS,
    WORKERS,
    TaskState,
)
from batchfarm.actors.backends.store.records import (
    JobView,
    NodeView,
    SampleView,
    ScalingEventView,
    StageCounts,
    StageView,
    TaskView,
    WorkerView,
)

# What a TaskView shows: not the bookkeeping of costs (``costs`` sums those).
_TASK_VIEW = [TASKS.c[f.name] for f in fields(TaskView)]


class Queries(StoreBase):
    """Read side of the store."""

    def job(self, job_id: str) -> JobView | None:
        """One job, or None if the store does not know it."""
        with self._reading(f"read job {job_id!r}") as connection:
            row = connection.execute(sa.select(JOBS).where(JOBS.c.id == job_id)).first()
        return None if row is None else JobView(**row._mapping)

    def jobs(self, states: Iterable[str] | None = None, limit: int = 100) -> list[JobView]:
        """Jobs, newest first, optionally only those in ``states``."""
        query = sa.select(JOBS).order_by(JOBS.c.created_at.desc(), JOBS.c.id).limit(limit)
        if states is not None:
            query = query.where(JOBS.c.state.in_(list(states)))
        with self._reading("list jobs") as connection:
            rows = connection.execute(query).all()
        return [JobView(**row._mapping) for row in rows]

    def stages(self, job_id: str) -> list[StageView]:
        """A job's stages in order."""
        query = sa.select(STAGES).where(STAGES.c.job_id == job_id).order_by(STAGES.c.index)
        with self._reading(f"read stages of job {job_id!r}") as connection:
            rows = connection.execute(query).all()
        return [StageView(**row._mapping) for row in rows]

    def stage_counts(self, job_id: str) -> list[StageCounts]:
        """Each stage of a job with its tasks counted by state and summed up, in order."""
        return self.stage_counts_of([job_id])[job_id]

    def task(self, job_id: str, stage: str, part: int) -> TaskView | None:
        """One task, or None if the store does not know it."""
        query = sa.select(*_TASK_VIEW).where(
            TASKS.c.job_id == job_id, TASKS.c.stage == stage, TASKS.c.part == part
        )
        with self._reading(f"read task {job_id}/{stage}/{part}") as connection:
            row = connection.execute(query).first()
        return None if row is None else TaskView(**row._mapping)

    def tasks(
        self,
        job_id: str,
        *,
        stage: str | None = None,
        states: Iterable[str] | None = None,
        node: str | None = None,
        limit: int | None = 1000,
        offset: int = 0,
    ) -> list[TaskView]:
        """A job's tasks by stage and part, optionally filtered by stage, state and node."""
        query = sa.select(*_TASK_VIEW).where(TASKS.c.job_id == job_id)
        if stage is not None:
            query = query.where(TASKS.c.stage == stage)
        if states is not None:
            query = query.where(TASKS.c.state.in_(list(states)))
        if node is not None:
            query = query.where(TASKS.c.node_id == node)
        query = query.order_by(TASKS.c.stage, TASKS.c.part).limit(limit).offset(offset)
        with self._reading(f"read tasks of job {job_id!r}") as connection:
            rows = connection.execute(query).all()
        return [TaskView(**row._mapping) for row in rows]

    def stage_done(self, job_id: str, stage: str) -> bool:
        """True when the stage has tasks and every one of them succeeded.

        One query of two index probes (a task not succeeded; any task), never a count: the
        results processor asks this for each stage its completions touch.
        """
        unfinished = [str(state) for state in TaskState if state != TaskState.SUCCEEDED]
        of_stage = sa.select(TASKS.c.part).where(TASKS.c.job_id == job_id, TASKS.c.stage == stage)
        query = sa.select(
            sa.exists(of_stage.where(TASKS.c.state.in_(unfinished))),
            sa.exists(of_stage),
        )
        with self._reading(f"read stage {stage!r} of job {job_id!r}") as connection:
            row = connection.execute(query).one()
        return not row[0] and bool(row[1])

    def nodes(
        self, states: Iterable[str] | None = None, node_class: str | None = None
    ) -> list[NodeView]:
        """Nodes by id, optionally only those in ``states`` or of one class."""
        query = sa.select(NODES).order_by(NODES.c.id)
        if states is not None:
            query = query.where(NODES.c.state.in_(list(states)))
        if node_class is not None:
            query = query.where(NODES.c.node_class == node_class)
        with self._reading("list nodes") as connection:
            rows = connection.execute(query).all()
        return [NodeView(**row._mapping) for row in rows]

    def workers(self, node: str | None = None) -> list[WorkerView]:
        """Worker actors by node and index, optionally of one node only."""
        query = sa.select(WORKERS).order_by(WORKERS.c.node_id, WORKERS.c.index)
        if node is not None:
            query = query.where(WORKERS.c.node_id == node)
        with self._reading("list workers") as connection:
            rows = connection.execute(query).all()
        return [WorkerView(**row._mapping) for row in rows]

    def recent_samples(
        self,
        name: str,
        *,
        since: float | None = None,
        node: str | None = None,
        limit: int | None = 1000,
    ) -> list[SampleView]:
        """A metric's samples, newest first, optionally since a time and from one node."""
        query = sa.select(SAMPLES).where(SAMPLES.c.name == name)
        if since is not None:
            query = query.where(SAMPLES.c.time >= since)
        if node is not None:
            query = query.where(SAMPLES.c.node_id == node)
        query = query.order_by(SAMPLES.c.time.desc(), SAMPLES.c.id.desc()).limit(limit)
        with self._reading(f"read samples of {name!r}") as connection:
            rows = connection.execute(query).all()
        return [SampleView(**row._mapping) for row in rows]

    def scaling_events(
        self, node_class: str | None = None, *, since: float | None = None, limit: int = 100
    ) -> list[ScalingEventView]:
        """Autoscaler decisions, newest first, optionally of one node class and since a time."""
        query = sa.select(SCALING_EVENTS)
        if node_class is not None:
            query = query.where(SCALING_EVENTS.c.node_class == node_class)
        if since is not None:
            query = query.where(SCALING_EVENTS.c.time >= since)
        query = query.order_by(SCALING_EVENTS.c.time.desc(), SCALING_EVENTS.c.id.desc())
        with self._reading("read scaling events") as connection:
            rows = connection.execute(query.limit(limit)).all()
        return [ScalingEventView(**row._mapping) for row in rows]

    # -- totals over the whole grid (for the API's lists and /metrics) ------------------------

    def stage_counts_of(self, job_ids: Iterable[str]) -> dict[str, list[StageCounts]]:
        """Each job's stages with their tasks counted and summed, in order, by job id.

        Two statements for any number of jobs (the API's job list counts a page at once).
        """
        ids = sorted(set(job_ids))
        if not ids:
            return {}
        c = TASKS.c
        query = (
            sa.select(
                c.job_id,
                c.stage,
                c.state,
                sa.func.count().label("n"),
                sa.func.sum(c.cpu_s).label("cpu_s"),
                sa.func.sum(c.compute_s).label("compute_s"),
                sa.func.sum(c.bytes_in).label("bytes_in"),
                sa.func.sum(c.bytes_out).label("bytes_out"),
                sa.func.sum(c.duplicate_runs).label("duplicate_runs"),
                sa.func.min(c.started_at).label("first_started_at"),
                sa.func.max(c.finished_at).label("last_finished_at"),
            )
            .where(c.job_id.in_(ids))
            .group_by(c.job_id, c.stage, c.state)
        )
        stage_query = (
            sa.select(STAGES)
            .where(STAGES.c.job_id.in_(ids))
            .order_by(STAGES.c.job_id, STAGES.c.index)
        )
        with self._reading(f"count tasks of {len(ids)} jobs") as connection:
            stage_rows = connection.execute(stage_query).all()
            groups = connection.execute(query).all()
        by_stage: dict[tuple[str, str], list[Any]] = {}
        for group in groups:
            by_stage.setdefault((group.job_id, group.stage), []).append(group)
        out: dict[str, list[StageCounts]] = {job_id: [] for job_id in ids}
        for row in stage_rows:
            stage = StageView(**row._mapping)
            groups_of = by_stage.get((stage.job_id, stage.name), [])
            out[stage.job_id].append(_stage_counts(stage, groups_of))
        return out

    def count_jobs(self) -> dict[str, int]:
        """Jobs per state (states without jobs are absent)."""
        query = sa.select(JOBS.c.state, sa.func.count()).group_by(JOBS.c.state)
        with self._reading("count jobs") as connection:
            return {state: int(n) for state, n in connection.execute(query).all()}

    def count_tasks(self) -> dict[str, int]:
        """Tasks of every job per state (states without tasks are absent)."""
        query = sa.select(TASKS.c.state, sa.func.count()).group_by(TASKS.c.state)
        with self._reading("count tasks") as connection:
            return {state: int(n) for state, n in connection.execute(query).all()}

    def duplicate_runs(self) -> int:
        """Re-runs of succeeded tasks over every task the store holds."""
        query = sa.select(sa.func.coalesce(sa.func.sum(TASKS.c.duplicate_runs), 0))
        with self._reading("sum duplicate runs") as connection:
            return int(connection.execute(query).scalar_one())

    def count_waiting(self, states: Iterable[str]) -> list[WaitingCount]:
        """Tasks in ``states`` counted by what they wait on: their job's state, stage, class."""
        query = (
            sa.select(
                JOBS.c.state.label("job_state"),
                STAGES.c.index.label("stage_index"),
                STAGES.c.node_class,
                TASKS.c.state,
                sa.func.count().label("n"),
            )
            .select_from(
                TASKS.join(
                    STAGES,
                    sa.and_(STAGES.c.job_id == TASKS.c.job_id, STAGES.c.name == TASKS.c.stage),
                ).join(JOBS, JOBS.c.id == TASKS.c.job_id)
            )
            .where(TASKS.c.state.in_(list(states)))
            .group_by(JOBS.c.state, STAGES.c.index, STAGES.c.node_class, TASKS.c.state)
        )
        with self._reading("count waiting tasks") as connection:
            rows = connection.execute(query).all()
        return [
            WaitingCount(row.job_state, int(row.stage_index), row.node_class, row.state, int(row.n))
            for row in rows
        ]


@dataclass(frozen=True)
class WaitingCount:
    """How many tasks in one state wait in stages of one position and node class."""

    job_state: str
    #: The stage's position in its job (0 for the first stage).
    stage_index: int
    node_class: str
    state: str
    count: int


def _stage_counts(stage: StageView, groups: list[Any]) -> StageCounts:
    # SUM over integers is a Decimal on PostgreSQL and MySQL, and NULL over no rows.
    starts = [g.first_started_at for g in groups if g.first_started_at is not None]
    ends = [g.last_finished_at for g in groups if g.last_finished_at is not None]
    return StageCounts(
        stage=stage,
        counts={g.state: int(g.n) for g in groups},
        cpu_s=float(sum(g.cpu_s or 0 for g in groups)),
        compute_s=float(sum(g.compute_s or 0 for g in groups)),
        bytes_in=int(sum(g.bytes_in or 0 for g in groups)),
        bytes_out=int(sum(g.bytes_out or 0 for g in groups)),
        duplicate_runs=int(sum(g.duplicate_runs or 0 for g in groups)),
        first_started_at=min(starts) if starts else None,
        last_finished_at=max(ends) if ends else None,
    )
