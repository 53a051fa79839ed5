"""The analytics store's tables, as typed SQLAlchemy 2 declarative models.

The models are the schema's reference; the Alembic migrations in ``migrations/versions``
build it, and a test checks that the two agree on every supported database.

Conventions, so one schema fits SQLite, PostgreSQL and MySQL/MariaDB alike:

- Times are seconds since the epoch in ``Double`` columns (MySQL's ``FLOAT`` is 4 bytes and
  would round a timestamp to minutes).
- States are short strings, not database enums: a new state is then a code change, not a
  schema migration, and nodes may report states a manager does not know yet.
- Indexed strings stay at or under 191 characters, and composite keys under 768, so that
  InnoDB can index them in utf8mb4 (4 bytes a character) under its 767- and 3072-byte limits.
- MySQL tables use ``utf8mb4_bin``: ids are case-sensitive (``Job`` and ``job`` are two jobs,
  as they are two S3 prefixes), and every character survives.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Longest job id and stage name (``messages.IDENT`` allows 64 characters).
IDENT_LEN = 64
#: Longest node id (an EC2 instance id, a host name).
NODE_ID_LEN = 128
#: Longest task id, ``<job>/<stage>/<part>``.
TASK_ID_LEN = 2 * IDENT_LEN + 12
#: Longest state name.
STATE_LEN = 16
#: Longest "why" text kept on a row (reasons are short sentences).
REASON_LEN = 255
#: Longest metric name.
METRIC_NAME_LEN = 128
#: Longest handler reference (``module:function`` or an entry point name).
HANDLER_LEN = 255

# Deterministic constraint names on every database, so later migrations can name what they
# alter or drop instead of guessing each backend's generated names.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Table options for MySQL/MariaDB (ignored elsewhere).
MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

# A BIGINT surrogate key everywhere but SQLite, where only INTEGER aliases the rowid and
# autoincrements (and is 64-bit anyway).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Python None is SQL NULL, not the JSON text 'null', so "no error" reads as NULL in SQL too.
NullableJSON = sa.JSON(none_as_null=True)


class JobState(StrEnum):
    """Where a job is in its life."""

    PENDING = "pending"  # accepted, not yet enqueued
    SCHEDULED = "scheduled"  # waiting for its start time
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StageState(StrEnum):
    """Where a stage is in its life."""

    PENDING = "pending"  # waiting for its previous stage or its job's start
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StageMode(StrEnum):
    """How a stage gets its tasks from the previous stage."""

    CHAIN = "chain"  # each completed part of the previous stage becomes a task of this one
    FAN_IN = "fan_in"  # one task, once every part of the previous stage is done
    FAN_OUT = "fan_out"  # one task per output of the previous stage, once all its parts are done


class TaskState(StrEnum):
    """Where a task is in its life."""

    PENDING = "pending"  # known, not yet in the queue
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"  # failed, another attempt will come through the queue
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # failed for good: permanent error or out of attempts
    CANCELLED = "cancelled"


class NodeState(StrEnum):
    """A node's state: the ones it reports in heartbeats, and the ones the manager infers."""

    UP = "up"
    PAUSED = "paused"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"  # stopped reporting after it said it was stopping
    LOST = "lost"  # stopped reporting without saying so


