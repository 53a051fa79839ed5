"""What goes into the store and what comes out: small frozen records.

Writes take ``New*`` records, task state changes (:class:`TaskUpdate`), finished runs
(:class:`TaskRun`) and heartbeats (:class:`NodeBeat`); reads return ``*View`` records, plain
values detached from any database session, safe to keep and to pass between threads.
JSON fields hold JSON values (dicts, lists, strings, numbers, booleans, None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from batchfarm.actors.backends.store.models import JobState, StageMode, StageState, TaskState


def task_id(job: str, stage: str, part: int) -> str:
    """``<job>/<stage>/<part>``: a task's id, also the prefix of its outputs' keys."""
    return f"{job}/{stage}/{part}"


# ---------------------------------------------------------------------------------------
# Writes


@dataclass(frozen=True)
class NewStage:
    """A stage of a job being created."""

    name: str
    #: 0 for the first stage.
    index: int
    handler: str
    params: dict[str, Any] = field(default_factory=dict)
    node_class: str = "default"
    mode: str = StageMode.CHAIN
    state: str = StageState.PENDING
    reason: str | None = None


@dataclass(frozen=True)
class NewJob:
    """A job to create, with its stages."""

    id: str
    stages: Sequence[NewStage]
    name: str = ""
    priority: int = 0
    spec: dict[str, Any] = field(default_factory=dict)
    state: str = JobState.PENDING
    reason: str | None = None
    start_at: float | None = None
    deadline: float | None = None
    #: When the job was accepted; None for now.
    created_at: float | None = None


@dataclass(frozen=True)
class NewTask:
    """A task to create in a stage of a job."""

    stage: str
    part: int
    inputs: Any = field(default_factory=list)
    state: str = TaskState.PENDING
    reason: str | None = None
    queued_at: float | None = None


@dataclass(frozen=True)
class TaskUpdate:
    """A task's move to a new state (queued, running, cancelled, ...).

    ``reason`` replaces the task's reason (None clears it); the other optional fields keep
    the stored value when None. A succeeded task is never moved: only a :class:`TaskRun`
    reaches it, and counts as a duplicate.
    """

    job: str
    stage: str
    part: int
    state: str
    reason: str | None = None
    node: str | None = None
    worker: int | None = None
    attempts: int | None = None
    queued_at: float | None = None
    started_at: float | None = None
    #: The nodes its runs failed on (``[]`` forgets them, as a retry of the job does).
    failed_nodes: Sequence[str] | None = None


@dataclass(frozen=True)
class TaskRun:
    """One finished run of a task, as its completion event reports it."""

    job: str
    stage: str
    part: int
    ok: bool
    node: str
    worker: int
    #: The queue's receive count for this run (1 the first time).
    attempt: int
    started_at: float
    finished_at: float
    #: What the run wrote (JSON, usually a list of output references).
    outputs: Any = field(default_factory=list)
    #: Why it failed (type, message, stderr tail, permanent), for a failed run.
    error: dict[str, Any] | None = None
    #: A failure that will not be retried (permanent, or out of attempts).
    final: bool = False
    queue_wait_s: float = 0.0
    fetch_s: float = 0.0
    compute_s: float = 0.0
    upload_s: float = 0.0
    cpu_s: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    #: What the handler returned about its output (JSON object), for a successful run.
    result: dict[str, Any] | None = None
    #: Why the task ends up in its state, when the manager has more to say than the error
    #: (``poison: failed on nodes a and b``); stored as the task's reason.
    reason: str | None = None
    #: A run that stopped without an outcome (lease lost, stopped by a pause, a drain or a
    #: cancel): it adds its cost to its task and changes nothing else (``ok`` is False).
    abandoned: bool = False

    @property
    def task_id(self) -> str:
        """The id of the task this run belongs to."""
        return task_id(self.job, self.stage, self.part)


@dataclass(frozen=True)
class RunsApplied:
    """What :meth:`Store.record_runs` made of a batch of runs, as task ids."""

    #: Tasks that succeeded for the first time: the ones whose stage may now advance.
    succeeded: tuple[str, ...] = ()
    #: Tasks that failed for good.
    failed: tuple[str, ...] = ()
    #: Tasks that failed and will be retried.
    retrying: tuple[str, ...] = ()
    #: Runs of tasks that had already succeeded: counted once, their re-run counted.
    duplicates: tuple[str, ...] = ()
    #: The same run reported again (a redelivered completion): nothing changed.
    redelivered: tuple[str, ...] = ()
    #: Runs of cancelled tasks, or failures older than the task's final failure.
    ignored: tuple[str, ...] = ()
    #: Abandoned runs counted for the first time: their cost added, nothing else changed.
    abandoned: tuple[str, ...] = ()
    #: Runs of tasks the store does not know.
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerBeat:
    """One worker actor in a node's heartbeat."""

    index: int
    pid: int
    state: str
    core: int | None = None
    task: str | None = None
    done: int = 0
    failed: int = 0
    cpu_percent: float = 0.0
    rss_bytes: int = 0


