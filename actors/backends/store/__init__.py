"""The analytics store: SQLAlchemy models, Alembic migrations and batched writes.

Jobs, stages, tasks, nodes, workers, metric samples and scaling events live in one
relational database named by a SQLAlchemy URL: SQLite by default (``sqlite:///path``),
PostgreSQL (``postgresql+psycopg://``) or MySQL/MariaDB (``mysql+pymysql://``) on RDS. Only
the manager writes it. Open it with :class:`Store`; the schema is created and upgraded by the
Alembic migrations in ``migrations/`` (see :mod:`.migrate`).
"""

from batchfarm.actors.backends.store.models import (
    JobState,
    NodeState,
    StageMode,
    StageState,
    TaskState,
)
from batchfarm.actors.backends.store.records import (
    JobView,
    NewJob,
    NewSample,
    NewScalingEvent,
    NewStage,
    NewTask,
    NodeBeat,
    NodeView,
    RunsApplied,
    SampleView,
    ScalingEventView,
    StageCounts,
    StageView,
    TaskRun,
    TaskUpdate,
    TaskView,
    WorkerBeat,
    WorkerView,
    task_id,
)
from batchfarm.actors.backends.store.store import Store

__all__ = [
    "JobState",
    "JobView",
    "NewJob",
    "NewSample",
    "NewScalingEvent",
    "NewStage",
    "NewTask",
    "NodeBeat",
    "NodeState",
    "NodeView",
    "RunsApplied",
    "SampleView",
    "ScalingEventView",
    "StageCounts",
    "StageMode",
    "StageState",
    "StageView",
    "Store",
    "TaskRun",
    "TaskState",
    "TaskUpdate",
    "TaskView",
    "WorkerBeat",
    "WorkerView",
    "task_id",
]
