"""``scripts/bench/grid --backend aws``: the grid on SQS and S3 (moto) and PostgreSQL, beside
the embedded grid, in one run.

The same clips go through the same grid (``grid_runs.run_grid``: a manager and one node of 2
workers, timed from ``submit_job`` to the store saying the job succeeded) twice per round,
taking turns: ``embedded`` (the SQLite queue, a local blob directory, SQLite) and ``aws``
(``sqs://`` and ``s3://`` on a ``moto_server`` this benchmark starts, the store on a fresh
PostgreSQL database at ``BATCHFARM_BENCH_POSTGRESQL_URL``, default
``postgresql+psycopg://root@127.0.0.1:5432/test``). Each aws run gets a fresh bucket, queue
prefix and database.

moto is much slower than SQS and S3 (and slows down with queue depth), so the ratio says what
our overhead on an AWS-shaped backend costs on this machine, not what AWS would do. Where the
time goes: each side's per-task profile (fetch, upload, queue wait, gaps), moto's own CPU
time, and a probe of single-call latencies (queue and blob calls, embedded vs moto).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from grid_runs import run_grid
from node_runs import BenchError, ClipSpec, Run, make_clips, warn_if_busy
from peers_s3 import MotoServer

from batchfarm.actors.backends import open_blobs, open_queue
from batchfarm.actors.backends.queue import Outgoing
from batchfarm.actors.handlers.ffmpeg import find_ffmpeg
from batchfarm.actors.handlers.transcode import TranscodeOptions
from batchfarm.actors.settings import MediaSettings, Settings, load

SIDES = ("embedded", "aws")
CORES = psutil.cpu_count() or 1
POSTGRESQL_URL = os.environ.get(
    "BATCHFARM_BENCH_POSTGRESQL_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
#: boto3's credential chain finds these (moto accepts any); set in this process and the grid's.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
#: Calls per kind in the latency probe, and the probe's blob size and message body.
PROBE_CALLS = 30
PROBE_BLOB = os.urandom(1024 * 1024)
PROBE_BODY = "x" * 400  # about a task body's size


class AwsBackends:
    """A ``moto_server`` and a PostgreSQL server; :meth:`env` makes one run's resources."""

    def __init__(self, work: Path) -> None:
        os.environ.update(CREDENTIALS)
        self.admin = sa.create_engine(POSTGRESQL_URL, isolation_level="AUTOCOMMIT")
        try:
            with self.admin.connect() as connection:
                connection.execute(sa.select(1))
        except sa.exc.SQLAlchemyError as error:
            raise BenchError(
                f"PostgreSQL at {POSTGRESQL_URL} not reachable ({str(error).splitlines()[0]});"
                " start it or set BATCHFARM_BENCH_POSTGRESQL_URL"
            ) from None
        self.moto = MotoServer(work)
        self.databases: list[str] = []

    def env(self) -> dict[str, str]:
        """BATCHFARM_* settings of a grid on a fresh bucket, queue prefix and database."""
        name = f"bf-bench-{uuid.uuid4().hex[:10]}"
        self.moto.client.create_bucket(Bucket=name)
        database = name.replace("-", "_")
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {database}")
        self.databases.append(database)
        store = sa.engine.make_url(POSTGRESQL_URL).set(database=database)
        return {
            **CREDENTIALS,
            "BATCHFARM_QUEUE_URL": f"sqs://{name}",
            "BATCHFARM_QUEUE_ENDPOINT_URL": self.moto.url,
            "BATCHFARM_STORAGE_URL": f"s3://{name}/grid",
            "BATCHFARM_STORAGE_ENDPOINT_URL": self.moto.url,
            "BATCHFARM_STORE_URL": store.render_as_string(hide_password=False),
        }

    def close(self) -> None:
        with self.admin.connect() as connection:
            for database in self.databases:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        self.admin.dispose()
        self.moto.close()