@dataclass(frozen=True)
class NodeBeat:
    """A node's heartbeat: itself and its workers at one time."""

    node: str
    time: float
    state: str
    node_class: str = "default"
    host: str = ""
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    workers: Sequence[WorkerBeat] = ()
    #: Dollars per node-hour (see ``nodes.price_per_hour``); None where unknown.
    price_per_hour: float | None = None
    #: From the EC2 instance metadata service; empty off EC2.
    instance_type: str = ""
    zone: str = ""
    lifecycle: str = ""


@dataclass(frozen=True)
class NewSample:
    """One metric sample to store."""

    time: float
    name: str
    value: float
    node: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NewScalingEvent:
    """One autoscaler decision to record, with the inputs it was made from."""

    time: float
    node_class: str
    provider: str
    desired_before: int
    desired_after: int
    backlog: int
    rate: float
    nodes: int
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Reads (field names are the tables' column names)


@dataclass(frozen=True)
class JobView:
    """A job as stored."""

    id: str
    name: str
    state: str
    reason: str | None
    priority: int
    spec: dict[str, Any]
    created_at: float
    start_at: float | None
    deadline: float | None
    started_at: float | None
    finished_at: float | None
    updated_at: float


@dataclass(frozen=True)
class StageView:
    """A stage as stored."""

    job_id: str
    name: str
    index: int
    handler: str
    params: dict[str, Any]
    node_class: str
    mode: str
    state: str
    reason: str | None
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class StageCounts:
    """A stage with its tasks counted by state and its totals (for progress and stats)."""

    stage: StageView
    #: Tasks per state; states without tasks are absent.
    counts: dict[str, int]
    cpu_s: float
    compute_s: float
    bytes_in: int
    bytes_out: int
    duplicate_runs: int
    first_started_at: float | None
    last_finished_at: float | None

    @property
    def total(self) -> int:
        """All tasks of the stage."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class TaskView:
    """A task as stored."""

    job_id: str
    stage: str
    part: int
    state: str
    reason: str | None
    inputs: Any
    outputs: Any
    attempts: int
    node_id: str | None
    worker: int | None
    error: dict[str, Any] | None
    #: The nodes its runs failed on, each once (None in rows older than the column).
    failed_nodes: list[str] | None
    #: What the handler of the succeeded run returned (None for nothing).
    result: dict[str, Any] | None
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    queue_wait_s: float
    fetch_s: float
    compute_s: float
    upload_s: float
    cpu_s: float
    bytes_in: int
    bytes_out: int
    duplicate_runs: int
    updated_at: float

    @property
    def task_id(self) -> str:
        """``<job>/<stage>/<part>``."""
        return task_id(self.job_id, self.stage, self.part)


@dataclass(frozen=True)
class NodeView:
    """A node as stored."""

    id: str
    node_class: str
    host: str
    state: str
    reason: str | None
    cordoned: bool
    cordon_reason: str | None
    first_seen: float
    last_heartbeat: float
    cpu_percent: float
    rss_bytes: int
    workers: int
    price_per_hour: float | None = None
    instance_type: str | None = None
    zone: str | None = None
    lifecycle: str | None = None


@dataclass(frozen=True)
class WorkerView:
    """A worker actor as its node last reported it."""

    node_id: str
    index: int
    pid: int
    core: int | None
    state: str
    task: str | None
    done: int
    failed: int
    cpu_percent: float
    rss_bytes: int
    updated_at: float


@dataclass(frozen=True)
class SampleView:
    """A stored metric sample."""

    id: int
    time: float
    node_id: str | None
    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class ScalingEventView:
    """A stored autoscaler decision."""

    id: int
    time: float
    node_class: str
    provider: str
    desired_before: int
    desired_after: int
    backlog: int
    rate: float
    nodes: int
    reason: str
    details: dict[str, Any]
