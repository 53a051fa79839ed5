"""The records batchfarm's processes exchange: small, frozen, typed, versioned.

Two families travel two ways (see ``batchfarm.actors.codec``):

- On the data plane, through a task queue, as JSON text any SQS client can read or write:
  :class:`TaskBody` (a task to run) and :class:`Completion` (what became of it), or
  :class:`AbandonedRun` (a run that stopped without an outcome).
- On the control plane, over ZeroMQ, as msgpack frames: :class:`Heartbeat`,
  :class:`Metrics` and :class:`Command`.

Every record names its ``KIND`` and ``VERSION``. Within a version, fields are only ever
added, each with a default, and decoders ignore fields they do not know; anything else is a
new version, which older decoders reject by name.

A list of records marked :data:`COLUMNAR` travels column-wise in frames (one list per field,
so a 64-worker heartbeat decodes in a few C calls); decoded, it is a sequence that builds its
records only when they are read one by one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

#: Job ids and stage names: what may appear in a task id and in output keys.
IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def task_parts(task: str | None) -> tuple[str, str, int] | None:
    """``(job, stage, part)`` of a task id ``job/stage/part``; None if ``task`` is not one."""
    job, _, rest = (task or "").partition("/")
    stage, _, part = rest.rpartition("/")
    if job and stage and part.isdigit():
        return job, stage, int(part)
    return None


def check_task_ids(job: str, stage: str, part: int) -> str | None:
    """Return what is wrong with a task's job id, stage name and part number, or None."""
    for name, value in (("job", job), ("stage", stage)):
        if not IDENT.fullmatch(value):
            return (
                f"{name} is {value!r}, expected 1 to 64 letters, digits, '_', '.' or '-'"
                " starting with a letter or digit"
            )
    if part < 0:
        return f"part is {part}, expected 0 or more"
    return None


@dataclass(frozen=True)
class Record:
    """Base of every message record."""

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def check(self) -> str | None:
        """Return what is wrong beyond the field types (decoders call it), or None."""
        return None


# ---------------------------------------------------------------------------------------
# Data plane: queue bodies (JSON)


@dataclass(frozen=True)
class TaskBody(Record):
    """One task to run: the body of a message in a task queue (format version 1).

    The task id is ``<job>/<stage>/<part>`` and the task writes its outputs under
    ``jobs/<job>/<stage>/<part>/``, so a task that runs twice writes the same objects.
    """

    KIND: ClassVar[str] = "task"

    job: str
    stage: str
    part: int
    handler: str
    #: Blob keys of the task's inputs.
    inputs: list[str] = field(default_factory=list)
    #: The handler's parameters (JSON values). Large ones travel by ``params_ref``.
    params: dict[str, Any] = field(default_factory=dict)
    #: Blob key of a JSON object merged over ``params``, for parameters too large for a body.
    params_ref: str | None = None
    #: Attempts before the failure is final (transient errors only).
    max_attempts: int = 3
    #: Seconds the handler may run before it is stopped; None for the config's default.
    time_limit_s: float | None = None
    #: Seconds before a failed run is retried, doubling per attempt; None for the config's.
    retry_backoff_s: float | None = None
    #: When the manager enqueued the task, in seconds since the epoch.
    enqueued_at: float = 0.0

    @property
    def task_id(self) -> str:
        """``<job>/<stage>/<part>``: the task's stable identity."""
        return f"{self.job}/{self.stage}/{self.part}"

    def check(self) -> str | None:
        """Ids must be usable in keys; limits must be positive."""
        problem = check_task_ids(self.job, self.stage, self.part)
        if problem:
            return problem
        if self.max_attempts < 1:
            return f"max_attempts is {self.max_attempts}, expected at least 1"
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            return f"time_limit_s is {self.time_limit_s}, expected a positive number"
        if self.retry_backoff_s is not None and not 0 <= self.retry_backoff_s <= 43_200:
            return f"retry_backoff_s is {self.retry_backoff_s}, expected 0 to 43200"
        return None

    @property
    def output_prefix(self) -> str:
        """Where the task writes its outputs in the blob store."""
        return f"jobs/{self.task_id}/"


def cancel_marker(job: str) -> str:
    """The blob key whose presence says the job is cancelled.

    Cancellation is durable: workers look for this object before and while they run a task,
    so a node that missed the manager's message still stops the job's tasks.
    """
    return f"jobs/{job}/control/cancelled"


def poison_marker(job: str, stage: str, part: int) -> str:
    """The blob key whose presence says a task is poison: its failure is final.

    The manager writes it (text: the time it decided, in seconds since the epoch, then the
    reason) when a task has failed on two different nodes. A worker that receives the task
    again (a retry of the same message) drops it unrun; a body enqueued after the marker (a
    ``retry`` of the job) runs.
    """
    return f"jobs/{job}/control/poison/{stage}/{part}"


@dataclass(frozen=True)
class OutputRef(Record):
    """One object a task wrote."""

    key: str
    size: int
    sha256: str | None = None


@dataclass(frozen=True)
class ErrorInfo(Record):
    """Why a task failed: enough to act on without the worker's logs."""

    type: str
    message: str
    #: The last lines the handler's tool wrote to stderr, if it ran one.
    stderr_tail: str = ""
    #: True for errors a retry cannot fix (bad input, unknown parameter).
    permanent: bool = False


