"""The settings: one frozen dataclass per TOML section, every field with a default.

Each field carries its documentation and limits in its metadata (see
:mod:`~batchfarm.actors.settings.fields`), so the loader validates, ``batchfarm config show``
explains, and the config reference in the README and ``config/batchfarm.toml`` can be
checked against one source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from batchfarm.actors.settings.fields import Tables, setting, table_meta

#: Placeholder in URLs and paths, replaced with ``[grid] state_dir`` when settings load.
STATE_DIR = "{state_dir}"
#: The node class of every node and stage that names none; ``[autoscale]`` describes its fleet.
DEFAULT_CLASS = "default"


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
    region: str = setting("", 'AWS region of the SQS queues; "" for boto3\'s chain (AWS_REGION).')
    endpoint_url: str = setting(
        "", 'URL of an SQS-compatible server (or a VPC endpoint); "" for AWS\'s own.'
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
    region: str = setting("", 'AWS region of the S3 bucket; "" for boto3\'s chain (AWS_REGION).')
    endpoint_url: str = setting(
        "", 'URL of an S3-compatible server (or a VPC endpoint); "" for AWS\'s own.'
    )
    multipart_threshold: int = setting(
        8 * 1024 * 1024,
        "Objects this large or larger go to S3 in multipart uploads of chunk_size parts.",
        min=5 * 1024 * 1024,
        max=5 * 1024**3,
    )
    max_concurrency: int = setting(
        2, "Parts of one object moving to or from S3 at once (threads).", min=1, max=64
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
    pool_recycle: float = setting(
        3600.0,
        "Seconds after which a pooled connection is replaced (below RDS's idle timeout); 0: never.",
        min=0,
        max=86_400,
    )
    ssl_mode: Literal["", "disable", "require", "verify-ca", "verify-full"] = setting(
        "", 'TLS: "" (driver default), "disable", "require", "verify-ca" or "verify-full".'
    )
    ssl_ca: str = setting(
        "", "CA bundle (PEM file) for verify-ca and verify-full (RDS: global-bundle.pem)."
    )
    iam_auth: bool = setting(
        False, "Log in with an RDS IAM token from boto3's credentials, not a password (needs TLS)."
    )
    region: str = setting("", 'AWS region of the RDS instance for iam_auth; "" for boto3\'s chain.')


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
    metrics_listen: str = setting(
        "",
        'Where the node serves its own /metrics ("http://host:port"); "" for off.',
    )
    metadata_url: str = setting(
        "",
        "EC2 instance metadata service to watch for spot and scale-in notices "
        '(http://169.254.169.254 on EC2); "" for off.',
    )
    metadata_poll: float = setting(
        5.0, "Seconds between instance metadata polls (AWS advises 5).", min=0.1, max=60
    )
    lifecycle_hook: str = setting(
        "",
        "Termination lifecycle hook of the node's Auto Scaling group: once drained after a "
        'scale-in notice, the node completes it (CONTINUE); "" when the group has none.',
    )
    launch_hook: str = setting(
        "",
        "Launch lifecycle hook of the node's Auto Scaling group: once its workers are up, the "
        'node completes it (CONTINUE), so the instance goes InService; "" when the group has none.',
    )
    autoscaling_group: str = setting(
        "", "The node's Auto Scaling group; \"\" reads it from the instance's metadata tags."
    )
    node_class: str = setting(
        DEFAULT_CLASS,
        'The node class this node serves: "default" or a [classes.NAME] table; its workers '
        "take only that class's tasks.",
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


#: Encoder speed presets (x264/x265 names; SVT-AV1 takes its own 0 to 13).
SPEEDS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)


@dataclass(frozen=True)
class PresetSettings:
    """One ``[media.presets.NAME]`` table: a named output for the ``transcode`` handler."""

    video_codec: Literal["h264", "hevc", "av1", "none"] = setting(
        "h264", 'Video codec, or "none" for audio only.'
    )
    height: int = setting(720, "Output height (even); 0 keeps the input's.", min=0, max=4320)
    crf: int = setting(23, "Constant rate factor (0 to 51; AV1 0 to 63).", min=0, max=63)
    speed: str = setting("", 'Encoder speed preset (x264/x265 name, AV1 "0" to "13"); "" default.')
    video_bitrate: str = setting("", 'Video bit-rate cap such as "3000k"; "" for CRF only.')
    audio_codec: Literal["aac", "none"] = setting("aac", 'Audio codec, or "none" for no audio.')
    audio_bitrate: str = setting("128k", 'Audio bit rate, "16k" to "512k".')

    def __post_init__(self) -> None:
        # Cross-field rules the per-field checks cannot see; the loader names the preset.
        if self.video_codec == "none" and self.audio_codec == "none":
            raise ValueError("expected video, audio or both, not video_codec = audio_codec = none")
        if self.height % 2:
            raise ValueError(f"height = {self.height}: expected an even height")
        if self.video_codec in ("h264", "hevc") and self.crf > 51:
            raise ValueError(f"crf = {self.crf}: expected 0 to 51 for {self.video_codec}")
        speeds = [str(n) for n in range(14)] if self.video_codec == "av1" else SPEEDS
        if self.speed and self.speed not in speeds:
            raise ValueError(f"speed = {self.speed!r}: expected one of {', '.join(speeds)}")
        for name in ("video_bitrate", "audio_bitrate"):
            value = getattr(self, name)
            if value and not (value[:-1].isdigit() and value.endswith("k") and value[0] != "0"):
                raise ValueError(f'{name} = "{value}": expected a bit rate such as "128k"')


class Presets(Tables):
    """``[media.presets]``: preset name -> its checked table."""


@dataclass(frozen=True)
class MediaSettings:
    """[media]: the tools media handlers run, the presets they offer, and their limits."""

    ffmpeg: str = setting(
        "", 'ffmpeg to run: a path, or "" for ffmpeg on PATH, else the one imageio-ffmpeg ships.'
    )
    threads: int | Literal["auto"] = setting(
        "auto",
        'Threads per ffmpeg: "auto" (1 for a pinned worker, else its share of the cores).',
        min=1,
        max=64,
    )
    presets: Presets = field(
        default=Presets(),
        metadata=table_meta(
            "User presets for transcode: [media.presets.NAME] tables (see PresetSettings).",
            PresetSettings,
        ),
    )
    max_pixels: int = setting(
        33_177_600, "Largest input frame (width x height) a media task accepts.", min=1, max=2**31
    )
    max_duration: float = setting(
        21_600.0, "Longest input, in seconds, a media task accepts.", min=1, max=604_800
    )
    cpu_time: int = setting(
        86_400, "CPU seconds one ffmpeg may use (RLIMIT_CPU); 0 for no limit.", min=0
    )
    memory_bytes: int = setting(
        8 * 1024**3, "Address space one ffmpeg may map (RLIMIT_AS); 0 for no limit.", min=0
    )
    output_bytes: int = setting(
        64 * 1024**3, "Largest file one ffmpeg may write (RLIMIT_FSIZE); 0 for no limit.", min=0
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
class AutoscaleSettings:
    """[autoscale]: the manager's autoscaler, which sizes the fleets of worker nodes.

    Its provider, group, limits, workers_per_node and price are the ``default`` node class's
    (``[classes.NAME]`` tables hold the other classes'); its other keys hold for every class.
    """

    provider: Literal["", "local", "aws"] = setting(
        "",
        'Fleet to scale: "local" (node processes on this machine), "aws" (an Auto Scaling '
        'group) or "" for off.',
    )
    group: str = setting("", 'The Auto Scaling group the "aws" provider scales.')
    region: str = setting("", 'AWS region of the group; "" for boto3\'s chain (AWS_REGION).')
    endpoint_url: str = setting(
        "", 'URL of an Auto Scaling-compatible server (or a VPC endpoint); "" for AWS\'s own.'
    )
    min_nodes: int = setting(0, "Fewest nodes, even when idle (0 allowed).", min=0, max=10_000)
    max_nodes: int = setting(4, "Most nodes, whatever the backlog.", min=0, max=10_000)
    workers_per_node: int = setting(
        0, "Worker actors per node; 0 takes it from the nodes' heartbeats.", min=0, max=1024
    )
    target_drain: float = setting(
        600.0, "Seconds within which the backlog should be done: sizes the fleet.", min=1
    )
    idle: float = setting(
        90.0,
        "Seconds a node must have been idle before scale-in may remove it (once no job has work "
        "left for its class, each node's own share of it: 0.58 on average).",
        min=0,
    )
    interval: float = setting(
        10.0, "Seconds between the autoscaler's decisions.", min=0.1, max=3600
    )
    default_task: float = setting(
        60.0, "Task duration to assume before any task has been measured.", min=0.001
    )
    publish_backlog: bool = setting(
        False,
        "Put the backlog per instance to CloudWatch at each decision (namespace batchfarm), "
        "for AWS target tracking.",
    )
    price_per_hour: float = setting(
        0.0,
        "On-demand price of one node of the default class, in dollars per hour, for costs; "
        "0 for unknown (spot nodes on EC2 are priced at their spot price at launch).",
        min=0,
    )


@dataclass(frozen=True)
class NodeClassSettings:
    """One ``[classes.NAME]`` table: a node class's fleet, limits and price.

    The ``default`` class takes these from ``[autoscale]`` (see :func:`node_class_settings`);
    ``[autoscale]``'s other keys (interval, target_drain, idle, ...) hold for every class.
    The autoscaler checks the limits against each other when it opens the class's fleet.
    """

    provider: Literal["", "local", "aws"] = setting(
        "", 'Fleet to scale: "local", "aws" (the group below) or "" for none (nodes by hand).'
    )
    group: str = setting("", 'The Auto Scaling group of the class\'s nodes ("aws" only).')
    min_nodes: int = setting(0, "Fewest nodes of the class, even when idle.", min=0, max=10_000)
    max_nodes: int = setting(4, "Most nodes of the class, whatever the backlog.", min=0, max=10_000)
    workers_per_node: int = setting(
        0, "Worker actors per node; 0 takes it from the nodes' heartbeats.", min=0, max=1024
    )
    price_per_hour: float = setting(
        0.0, "On-demand price of one node of the class, in dollars per hour; 0 for unknown.", min=0
    )


class NodeClasses(Tables):
    """``[classes]``: node class name -> its checked ``[classes.NAME]`` table."""


@dataclass(frozen=True)
class Settings:
    """Every setting of a batchfarm process, loaded once at the entry point and passed down.

    Each field is a section: a dataclass of settings, or (``classes``) a table of named
    tables whose schema the field's ``table`` metadata names.
    """

    grid: GridSettings = field(default_factory=GridSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    tasks: TasksSettings = field(default_factory=TasksSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    autoscale: AutoscaleSettings = field(default_factory=AutoscaleSettings)
    classes: NodeClasses = field(
        default=NodeClasses(),
        metadata=table_meta(
            "Node classes beside the default one: [classes.NAME] tables (see NodeClassSettings).",
            NodeClassSettings,
        ),
    )
