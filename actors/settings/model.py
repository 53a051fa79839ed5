"""The settings: one frozen dataclass per TOML section, every field with a default.

Each field carries its documentation and limits in its metadata (see :func:`setting`), so
the loader validates, ``batchfarm config show`` explains, and the config reference in the
README and ``config/batchfarm.toml`` can be checked against one source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: Placeholder in URLs and paths, replaced with ``[grid] state_dir`` when settings load.
STATE_DIR = "{state_dir}"


def setting(
    default: Any,
    doc: str,
    *,
    min: float | None = None,
    max: float | None = None,
    url: tuple[str, ...] | None = None,
    secret: bool = False,
) -> Any:
    """Declare a settings field: its default, one line of documentation, and its limits.

    ``url`` names the URL schemes the value may use; the empty tuple means "any SQLAlchemy
    database URL". A ``secret`` value is never printed (``config show`` masks it).
    """
    meta = {"doc": doc, "min": min, "max": max, "url": url, "secret": secret}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class GridSettings:
    """[grid]: what every process of one grid shares."""

    name: str = setting("batchfarm", "Name of the grid; nodes and metrics carry it.")
    state_dir: str = setting(
        "~/.local/state/batchfarm",
        "Folder for the embedded backends' state; {state_dir} in URLs stands for it.",
    )


@dataclass(frozen=True)
class QueueSettings:
    """[queue]: the task queue (embedded SQLite queue or SQS)."""

    url: str = setting(
        "local://{state_dir}/queue.db",
        "Task queue: local:///path/queue.db (embedded) or sqs://name-prefix (AWS).",
        url=("local", "sqs"),
    )
    visibility_timeout: float = setting(
        60.0,
        "Seconds a received task stays hidden; workers extend it while the task runs.",
        min=1,
        max=43_200,
    )
    max_receives: int = setting(
        5, "Receives after which a task goes to the dead-letter queue.", min=1, max=1000
    )
    wait: float = setting(
        10.0, "Long-poll seconds a worker waits for a task before asking again.", min=0, max=20
    )


@dataclass(frozen=True)
class StorageSettings:
    """[storage]: the blob store (a local directory or S3)."""

    url: str = setting(
        "file://{state_dir}/blobs",
        "Blob store: file:///path (embedded) or s3://bucket/prefix (AWS).",
        url=("file", "s3"),
    )
    chunk_size: int = setting(
        8 * 1024 * 1024,
        "Bytes per streamed chunk and multipart part (S3 needs at least 5 MiB).",
        min=64 * 1024,
        max=5 * 1024**3,
    )


@dataclass(frozen=True)
class StoreSettings:
    """[store]: the analytics store (any SQLAlchemy URL: SQLite, PostgreSQL, MySQL)."""

    url: str = setting(
        "sqlite:///{state_dir}/grid.db",
        "Analytics store: sqlite:///path, postgresql+psycopg://..., mysql+pymysql://...",
        url=(),
    )
    batch_size: int = setting(
        500, "Rows written per transaction when the manager flushes a batch.", min=1, max=100_000
    )


@dataclass(frozen=True)
class NodeSettings:
    """[node]: one worker machine's supervisor and its worker actors."""

    workers: int | Literal["auto"] = setting(
        "auto", 'Worker actors: "auto" (one per core this process may use) or a number.', min=1
    )
    pin: bool = setting(True, "Pin each worker to its own core.")
    prefetch: int = setting(1, "Most tasks a worker holds beyond the one it runs.", min=0, max=9)
    manager: str = setting(
        "tcp://127.0.0.1:5555",
        "The manager's telemetry endpoint (ZeroMQ) for heartbeats and metrics.",
        url=("tcp",),
    )
    heartbeat_interval: float = setting(
        5.0, "Seconds between heartbeats (and metrics) to the manager.", min=0.1, max=300
    )
    telemetry_buffer: int = setting(
        1000,
        "Heartbeat and metrics frames kept while the manager is away; the oldest go first.",
        min=1,
        max=1_000_000,
    )
    drain_grace: float = setting(
        60.0,
        "Seconds running tasks may take to finish on a drain before they are stopped.",
        min=0,
        max=7200,
    )
    restart_backoff: float = setting(
        0.5, "Seconds before restarting a crashed worker; doubles per crash.", min=0, max=60
    )
    restart_backoff_max: float = setting(
        30.0, "Longest wait before restarting a crashed worker.", min=0, max=3600
    )
    restart_limit: int = setting(
        5, "Crashes within restart_window after which a worker is given up.", min=1, max=1000
    )
    restart_window: float = setting(
        60.0, "Seconds over which a worker's crashes are counted.", min=1, max=86_400
    )


@dataclass(frozen=True)
class TasksSettings:
    """[tasks]: defaults for how a task runs and retries (a job's spec may override them)."""

    max_attempts: int = setting(
        3, "Runs a task gets before a transient failure is final.", min=1, max=1000
    )
    retry_backoff: float = setting(
        2.0, "Seconds before a failed task runs again; doubles per attempt.", min=0, max=43_200
    )
    retry_backoff_max: float = setting(
        300.0, "Longest wait before a failed task runs again.", min=0, max=43_200
    )
    time_limit: float = setting(
        0.0, "Seconds a task may run before it is stopped; 0 for no limit.", min=0, max=43_200
    )
    cancel_grace: float = setting(
        10.0,
        "Seconds a stopped task's handler gets to return before its worker is restarted.",
        min=0.1,
        max=600,
    )


@dataclass(frozen=True)
class MediaSettings:
    """[media]: the tools media handlers run."""

    ffmpeg: str = setting(
        "", 'ffmpeg to run: a path, or "" for ffmpeg on PATH, else the one imageio-ffmpeg ships.'
    )
    threads: int | Literal["auto"] = setting(
        "auto",
        'Threads per ffmpeg: "auto" (1 for a pinned worker, else its share of the cores).',
        min=1,
        max=64,
    )


@dataclass(frozen=True)
class ApiSettings:
    """[api]: the manager's HTTP API, and where every CLI verb finds it."""

    listen: str = setting(
        "http://127.0.0.1:8470",
        "Where the manager's HTTP API listens and where the CLI finds it.",
        url=("http",),
    )
    token: str = setting(
        "",
        "Bearer token for every request (admin); required when listen is not loopback.",
        secret=True,
    )
    read_token: str = setting(
        "", "Bearer token that may only read (GET): for dashboards and scrapers.", secret=True
    )
    max_request_bytes: int = setting(
        1_048_576, "Largest request body the API accepts, in bytes.", min=1024, max=67_108_864
    )


@dataclass(frozen=True)
class Settings:
    """Every setting of a batchfarm process, loaded once at the entry point and passed down."""

    grid: GridSettings = field(default_factory=GridSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    tasks: TasksSettings = field(default_factory=TasksSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
