"""The API's JSON shapes of the store's views: progress, ETA, throughput, times, and ``why``.

Pure functions of what the store returned and of ``now``: no I/O here. ``why`` is a human
sentence saying why something that is not running is not running ("waiting for its start
time (2026-12-03T12:00:00Z)", "waiting for stage 'encode'", "waiting for a node: none is
up"), or None for work that runs or is over. The same reasoning, as a short fixed word, is
the ``reason`` label of ``batchfarm_tasks_waiting`` (:data:`WAIT_REASONS`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from batchfarm.actors.api.deadline import ClassOutlook, deadline_status
from batchfarm.actors.backends.store import (
    JobState,
    JobView,
    NodeState,
    NodeView,
    StageCounts,
    StageMode,
    StageState,
    StageView,
    TaskState,
    TaskView,
    WorkerView,
)
from batchfarm.actors.manager.spec import PRIORITIES

#: Task states a task does not leave.
FINISHED = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)
#: Job and stage states that are over.
OVER = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
#: Every value of ``batchfarm_tasks_waiting``'s ``reason`` label.
WAIT_REASONS = (
    "start_time",
    "job_paused",
    "not_queued",
    "no_node",
    "nodes_unavailable",
    "workers_busy",
    "queue",
    "retry_backoff",
)
#: Node states of a node that reports (it may take work once up and not cordoned).
PRESENT = (NodeState.UP, NodeState.PAUSED, NodeState.DRAINING)
_PRIORITY_NAMES = {rank: name for name, rank in PRIORITIES.items()}


def iso(ts: float | None) -> str | None:
    """``2026-12-03T12:00:00Z`` for a time in seconds since the epoch."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Fleet:
    """What the grid's nodes can take now, by node class: for the ``why`` of queued work."""

    #: Nodes that report (up, paused or draining), cordoned or not.
    present: Mapping[str, int]
    #: Nodes up and not cordoned: the ones that take new tasks.
    usable: Mapping[str, int]
    #: Idle and busy workers on usable nodes.
    idle: Mapping[str, int]
    busy: Mapping[str, int]

    @classmethod
    def of(cls, nodes: Sequence[NodeView], workers: Sequence[WorkerView]) -> Fleet:
        """The fleet as the store's nodes and workers describe it."""
        present = Counter(n.node_class for n in nodes if n.state in PRESENT)
        usable_nodes = {n.id: n.node_class for n in nodes if _usable(n)}
        idle: Counter[str] = Counter()
        busy: Counter[str] = Counter()
        for worker in workers:
            node_class = usable_nodes.get(worker.node_id)
            if node_class is not None and worker.state in ("idle", "busy"):
                (idle if worker.state == "idle" else busy)[node_class] += 1
        return cls(present, Counter(usable_nodes.values()), idle, busy)

    def wait(self, node_class: str) -> tuple[str, str]:
        """Why a queued task of ``node_class`` waits: a label and a sentence."""
        nodes = "a node" if node_class == "default" else f"a node of class '{node_class}'"
        if not self.present.get(node_class):
            return "no_node", f"waiting for {nodes}: none is up"
        if not self.usable.get(node_class):
            return "nodes_unavailable", f"waiting for {nodes}: each is paused, draining or cordoned"
        if not self.idle.get(node_class):
            busy = self.busy.get(node_class, 0)
            why = f"all {busy} are busy" if busy else "none is ready yet"
            return "workers_busy", f"waiting for a free worker: {why}"
        return "queue", "waiting in the queue for an idle worker to take it"


def _usable(node: NodeView) -> bool:
    return node.state == NodeState.UP and not node.cordoned


# ---------------------------------------------------------------------------------------
# Jobs and stages


def expected_totals(stages: Sequence[StageCounts]) -> list[int]:
    """Each stage's known task count: its tasks, or the parts it will have when they come.

    A chained stage gets one task per part of the stage before; a fan-in stage gets one.
    """
    totals: list[int] = []
    for counts in stages:
        known = counts.total
        if totals:
            coming = 1 if counts.stage.mode == StageMode.FAN_IN else totals[-1]
            known = max(known, coming)
        totals.append(known)
    return totals


def _finished(counts: Mapping[str, int]) -> int:
    return sum(counts.get(state, 0) for state in FINISHED)


def _rate(done: int, start: float | None, end: float | None) -> float | None:
    if start is None or end is None or done == 0 or end <= start:
        return None
    return done / (end - start)


