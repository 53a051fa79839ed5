"""The store's writes of jobs, stages and tasks, batched and idempotent where they must be.

Jobs are created whole (job, stages and every task in one transaction). Task updates and
runs are applied ``batch_size`` at a time: one transaction per batch that locks the batch's
tasks, decides in Python what changes (so every database applies the same rules), and
writes the changes with one multi-row statement.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from batchfarm.actors.backends.store import runs
from batchfarm.actors.backends.store.base import StoreBase, check_ident, clip
from batchfarm.actors.backends.store.costs import node_prices
from batchfarm.actors.backends.store.dialects import insert_missing, update_rows
from batchfarm.actors.backends.store.models import (
    IDENT_LEN,
    JOBS,
    STAGES,
    TASKS,
    UNPRICED_RUNS,
    TaskState,
)
from batchfarm.actors.backends.store.records import (
    NewJob,
    NewStage,
    NewTask,
    RunsApplied,
    TaskRun,
    TaskUpdate,
    task_id,
)
from batchfarm.actors.errors import StoreError

# What a task update may change; None in a TaskUpdate keeps the stored value.
_KEPT_UNLESS_GIVEN = {
    "node_id": "node",
    "worker": "worker",
    "attempts": "attempts",
    "queued_at": "queued_at",
    "started_at": "started_at",
    "failed_nodes": "failed_nodes",
}
_RUN_STATE = (
    *("state", "attempts", "node_id", "worker", "started_at", "duplicate_runs"),
    *("failed_nodes", "cost_dollars", "runs_seen"),
)


class JobWrites(StoreBase):
    """Writes of jobs, stages and tasks."""

    def create_job(self, job: NewJob, tasks: Iterable[NewTask] = ()) -> int:
        """Create a job with its stages and tasks, all or nothing; returns the task count.

        The tasks are inserted ``batch_size`` rows per statement within the one transaction.
        """
        operation = f"create job {job.id!r}"
        check_ident(operation, "job id", job.id, IDENT_LEN)
        names = [stage.name for stage in job.stages]
        for name in names:
            check_ident(operation, "stage name", name, IDENT_LEN)
        if len(set(names)) != len(names):
            raise StoreError(f"{operation}: stage names repeat: {names}")
        now = time.time()
        count = 0
        with self._writing(operation) as connection:
            if connection.execute(sa.select(JOBS.c.id).where(JOBS.c.id == job.id)).first():
                raise StoreError(f"{operation}: a job with this id exists")
            connection.execute(sa.insert(JOBS), _job_row(job, now))
            if job.stages:
                connection.execute(sa.insert(STAGES), [_stage_row(job, s) for s in job.stages])
            for batch in self._batches(tasks):
                rows = [_task_row(operation, job.id, task, set(names), now) for task in batch]
                connection.execute(sa.insert(TASKS), rows)
                count += len(rows)
        return count

    def add_tasks(self, job_id: str, tasks: Iterable[NewTask]) -> list[str]:
        """Add tasks to a job's stages, skipping those that exist; returns the new tasks' ids.

        Idempotent, for chained stages fed by at-least-once completions.
        """
        operation = f"add tasks to job {job_id!r}"
        created: list[str] = []
        now = time.time()
        for batch in self._batches(tasks):
            rows: dict[runs.Key, dict[str, Any]] = {}
            for task in batch:
                key = (job_id, task.stage, task.part)
                rows.setdefault(key, _task_row(operation, job_id, task, None, now))
            with self._writing(operation) as connection:
                existing = _locked_tasks(connection, rows, ("state",))
                new = {key: row for key, row in rows.items() if key not in existing}
                insert_missing(connection, TASKS, list(new.values()))
            created.extend(task_id(*key) for key in new)
        return created

    def update_tasks(self, updates: Iterable[TaskUpdate]) -> int:
        """Move tasks to new states (see :class:`TaskUpdate`); returns how many moved.

        Unknown tasks and tasks that succeeded are left alone.
        """
        moved = 0
        for batch in self._batches(updates):
            now = time.time()
            with self._writing("update tasks") as connection:
                keys = [(u.job, u.stage, u.part) for u in batch]
                stored = _locked_tasks(connection, keys, ("state", *_KEPT_UNLESS_GIVEN))
                rows: dict[runs.Key, dict[str, Any]] = {}
                for update, key in zip(batch, keys, strict=True):
                    row = stored.get(key)
                    if row is None or row["state"] == TaskState.SUCCEEDED:
                        continue
                    row["state"] = str(update.state)
                    row["reason"] = clip(update.reason)
                    for column, field in _KEPT_UNLESS_GIVEN.items():
                        value = getattr(update, field)
                        if value is not None:
                            row[column] = list(value) if column == "failed_nodes" else value
                    row["updated_at"] = now
                    rows[key] = row
                update_rows(connection, TASKS, [_with_key(k, r) for k, r in rows.items()])
            moved += len(rows)
        return moved

    def set_tasks_state(
        self,
        job_id: str,
        state: str,
        *,
        from_states: Iterable[str],
        stage: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Move every task of a job (or stage) in ``from_states`` to ``state``; returns how many.

        One statement, for moves of whole jobs: cancel (queued and running to cancelled) or
        retry (failed to pending).
        """
        query = (
            sa.update(TASKS)
            .where(TASKS.c.job_id == job_id, TASKS.c.state.in_(list(from_states)))
            .values(state=str(state), reason=clip(reason), updated_at=time.time())
        )
        if stage is not None:
            query = query.where(TASKS.c.stage == stage)
        with self._writing(f"set tasks of job {job_id!r} {state}") as connection:
            return connection.execute(query).rowcount

    def record_runs(self, task_runs: Iterable[TaskRun]) -> RunsApplied:
        """Apply finished runs to their tasks, idempotently (the rules are in ``runs``).

        A task's first success is recorded once; a later run of a succeeded task only adds
        to its ``duplicate_runs`` and its cost; the same run reported twice changes nothing.
        """
        outcome: dict[str, list[str]] = {}
        for batch in self._batches(task_runs):
            with self._writing("record task runs") as connection:
                keys = [(r.job, r.stage, r.part) for r in batch]
                stored = {
                    key: runs.Stored(**row)
                    for key, row in _locked_tasks(connection, keys, _RUN_STATE).items()
                }
                prices = node_prices(connection, {run.node for run in batch})
                plan = runs.plan(batch, stored, time.time(), prices)
                update_rows(connection, TASKS, [_with_key(k, v) for k, v in plan.updates.items()])
                now = time.time()
                update_rows(
                    connection,
                    TASKS,
                    [
                        _with_key(key, {**values, "updated_at": now})
                        for key, values in plan.counted.items()
                    ],
                )
                if plan.unpriced:
                    connection.execute(sa.insert(UNPRICED_RUNS), plan.unpriced)
            for kind, ids in plan.outcome.items():
                outcome.setdefault(kind, []).extend(ids)
        return RunsApplied(**{kind: tuple(ids) for kind, ids in outcome.items()})

    def set_job_state(
        self,
        job_id: str,
        state: str,
        reason: str | None = None,
        *,
        started_at: float | None = None,
        finished_at: float | None = None,
        reopen: bool = False,
    ) -> bool:
        """Set a job's state and reason (and start or finish time if given); False if unknown.

        ``reopen`` clears the finish time: the job runs again (a retry).
        """
        values: dict[str, Any] = {"state": str(state), "reason": clip(reason)}
        values["updated_at"] = time.time()
        if started_at is not None:
            values["started_at"] = started_at
        if finished_at is not None or reopen:
            values["finished_at"] = finished_at
        with self._writing(f"set job {job_id!r} {state}") as connection:
            query = sa.update(JOBS).where(JOBS.c.id == job_id).values(values)
            return connection.execute(query).rowcount > 0

    def set_stage_state(
        self,
        job_id: str,
        stage: str,
        state: str,
        reason: str | None = None,
        *,
        started_at: float | None = None,
        finished_at: float | None = None,
        reopen: bool = False,
    ) -> bool:
        """Set a stage's state and reason (and start or finish time); False if unknown.

        ``reopen`` clears the finish time: the stage runs again (a retry).
        """
        values: dict[str, Any] = {"state": str(state), "reason": clip(reason)}
        if started_at is not None:
            values["started_at"] = started_at
        if finished_at is not None or reopen:
            values["finished_at"] = finished_at
        query = (
            sa.update(STAGES)
            .where(STAGES.c.job_id == job_id, STAGES.c.name == stage)
            .values(values)
        )
        with self._writing(f"set stage {job_id}/{stage} {state}") as connection:
            return connection.execute(query).rowcount > 0

    def delete_job(self, job_id: str) -> bool:
        """Delete a job with its stages and tasks; False if there was no such job."""
        with self._writing(f"delete job {job_id!r}") as connection:
            return connection.execute(sa.delete(JOBS).where(JOBS.c.id == job_id)).rowcount > 0