@dataclass(frozen=True)
class Timings(Record):
    """Where a task's time went, in seconds."""

    queue_wait_s: float = 0.0
    fetch_s: float = 0.0
    compute_s: float = 0.0
    upload_s: float = 0.0


@dataclass(frozen=True)
class Completion(Record):
    """What became of one run of a task: the body of a message in the completion queue."""

    KIND: ClassVar[str] = "completion"

    job: str
    stage: str
    part: int
    ok: bool
    node: str
    worker: int
    #: The task message's receive count for this run (1 on the first run).
    attempt: int
    started_at: float
    finished_at: float
    outputs: list[OutputRef] = field(default_factory=list)
    error: ErrorInfo | None = None
    #: True when the failure is final (permanent, or out of attempts).
    final: bool = False
    timings: Timings = field(default_factory=Timings)
    cpu_s: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    #: What the handler returned about its output (JSON values).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def task_id(self) -> str:
        """``<job>/<stage>/<part>`` of the task this completes."""
        return f"{self.job}/{self.stage}/{self.part}"

    def check(self) -> str | None:
        """Ids must be those of a task; the attempt counts from 1."""
        if self.attempt < 1:
            return f"attempt is {self.attempt}, expected at least 1"
        return check_task_ids(self.job, self.stage, self.part)


@dataclass(frozen=True)
class AbandonedRun(Completion):
    """A run that stopped without an outcome, reported for its node time alone.

    A worker sends one for a run it started but did not finish: it lost its lease, or a
    forced pause, a drain or a cancelled job stopped it. The manager charges the run's
    seconds to its task and changes nothing else. It is a kind of its own, not a flag on
    :class:`Completion`, so that a manager older than it refuses it (dead-letters it as an
    unknown kind) instead of ignoring the flag and reading the run as a failure.
    """

    KIND: ClassVar[str] = "abandoned"

    def check(self) -> str | None:
        """A completion's checks; and it has no outcome: not ok, no error, not final."""
        if self.ok or self.error is not None or self.final or self.outputs:
            return "an abandoned run has no outcome: ok, error, final and outputs are unset"
        return super().check()


# ---------------------------------------------------------------------------------------
# Control plane: ZeroMQ frames (msgpack)

#: Field metadata: the codec sends this list of records column-wise in frames.
COLUMNAR = {"columnar": True}

WorkerState = Literal["starting", "idle", "busy", "paused", "draining", "stopped", "failed"]
NodeState = Literal["up", "paused", "draining", "stopping"]


@dataclass(frozen=True)
class WorkerStatus(Record):
    """One worker actor as its node sees it; workers send it to their supervisor too."""

    KIND: ClassVar[str] = "worker"

    index: int
    pid: int
    state: WorkerState
    core: int | None = None
    task: str | None = None
    #: Fraction of the current task done, 0 to 1, when the handler reports it.
    progress: float | None = None
    done: int = 0
    failed: int = 0
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: Receipt handles of the messages the worker holds, so that its supervisor can hand
    #: them back at once if the worker dies.
    receipts: list[str] = field(default_factory=list)
    #: When the current task's run started (its handler, wall clock) and which run of it this
    #: is, so that its supervisor can report it abandoned if the worker dies; None and 0
    #: while no handler runs.
    started_at: float | None = None
    attempt: int = 0


@dataclass(frozen=True)
class Heartbeat(Record):
    """A node's periodic report of itself and its workers."""

    KIND: ClassVar[str] = "heartbeat"
    #: 2: workers travel column-wise in frames (see :data:`COLUMNAR`).
    VERSION: ClassVar[int] = 2

    node: str
    sent_at: float
    state: NodeState
    node_class: str = "default"
    host: str = ""
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    workers: Sequence[WorkerStatus] = field(default_factory=list, metadata=COLUMNAR)
    #: Telemetry frames dropped because the manager was away and the buffer was full.
    dropped: int = 0
    #: What the node read from the EC2 instance metadata service, for its price: instance
    #: type, availability zone and ``spot`` or ``on-demand``; empty off EC2.
    instance_type: str = ""
    zone: str = ""
    lifecycle: str = ""


@dataclass(frozen=True)
class Sample(Record):
    """One metric sample: a name, its labels (a small fixed set) and a value."""

    name: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Metrics(Record):
    """A batch of metric samples from one node."""

    KIND: ClassVar[str] = "metrics"
    #: 2: samples travel column-wise in frames (see :data:`COLUMNAR`).
    VERSION: ClassVar[int] = 2

    node: str
    sent_at: float
    samples: Sequence[Sample] = field(default_factory=list, metadata=COLUMNAR)


CommandName = Literal["drain", "pause", "resume", "reload", "resize", "cancel", "stop"]


@dataclass(frozen=True)
class Command(Record):
    """A steering command from the manager (or the CLI) to a node."""

    KIND: ClassVar[str] = "command"

    name: CommandName
    #: Command id, echoed in acknowledgements.
    id: str = ""
    #: Arguments: ``force`` for pause, ``workers`` for resize, ``job`` for cancel, ...
    args: dict[str, Any] = field(default_factory=dict)


#: Records that travel on their own (the others are nested in these), by kind.
TOP_LEVEL: dict[str, type[Record]] = {
    cls.KIND: cls
    for cls in (TaskBody, Completion, AbandonedRun, Heartbeat, Metrics, Command, WorkerStatus)
}
