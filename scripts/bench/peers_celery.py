"""The Celery app the grid and overhead benchmarks run: worker processes import this module.

Redis is the broker and the result backend (``BENCH_REDIS_URL``, a dedicated database).
``BENCH_CELERY_PREFETCH`` and ``BENCH_CELERY_ACKS_LATE`` set the worker's prefetch
multiplier and late acknowledgement; the grid runs prefetch 1 with late acks and
``task_reject_on_worker_lost``, as Celery's docs advise for long tasks.

- ``noop``: returns None (its result is stored: completion recorded);
- ``transcode``: downloads its clip from S3 (``BENCH_S3_URL``, any S3-compatible endpoint),
  runs the same ffmpeg command as batchfarm's ``transcode`` handler (``-threads 1``) and
  uploads the output, returning its key and size.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")

app = Celery("peers_celery", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "1")),
    task_acks_late=os.environ.get("BENCH_CELERY_ACKS_LATE", "1") == "1",
    task_reject_on_worker_lost=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@functools.cache
def s3_client() -> Any:
    """A boto3 S3 client for ``BENCH_S3_URL`` (one per process, made on first use)."""
    import boto3  # only transcoding workers need it

    return boto3.client(
        "s3",
        endpoint_url=os.environ["BENCH_S3_URL"],
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )


@app.task(name="noop")
def noop() -> None:
    """Nothing: the system's own per-task cost."""


@app.task(name="transcode")
def transcode(bucket: str, key: str, out_key: str, argv: list[str]) -> dict[str, Any]:
    """Fetch ``key``, run ``argv`` (``{in}`` and ``{out}`` stand for local paths), store
    the output as ``out_key``."""
    s3 = s3_client()
    with tempfile.TemporaryDirectory(prefix="celery-bench-") as scratch:
        source, output = Path(scratch) / "in.mp4", Path(scratch) / "out.mp4"
        s3.download_file(bucket, key, str(source))
        command = [str(source) if a == "{in}" else str(output) if a == "{out}" else a for a in argv]
        done = subprocess.run(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"ffmpeg exited with {done.returncode}: {done.stderr[-2000:]!r}")
        s3.upload_file(str(output), bucket, out_key)
        return {"key": out_key, "size": output.stat().st_size}