def bench_aws(args: argparse.Namespace) -> dict[str, Any]:
    """Every set, both sides taking turns for every round; the probe; the table."""
    started = time.monotonic()
    load_avg = warn_if_busy()
    ffmpeg = find_ffmpeg(MediaSettings())
    options = TranscodeOptions(args.to_height, args.crf, args.preset, args.audio_bitrate)
    args.results.mkdir(parents=True, exist_ok=True)
    specs = {
        "long": ClipSpec(args.long_clips, args.long_seconds, 1280, 720, 30),
        "short": ClipSpec(args.short_clips, args.short_seconds, 1280, 720, 30),
    }
    sets: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=args.results, prefix="aws-") as work:
        backends = AwsBackends(Path(work))
        try:
            for name in args.sets:
                clips = make_clips(ffmpeg, specs[name], args.results / "clips")
                sets[name] = run_set(args, name, specs[name], clips, ffmpeg, options, backends)
            probe = call_latency(Path(work), backends.env())
        finally:
            backends.close()
    figures = {
        "bench": "grid",
        "backend": "aws",
        "transcode": {"height": options.height, "preset": options.preset, "crf": options.crf},
        "rounds": args.rounds,
        "workers": 2,
        "aws": "sqs:// and s3:// on moto_server, store on PostgreSQL",
        "timed": "from submit_job (inputs uploaded) to the job succeeded in the store",
        "sets": sets,
        "call_latency_ms": probe,
        "load_at_start": round(load_avg, 2),
        "took_s": round(time.monotonic() - started, 1),
    }
    print_table(figures)
    return figures


def run_set(  # noqa: PLR0917 - one call site
    args: argparse.Namespace,
    name: str,
    spec: ClipSpec,
    clips: list[Path],
    ffmpeg: str,
    options: TranscodeOptions,
    backends: AwsBackends,
) -> dict[str, Any]:
    """Every round of one clip set, embedded and aws taking turns; the set's figures."""
    runs: dict[str, list[Run]] = {side: [] for side in SIDES}
    profiles: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    moto_cpu: list[float] = []
    for round_ in range(args.rounds):
        order = SIDES if round_ % 2 == 0 else SIDES[::-1]
        for side in order:
            env = backends.env() if side == "aws" else None
            moto_before = backends.moto.cpu_s()
            with tempfile.TemporaryDirectory(dir=args.results, prefix=f"{side}-") as work:
                run, profile = run_grid(
                    ffmpeg, clips, options, Path(work), spec.seconds, args.prefetch, args.pin, env
                )
            if side == "aws":
                moto_cpu.append(backends.moto.cpu_s() - moto_before)
            runs[side].append(run)
            profiles[side].append(profile)
            print(
                f"{name} round {round_ + 1}/{args.rounds} {side:<8} {run.items} clips in"
                f" {run.wall_s:6.2f} s  {run.rate:.3f} clips/s  CPU busy {run.cpu_percent:5.1f}%",
                flush=True,
            )
    rate = {side: statistics.median(r.rate for r in rs) for side, rs in runs.items()}
    per_round = [
        round(a.rate / e.rate, 3) for e, a in zip(runs["embedded"], runs["aws"], strict=True)
    ]
    return {
        "clips": {
            "count": spec.count,
            "seconds": spec.seconds,
            "size": f"{spec.width}x{spec.height}",
        },
        "clips_per_s": {s: round(r, 4) for s, r in rate.items()},
        "wall_s": {s: round(statistics.median(r.wall_s for r in rs), 2) for s, rs in runs.items()},
        "cpu_busy_percent": {
            s: round(statistics.median(r.cpu_percent for r in rs), 1) for s, rs in runs.items()
        },
        "ratio_aws_embedded": round(rate["aws"] / rate["embedded"], 3),
        "ratio_per_round": per_round,
        "moto_cpu_s": round(statistics.median(moto_cpu), 2),
        "profile": {side: _median_profile(profiles[side]) for side in SIDES},
    }