def _wall(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(0.0, end - start)


def stage_view(
    counts: StageCounts,
    total: int,
    *,
    job: JobView,
    previous: str | None,
    fleet: Fleet,
    now: float,
    cost: float = 0.0,
) -> dict[str, Any]:
    """One stage as the API shows it (``previous`` is the stage before, if any).

    ``cost`` is what its tasks' runs cost, in dollars (see the store's cost queries).
    """
    stage = counts.stage
    finished = _finished(counts.counts)
    start = stage.started_at or counts.first_started_at
    running = stage.state == StageState.RUNNING
    end = stage.finished_at or (now if running else counts.last_finished_at)
    throughput = _rate(finished, start, end)
    eta = (total - finished) / throughput if running and throughput else None
    return {
        "name": stage.name,
        "index": stage.index,
        "handler": stage.handler,
        "mode": stage.mode,
        "node_class": stage.node_class,
        "state": stage.state,
        "reason": stage.reason,
        "why": stage_why(counts, job, previous, fleet),
        "tasks": {"total": counts.total, **counts.counts},
        "total": total,
        "done": counts.counts.get(TaskState.SUCCEEDED, 0),
        "failed": counts.counts.get(TaskState.FAILED, 0),
        "progress": finished / total if total else float(stage.state in OVER),
        "wall_s": _wall(start, end),
        "cpu_s": counts.cpu_s,
        "compute_s": counts.compute_s,
        "bytes_in": counts.bytes_in,
        "bytes_out": counts.bytes_out,
        "duplicate_runs": counts.duplicate_runs,
        "cost_dollars": cost,
        "throughput": throughput,
        "eta_s": eta,
        "started_at": stage.started_at,
        "finished_at": stage.finished_at,
    }


def stage_why(counts: StageCounts, job: JobView, previous: str | None, fleet: Fleet) -> str | None:
    """Why a stage that runs nothing waits; None when it runs tasks or is over."""
    stage, tasks = counts.stage, counts.counts
    if stage.state == StageState.PENDING:
        if job.state == JobState.SCHEDULED:
            return f"waiting for its job's start time ({iso(job.start_at)})"
        if job.state == JobState.PAUSED:
            return "paused"
        return f"waiting for stage '{previous}'" if previous else "waiting to be queued"
    if stage.state != StageState.RUNNING or tasks.get(TaskState.RUNNING):
        return None
    if tasks.get(TaskState.QUEUED):
        return fleet.wait(stage.node_class)[1]
    if tasks.get(TaskState.RETRYING):
        return "waiting to run failed tasks again"
    if tasks.get(TaskState.PENDING):
        return "waiting to be queued"
    return f"waiting for stage '{previous}'" if previous else None


@dataclass(frozen=True)
class Extras:
    """What a job view adds to the counts: costs, and the autoscaler's word on deadlines."""

    #: Stage name -> dollars its tasks' runs cost.
    costs: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: Node class -> the autoscaler's latest outlook on its deadlines.
    outlooks: Mapping[str, ClassOutlook] = dataclasses.field(default_factory=dict)


_NO_EXTRAS = Extras()


def job_view(
    job: JobView,
    stages: Sequence[StageCounts],
    fleet: Fleet,
    now: float,
    extras: Extras = _NO_EXTRAS,
) -> dict[str, Any]:
    """A job as the API lists it, with its progress, ETA, throughput, cost and deadline."""
    return _job(job, stages, fleet, now, extras)[0]


def job_detail(
    job: JobView,
    stages: Sequence[StageCounts],
    failures: Sequence[TaskView],
    fleet: Fleet,
    now: float,
    *,
    extras: Extras = _NO_EXTRAS,
) -> dict[str, Any]:
    """A job with its stages and its first failed tasks (``failures``)."""
    out, views = _job(job, stages, fleet, now, extras)
    out["stages"] = views
    out["failures"] = [failure_view(task) for task in failures]
    return out


def _job(
    job: JobView, stages: Sequence[StageCounts], fleet: Fleet, now: float, extras: Extras
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    totals = expected_totals(stages)
    views = [
        stage_view(
            counts,
            total,
            job=job,
            previous=stages[i - 1].stage.name if i else None,
            fleet=fleet,
            now=now,
            cost=extras.costs.get(counts.stage.name, 0.0),
        )
        for i, (counts, total) in enumerate(zip(stages, totals, strict=True))
    ]
    counts: Counter[str] = Counter()
    for stage in stages:
        counts.update(stage.counts)
    total = sum(totals)
    finished = _finished(counts)
    end = job.finished_at or (now if job.state not in OVER else None)
    throughput = _rate(finished, job.started_at, end)
    running = job.state == JobState.RUNNING
    eta = (total - finished) / throughput if running and throughput else None
    open_classes = sorted({s.stage.node_class for s in stages if s.stage.state not in OVER})
    out = {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "reason": job.reason,
        "why": job_why(job, stages, views),
        "priority": _PRIORITY_NAMES.get(job.priority, job.priority),
        "created_at": job.created_at,
        "start_at": job.start_at,
        "deadline": job.deadline,
        "deadline_status": deadline_status(job, eta, open_classes, extras.outlooks, now),
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "wall_s": _wall(job.started_at, end),
        "cpu_s": sum(stage.cpu_s for stage in stages),
        "tasks": {"total": sum(counts.values()), **counts},
        "total": total,
        "done": counts.get(TaskState.SUCCEEDED, 0),
        "failed": counts.get(TaskState.FAILED, 0),
        "progress": finished / total if total else float(job.state in OVER),
        "eta_s": eta,
        "throughput": throughput,
        "cost_dollars": sum(extras.costs.values()),
    }
    return out, views


def job_why(
    job: JobView, stages: Sequence[StageCounts], views: Sequence[Mapping[str, Any]]
) -> str | None:
    """Why a job runs nothing: its start time, a pause, or its first waiting stage's why."""
    if job.state == JobState.SCHEDULED:
        return f"waiting for its start time ({iso(job.start_at)})"
    if job.state == JobState.PENDING:
        return job.reason or "waiting to be queued"
    if job.state == JobState.PAUSED:
        return f"paused: {job.reason}" if job.reason and job.reason != "paused" else "paused"
    if job.state != JobState.RUNNING:
        return None
    if any(stage.counts.get(TaskState.RUNNING) for stage in stages):
        return None
    for view in views:
        if view["state"] not in OVER and view["why"]:
            return str(view["why"])
    return None


def failure_view(task: TaskView) -> dict[str, Any]:
    """A failed task as a job's ``failures`` lists it."""
    return {"task": task.task_id, "stage": task.stage, "part": task.part, "error": task.error}


# ---------------------------------------------------------------------------------------
# Tasks


def task_view(
    task: TaskView, job: JobView, stage: StageView | None, fleet: Fleet, cost: float = 0.0
) -> dict[str, Any]:
    """A task: every stored field, its id, why it waits, and its run's cost in dollars."""
    out = dataclasses.asdict(task)
    out["id"] = task.task_id
    out["why"] = task_why(task, job, stage, fleet)
    out["cost_dollars"] = cost
    return out


def task_why(task: TaskView, job: JobView, stage: StageView | None, fleet: Fleet) -> str | None:
    """Why a task that is not running waits; None when it runs or is over."""
    if task.state in (TaskState.PENDING, TaskState.QUEUED) and job.state == JobState.PAUSED:
        return "paused"
    if task.state == TaskState.PENDING:
        if job.state == JobState.SCHEDULED:
            return f"waiting for its job's start time ({iso(job.start_at)})"
        return "waiting to be queued"
    if task.state == TaskState.QUEUED:
        return fleet.wait(stage.node_class if stage else "default")[1]
    if task.state == TaskState.RETRYING:
        message = (task.error or {}).get("message")
        why = f"waiting to run again after attempt {task.attempts} failed"
        return f"{why}: {message}" if message else why
    return None


def wait_label(job_state: str, node_class: str, state: str, fleet: Fleet) -> str:
    """The ``reason`` label of tasks in ``state`` waiting in a job and node class."""
    if job_state == JobState.PAUSED:
        return "job_paused"
    if state == TaskState.PENDING:
        return "start_time" if job_state == JobState.SCHEDULED else "not_queued"
    if state == TaskState.RETRYING:
        return "retry_backoff"
    return fleet.wait(node_class)[0]


# ---------------------------------------------------------------------------------------
# Nodes


def node_view(node: NodeView, workers: Sequence[WorkerView]) -> dict[str, Any]:
    """A node with its workers (their list, and how many are busy)."""
    out = dataclasses.asdict(node)
    out["workers"] = [dataclasses.asdict(worker) for worker in workers]
    out["busy"] = sum(worker.state == "busy" for worker in workers)
    return out