class Base(DeclarativeBase):
    """Declarative base of the store's models, with the shared naming convention."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """A batch job: a spec split into stages, each split into tasks."""

    __tablename__ = "jobs"
    __table_args__ = (
        # Listing jobs by state, newest first; finding due scheduled jobs.
        sa.Index(None, "state", "created_at"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(sa.String(IDENT_LEN), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(STATE_LEN))
    #: Why the job is not running, when it is not (waiting for its start time, paused, ...).
    reason: Mapped[str | None] = mapped_column(sa.String(REASON_LEN))
    #: Higher runs first.
    priority: Mapped[int] = mapped_column(sa.Integer)
    #: The job spec as submitted (JSON).
    spec: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    created_at: Mapped[float] = mapped_column(sa.Double)
    #: When the job may start; None to start at once.
    start_at: Mapped[float | None] = mapped_column(sa.Double)
    #: When the job should be done by (the autoscaler sizes the fleet for it).
    deadline: Mapped[float | None] = mapped_column(sa.Double)
    started_at: Mapped[float | None] = mapped_column(sa.Double)
    finished_at: Mapped[float | None] = mapped_column(sa.Double)
    updated_at: Mapped[float] = mapped_column(sa.Double)


class Stage(Base):
    """One stage of a job: a handler with its params, run over the stage's tasks."""

    __tablename__ = "stages"
    __table_args__ = (
        sa.UniqueConstraint("job_id", "index"),
        MYSQL_TABLE,
    )

    job_id: Mapped[str] = mapped_column(
        sa.String(IDENT_LEN), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(sa.String(IDENT_LEN), primary_key=True)
    #: 0 for the first stage; stage n+1 takes stage n's outputs.
    index: Mapped[int] = mapped_column(sa.Integer)
    handler: Mapped[str] = mapped_column(sa.String(HANDLER_LEN))
    params: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    #: The class of node the stage's tasks need (``default``, ``gpu``, ...).
    node_class: Mapped[str] = mapped_column(sa.String(IDENT_LEN))
    #: A :class:`StageMode`.
    mode: Mapped[str] = mapped_column(sa.String(STATE_LEN))
    state: Mapped[str] = mapped_column(sa.String(STATE_LEN))
    reason: Mapped[str | None] = mapped_column(sa.String(REASON_LEN))
    started_at: Mapped[float | None] = mapped_column(sa.Double)
    finished_at: Mapped[float | None] = mapped_column(sa.Double)


class Task(Base):
    """One part of a stage; its id ``<job>/<stage>/<part>`` is its primary key."""

    __tablename__ = "tasks"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["job_id", "stage"], ["stages.job_id", "stages.name"], ondelete="CASCADE"
        ),
        # Tasks of a job (or of one of its stages) in a state, and the counts per stage.
        sa.Index(None, "job_id", "state", "stage"),
        # What ran on a node (a lost node's running tasks, a bad node's failures).
        sa.Index(None, "node_id", "state"),
        MYSQL_TABLE,
    )

    job_id: Mapped[str] = mapped_column(sa.String(IDENT_LEN), primary_key=True)
    stage: Mapped[str] = mapped_column(sa.String(IDENT_LEN), primary_key=True)
    part: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(STATE_LEN))
    #: Why the task is not running, when it is waiting.
    reason: Mapped[str | None] = mapped_column(sa.String(REASON_LEN))
    #: Blob keys (or other JSON) the task reads.
    inputs: Mapped[Any] = mapped_column(sa.JSON)
    #: What the successful run wrote (JSON list of output references).
    outputs: Mapped[Any] = mapped_column(sa.JSON)
    #: Runs started so far (the queue's receive count of the latest run).
    attempts: Mapped[int] = mapped_column(sa.Integer)
    node_id: Mapped[str | None] = mapped_column(sa.String(NODE_ID_LEN))
    worker: Mapped[int | None] = mapped_column(sa.Integer)
    #: The latest failure (type, message, stderr tail, permanent), or None.
    error: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    #: The nodes its runs failed on, each once, oldest first (a task that failed on two
    #: nodes is poison); NULL in rows older than the column.
    failed_nodes: Mapped[list[str] | None] = mapped_column(NullableJSON)
    #: What the handler of the succeeded run returned (a probe's stream facts, say); NULL
    #: for none and in rows older than the column.
    result: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    queued_at: Mapped[float | None] = mapped_column(sa.Double)
    started_at: Mapped[float | None] = mapped_column(sa.Double)
    finished_at: Mapped[float | None] = mapped_column(sa.Double)
    queue_wait_s: Mapped[float] = mapped_column(sa.Double)
    fetch_s: Mapped[float] = mapped_column(sa.Double)
    compute_s: Mapped[float] = mapped_column(sa.Double)
    upload_s: Mapped[float] = mapped_column(sa.Double)
    cpu_s: Mapped[float] = mapped_column(sa.Double)
    bytes_in: Mapped[int] = mapped_column(sa.BigInteger)
    bytes_out: Mapped[int] = mapped_column(sa.BigInteger)
    #: Extra runs reported after the task had succeeded (at-least-once delivery's cost).
    duplicate_runs: Mapped[int] = mapped_column(sa.Integer)
    updated_at: Mapped[float] = mapped_column(sa.Double)
    #: Dollars of every run of the task recorded so far (failed, retried, duplicate, each
    #: once), at its node's price when recorded; runs whose price was unknown then are in
    #: ``unpriced_runs`` instead. See ``costs``.
    cost_dollars: Mapped[float] = mapped_column(sa.Double, default=0.0, server_default="0")
    #: The runs recorded, as ``[node, worker, started_at]``, oldest first and at most
    #: ``runs.MAX_RUNS_SEEN``: a run reported again is recognised and counted once. NULL
    #: while the only run is a first success, and in rows older than the column (the row's
    #: own node, worker and start then identify its run).
    runs_seen: Mapped[list[list[Any]] | None] = mapped_column(NullableJSON)