def _locked_tasks(
    connection: Connection, keys: Iterable[runs.Key], columns: Sequence[str]
) -> dict[runs.Key, dict[str, Any]]:
    """The ``columns`` of the tasks that exist among ``keys``, locked until the commit."""
    groups: dict[tuple[str, str], set[int]] = {}
    for job, stage, part in keys:
        groups.setdefault((job, stage), set()).add(part)
    found: dict[runs.Key, dict[str, Any]] = {}
    # Per (job, stage) with ``part IN (...)``: every database finds those by primary key,
    # which MariaDB does not promise for a row-value IN.
    # Sorted, so concurrent writers take row locks in one order and never deadlock.
    for (job, stage), parts in sorted(groups.items()):
        # The parts inline: a statement that differs each time is planned for its values
        # (psycopg would prepare a repeated one, and PostgreSQL's generic plan for a long
        # IN list over freshly inserted tasks is ten times slower).
        in_parts: sa.BindParameter[list[int]] = sa.bindparam(
            "parts", sorted(parts), expanding=True, literal_execute=True
        )
        query = (
            sa.select(TASKS.c.part, *(TASKS.c[column] for column in columns))
            .where(TASKS.c.job_id == job, TASKS.c.stage == stage, TASKS.c.part.in_(in_parts))
            # Row locks on PostgreSQL and MySQL; SQLite's BEGIN IMMEDIATE already excludes
            # every other writer.
            .with_for_update()
        )
        for row in connection.execute(query).mappings():
            found[(job, stage, row["part"])] = {column: row[column] for column in columns}
    return found