def _median_profile(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-task figures that say where a side's time went, medians over its rounds."""

    def med(pick: Callable[[dict[str, Any]], float]) -> float:
        return round(statistics.median(pick(p) for p in profiles), 3)

    return {
        "submit_upload_s": med(lambda p: p["submit_upload_s"]),
        "submit_to_first_start_s": med(lambda p: p["submit_to_first_start_s"]),
        "queue_wait_s": med(lambda p: p["queue_wait_s"].get("median", 0.0)),
        "fetch_s": med(lambda p: p["fetch_s"].get("median", 0.0)),
        "compute_s": med(lambda p: p["compute_s"].get("median", 0.0)),
        "upload_s": med(lambda p: p["upload_s"].get("median", 0.0)),
        "gap_between_tasks_s": med(lambda p: p["gap_between_tasks_s"].get("median", 0.0)),
        "last_finish_to_job_done_s": med(lambda p: p["last_finish_to_job_done_s"]),
        "manager_cpu_s": med(lambda p: p["cpu_s"].get("manager", 0.0)),
        "node_cpu_s": med(lambda p: p["cpu_s"].get("node", 0.0)),
    }


def call_latency(work: Path, aws_env: dict[str, str]) -> dict[str, dict[str, float]]:
    """Median milliseconds of single backend calls, embedded and on moto, side by side."""
    embedded = load(None, {"BATCHFARM_GRID_STATE_DIR": str(work / "probe")}).settings
    found = {"embedded": _probe(embedded), "moto": _probe(load(None, aws_env).settings)}
    return {
        call: {
            "embedded": found["embedded"][call],
            "moto": found["moto"][call],
            "ratio": round(found["moto"][call] / max(found["embedded"][call], 1e-6), 1),
        }
        for call in found["embedded"]
    }


def _probe(settings: Settings) -> dict[str, float]:
    timings: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def timed(call: str) -> Iterator[None]:
        began = time.perf_counter()
        yield
        timings.setdefault(call, []).append((time.perf_counter() - began) * 1000)

    queue = open_queue(settings.queue, "probe")
    blobs = open_blobs(settings.storage)
    try:
        for n in range(PROBE_CALLS):
            with timed("queue send_batch (10 messages)"):
                queue.send_batch([Outgoing(PROBE_BODY) for _ in range(10)])
            with timed("queue receive (10 messages)"):
                got = queue.receive(10, 0, 30)
            with timed("queue delete_batch (10 messages)"):
                queue.delete_batch([m.receipt for m in got])
            with timed("queue depth"):
                queue.depth()
            with timed("blob put (1 MiB)"):
                blobs.put(f"probe/{n}", PROBE_BLOB)
            with timed("blob head"):
                blobs.head(f"probe/{n}")
            with timed("blob read (1 MiB)"):
                blobs.read(f"probe/{n}")
    finally:
        queue.close()
        blobs.close()
    return {call: round(statistics.median(values), 2) for call, values in timings.items()}


def print_table(f: dict[str, Any]) -> None:
    t = f["transcode"]
    print(
        f"\n-> {t['height']}p libx264 {t['preset']} crf {t['crf']}; one node of 2 workers;"
        f" embedded vs {f['aws']}; median of {f['rounds']} rounds"
    )
    rows = (
        ("clips/s", lambda s, side: s["clips_per_s"][side], ".3f"),
        ("wall s", lambda s, side: s["wall_s"][side], ".2f"),
        (f"CPU busy, % of {CORES} cores", lambda s, side: s["cpu_busy_percent"][side], ".1f"),
        *(
            (label, lambda s, side, k=key: s["profile"][side][k], ".3f")
            for label, key in (
                ("submit (upload inputs) s", "submit_upload_s"),
                ("submit to first start s", "submit_to_first_start_s"),
                ("queue wait / task s", "queue_wait_s"),
                ("fetch / task s", "fetch_s"),
                ("compute / task s", "compute_s"),
                ("upload / task s", "upload_s"),
                ("gap between tasks s", "gap_between_tasks_s"),
                ("last finish to job done s", "last_finish_to_job_done_s"),
                ("manager CPU s", "manager_cpu_s"),
                ("node CPU s", "node_cpu_s"),
            )
        ),
    )
    for name, s in f["sets"].items():
        c = s["clips"]
        print(f"\n{name}: {c['count']} clips of {c['seconds']:g} s, {c['size']}")
        print(f"{'':<30}{'embedded':>10}{'aws':>10}")
        for label, pick, fmt in rows:
            print(f"{label:<30}{pick(s, 'embedded'):>10{fmt}}{pick(s, 'aws'):>10{fmt}}")
        print(
            f"aws/embedded clips/s: {s['ratio_aws_embedded']:.3f} (per round"
            f" {s['ratio_per_round']}); moto_server CPU s per run: {s['moto_cpu_s']:.2f}"
        )
    print(f"\nsingle calls, median ms of {PROBE_CALLS}:{'embedded':>12}{'moto':>10}{'ratio':>8}")
    for call, v in f["call_latency_ms"].items():
        print(f"{call:<36}{v['embedded']:>8.2f}{v['moto']:>10.2f}{v['ratio']:>8.1f}")
    print(f"\ntook {f['took_s']:.0f} s (load average {f['load_at_start']:.2f} at the start)")