class UnpricedRun(Base):
    """A run recorded while its node's price was unknown: priced when read, at the price then.

    Its node's row may not exist yet (the run beat the node's first heartbeat to the store)
    or hold no price yet (a spot price still being looked up); either arrives later.
    """

    __tablename__ = "unpriced_runs"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["job_id", "stage", "part"],
            ["tasks.job_id", "tasks.stage", "tasks.part"],
            ondelete="CASCADE",
        ),
        # A task's (or stage's, or job's) unpriced runs.
        sa.Index(None, "job_id", "stage", "part"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.String(IDENT_LEN))
    stage: Mapped[str] = mapped_column(sa.String(IDENT_LEN))
    part: Mapped[int] = mapped_column(sa.Integer)
    #: Not a foreign key: the node's row may come later.
    node_id: Mapped[str] = mapped_column(sa.String(NODE_ID_LEN))
    #: Wall seconds the run took (its node's worker count divides them when priced).
    seconds: Mapped[float] = mapped_column(sa.Double)


class Node(Base):
    """A worker machine, as its heartbeats describe it."""

    __tablename__ = "nodes"
    __table_args__ = (
        # Finding nodes whose heartbeats stopped.
        sa.Index(None, "state", "last_heartbeat"),
        # Counting a class's nodes for the autoscaler.
        sa.Index(None, "node_class", "state"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(sa.String(NODE_ID_LEN), primary_key=True)
    node_class: Mapped[str] = mapped_column(sa.String(IDENT_LEN))
    host: Mapped[str] = mapped_column(sa.String(255))
    #: A :class:`NodeState`.
    state: Mapped[str] = mapped_column(sa.String(STATE_LEN))
    #: Why the node is in its state, when the manager put it there (lost, stopped).
    reason: Mapped[str | None] = mapped_column(sa.String(REASON_LEN))
    #: A cordoned node takes no new work (it failed inputs that succeeded elsewhere).
    #: The manager's call, so heartbeats leave it (and its reason) as they are.
    cordoned: Mapped[bool] = mapped_column(sa.Boolean)
    cordon_reason: Mapped[str | None] = mapped_column(sa.String(REASON_LEN))
    first_seen: Mapped[float] = mapped_column(sa.Double)
    last_heartbeat: Mapped[float] = mapped_column(sa.Double)
    cpu_percent: Mapped[float] = mapped_column(sa.Double)
    rss_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    #: Worker actors the node reported in its latest heartbeat.
    workers: Mapped[int] = mapped_column(sa.Integer)
    #: Dollars per node-hour the manager priced the node at (on-demand from the config, the
    #: spot price at launch for a spot instance); None where unknown.
    price_per_hour: Mapped[float | None] = mapped_column(sa.Double)
    #: What the node read from the EC2 instance metadata service (None off EC2).
    instance_type: Mapped[str | None] = mapped_column(sa.String(64))
    zone: Mapped[str | None] = mapped_column(sa.String(64))
    #: ``spot`` or ``on-demand``.
    lifecycle: Mapped[str | None] = mapped_column(sa.String(16))


class Worker(Base):
    """One worker actor on a node, as the node's latest heartbeat describes it."""

    __tablename__ = "workers"
    __table_args__ = (MYSQL_TABLE,)

    node_id: Mapped[str] = mapped_column(
        sa.String(NODE_ID_LEN), sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    pid: Mapped[int] = mapped_column(sa.Integer)
    #: The core the worker is pinned to, if pinned.
    core: Mapped[int | None] = mapped_column(sa.Integer)
    state: Mapped[str] = mapped_column(sa.String(STATE_LEN))
    #: Id of the task it runs, if any.
    task: Mapped[str | None] = mapped_column(sa.String(TASK_ID_LEN))
    done: Mapped[int] = mapped_column(sa.Integer)
    failed: Mapped[int] = mapped_column(sa.Integer)
    cpu_percent: Mapped[float] = mapped_column(sa.Double)
    rss_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    updated_at: Mapped[float] = mapped_column(sa.Double)


class MetricSample(Base):
    """One metric sample: a name, labels, a value at a time, from a node or the manager."""

    __tablename__ = "metric_samples"
    __table_args__ = (
        # A metric's recent samples.
        sa.Index(None, "name", "time"),
        # Dropping samples older than the retention.
        sa.Index(None, "time"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(sa.Double)
    #: The node that measured it; None for the manager's own metrics. Not a foreign key:
    #: samples may arrive before a node's first heartbeat and outlive the node's row.
    node_id: Mapped[str | None] = mapped_column(sa.String(NODE_ID_LEN))
    name: Mapped[str] = mapped_column(sa.String(METRIC_NAME_LEN))
    labels: Mapped[dict[str, str]] = mapped_column(sa.JSON)
    value: Mapped[float] = mapped_column(sa.Double)


class ScalingEvent(Base):
    """One autoscaler decision with the inputs it was made from."""

    __tablename__ = "scaling_events"
    __table_args__ = (
        sa.Index(None, "node_class", "time"),
        sa.Index(None, "time"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(sa.Double)
    node_class: Mapped[str] = mapped_column(sa.String(IDENT_LEN))
    #: ``aws`` or ``local``.
    provider: Mapped[str] = mapped_column(sa.String(32))
    desired_before: Mapped[int] = mapped_column(sa.Integer)
    desired_after: Mapped[int] = mapped_column(sa.Integer)
    #: Visible plus in-flight tasks of the class when deciding.
    backlog: Mapped[int] = mapped_column(sa.Integer)
    #: Measured tasks per second per node.
    rate: Mapped[float] = mapped_column(sa.Double)
    #: Nodes of the class up when deciding.
    nodes: Mapped[int] = mapped_column(sa.Integer)
    reason: Mapped[str] = mapped_column(sa.String(REASON_LEN))
    #: Further inputs (target drain time, deadline, cooldown left, ...).
    details: Mapped[dict[str, Any]] = mapped_column(sa.JSON)


# The tables as Core objects, for the store's bulk statements (typed as Table, which
# ``Model.__table__`` is not).
JOBS = Base.metadata.tables[Job.__tablename__]
STAGES = Base.metadata.tables[Stage.__tablename__]
TASKS = Base.metadata.tables[Task.__tablename__]
NODES = Base.metadata.tables[Node.__tablename__]
UNPRICED_RUNS = Base.metadata.tables[UnpricedRun.__tablename__]
WORKERS = Base.metadata.tables[Worker.__tablename__]
SAMPLES = Base.metadata.tables[MetricSample.__tablename__]
SCALING_EVENTS = Base.metadata.tables[ScalingEvent.__tablename__]