def _with_key(key: runs.Key, values: dict[str, Any]) -> dict[str, Any]:
    job, stage, part = key
    return {"job_id": job, "stage": stage, "part": part, **values}


def _job_row(job: NewJob, now: float) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "state": str(job.state),
        "reason": clip(job.reason),
        "priority": job.priority,
        "spec": job.spec,
        "created_at": now if job.created_at is None else job.created_at,
        "start_at": job.start_at,
        "deadline": job.deadline,
        "started_at": None,
        "finished_at": None,
        "updated_at": now,
    }


def _stage_row(job: NewJob, stage: NewStage) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "name": stage.name,
        "index": stage.index,
        "handler": stage.handler,
        "params": stage.params,
        "node_class": stage.node_class,
        "mode": str(stage.mode),
        "state": str(stage.state),
        "reason": clip(stage.reason),
        "started_at": None,
        "finished_at": None,
    }


def _task_row(
    operation: str, job_id: str, task: NewTask, stages: set[str] | None, now: float
) -> dict[str, Any]:
    if stages is not None and task.stage not in stages:
        raise StoreError(f"{operation}: task part {task.part} names unknown stage {task.stage!r}")
    if task.part < 0:
        raise StoreError(f"{operation}: task part {task.part} is negative")
    return {
        "job_id": job_id,
        "stage": task.stage,
        "part": task.part,
        "state": str(task.state),
        "reason": clip(task.reason),
        "inputs": task.inputs,
        "outputs": [],
        "attempts": 0,
        "node_id": None,
        "worker": None,
        "error": None,
        "failed_nodes": [],
        "result": None,
        "queued_at": task.queued_at,
        "started_at": None,
        "finished_at": None,
        "queue_wait_s": 0.0,
        "fetch_s": 0.0,
        "compute_s": 0.0,
        "upload_s": 0.0,
        "cpu_s": 0.0,
        "bytes_in": 0,
        "bytes_out": 0,
        "duplicate_runs": 0,
        "updated_at": now,
    }
