"""Backends chosen by URL: the same grid runs embedded on one machine or on AWS.

Each backend is an interface with its implementations (``queue``, ``blobs``, ``store``);
this module maps a settings URL to its implementation. Backends know nothing of actors.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.blobs.local import LocalBlobStore
from batchfarm.actors.backends.queue import TaskQueue
from batchfarm.actors.backends.queue.local import LocalQueue
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.errors import BackendError
from batchfarm.actors.settings import (
    DEFAULT_CLASS,
    QueueSettings,
    StorageSettings,
    StoreSettings,
)

if TYPE_CHECKING:
    from batchfarm.actors.backends.store import Store

#: The grid's queues, by role. On SQS each is ``<prefix>-<name>``, each with its ``-dlq``.
#: ``tasks`` holds the default node class's normal-priority tasks, ``tasks-high`` its
#: high-priority ones; node class ``X`` has ``tasks-X`` and ``tasks-X-high``.
TASKS = "tasks"
TASKS_HIGH = "tasks-high"
COMPLETIONS = "completions"
#: The default class's task queue of each priority class (a job's stored priority:
#: ``normal`` is 0, ``high`` 1), highest first: workers take from a lower class only when
#: the higher ones are empty.
TASK_QUEUES: dict[int, str] = {1: TASKS_HIGH, 0: TASKS}


def task_queue_name(priority: int, node_class: str = DEFAULT_CLASS) -> str:
    """The name of the queue a job of ``priority`` sends a stage of ``node_class`` to.

    The default class keeps the names grids had before node classes (``tasks``,
    ``tasks-high``); class ``X`` gets ``tasks-X`` and ``tasks-X-high``.
    """
    level = min(TASK_QUEUES)
    for candidate in sorted(TASK_QUEUES, reverse=True):
        if priority >= candidate:
            level = candidate
            break
    name = TASK_QUEUES[level]
    if node_class == DEFAULT_CLASS:
        return name
    return f"{TASKS}-{node_class}{name[len(TASKS) :]}"


def open_task_queues(
    settings: QueueSettings,
    node_classes: Iterable[str] = (DEFAULT_CLASS,),
    *,
    open_others: bool = False,
) -> TaskQueues:
    """Open the task queue of every priority class of each of ``node_classes``.

    A node opens its own class's (``[node] node_class``), the manager every class's
    (:func:`~batchfarm.actors.settings.node_class_names`) and, with ``open_others``, any
    other class's when first asked for it (see :class:`TaskQueues`). Close them with
    ``close()``.
    """
    opened: dict[str, dict[int, TaskQueue]] = {}
    try:
        for node_class in node_classes:
            opened[node_class] = _open_class(settings, node_class)
    except BaseException:
        for queues in opened.values():
            for queue in queues.values():
                queue.close()
        raise
    opener = functools.partial(_open_class, settings) if open_others else None
    return TaskQueues(by_class=opened, opener=opener)


def _open_class(settings: QueueSettings, node_class: str) -> dict[int, TaskQueue]:
    """The task queues of ``node_class``, by priority class."""
    queues: dict[int, TaskQueue] = {}
    try:
        for level in TASK_QUEUES:
            queues[level] = open_queue(settings, task_queue_name(level, node_class))
    except BaseException:
        for queue in queues.values():
            queue.close()
        raise
    return queues


def open_queue(settings: QueueSettings, name: str) -> TaskQueue:
    """Open the grid's queue ``name`` (``tasks``, ``completions``, ...) at ``settings.url``."""
    parts = urlsplit(settings.url)
    if parts.scheme == "local":
        path = Path(unquote(parts.path))
        _make_folder(path.parent, settings.url)
        return LocalQueue(path, name, max_receives=settings.max_receives)
    if parts.scheme == "sqs":
        # Imported here: an embedded grid never loads boto3.
        from batchfarm.actors.backends.queue.sqs import SqsQueue  # noqa: PLC0415

        return SqsQueue(
            parts.netloc,
            name,
            max_receives=settings.max_receives,
            region=settings.region,
            endpoint_url=settings.endpoint_url,
        )
    raise BackendError(f"queue URL {settings.url!r}: no {parts.scheme}:// backend in this release")


def open_blobs(settings: StorageSettings) -> BlobStore:
    """Open the blob store at ``settings.url``."""
    parts = urlsplit(settings.url)
    if parts.scheme == "file":
        root = Path(unquote(parts.path))
        _make_folder(root, settings.url)
        return LocalBlobStore(root, chunk_size=settings.chunk_size)
    if parts.scheme == "s3":
        # Imported here: an embedded grid never loads boto3.
        from batchfarm.actors.backends.blobs.s3 import S3BlobStore  # noqa: PLC0415

        return S3BlobStore(settings)
    raise BackendError(
        f"storage URL {settings.url!r}: no {parts.scheme}:// backend in this release"
    )


def open_store(settings: StoreSettings) -> Store:
    """Open the analytics store at ``settings.url``, creating or upgrading its schema."""
    # Imported here: only the manager opens the store; worker nodes never load its models,
    # its ORM or Alembic.
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    from batchfarm.actors.backends.store import Store  # noqa: PLC0415

    if settings.url.startswith("sqlite"):
        database = make_url(settings.url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            _make_folder(Path(database).parent, settings.url)
    return Store(settings.url, batch_size=settings.batch_size, connect=settings)


def _make_folder(folder: Path, url: str) -> None:
    """Create the folder an embedded backend keeps its files in (the state dir, usually)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"{url!r}: cannot create the folder {folder}: {exc.strerror}") from exc
