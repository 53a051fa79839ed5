"""The grid benchmark's peer: Celery with Redis, its clips and outputs in an S3-compatible store.

Wired as users wire Celery for media work: a worker ``celery -A peers_celery worker -P
prefork -c 2`` with prefetch multiplier 1, late acks and ``task_reject_on_worker_lost``,
Redis as broker and result backend; S3 is a ``moto_server`` this benchmark starts (in the
venv, in memory). The client uploads each clip to S3 and sends its task at once; each task
downloads its clip, runs the very ffmpeg command batchfarm's ``transcode`` handler runs
(``-threads 1``) and uploads the output. Timed from the first upload to the last result.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from grid_procs import cpu_seconds, free_port, kill_tree
from node_runs import PARALLEL, RUN_TIMEOUT_S, BenchError, CpuMeter, Run, mp4_problem
from peers_run import WARM_UP, flushed_redis, peer_env, venv_bin

from batchfarm.actors.handlers.transcode import TranscodeOptions, transcode_argv


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )


class MotoServer:
    """``moto_server`` on a free port: an S3-compatible endpoint in memory."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "moto.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [venv_bin("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.process = psutil.Process(self.proc.pid)
        self.client = s3_client(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.list_buckets()
                return
            except Exception as error:  # noqa: BLE001 - any failure means not up yet
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    tail = self.log.read_text(errors="replace")[-2000:]
                    raise BenchError(f"moto_server did not start ({error}):\n{tail}") from None
                time.sleep(0.2)

    def cpu_s(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def close(self) -> None:
        kill_tree(self.proc)

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_celery(  # noqa: PLR0917 - the same shape as run_xargs, plus the S3 server
    ffmpeg: str,
    clips: list[Path],
    options: TranscodeOptions,
    work: Path,
    seconds: float,
    s3: MotoServer,
) -> tuple[Run, dict[str, float]]:
    """Transcode the clips through Celery + S3; the run and the CPU seconds of its parts."""
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3.client.create_bucket(Bucket=bucket)
    argv = transcode_argv(ffmpeg, Path("{in}"), Path("{out}"), options, threads=1)
    log_path = work / "celery.log"
    with flushed_redis(), log_path.open("ab") as log:
        worker = subprocess.Popen(
            [
                *(venv_bin("celery"), "-A", "peers_celery", "worker", "-P", "prefork"),
                *("-c", str(PARALLEL), "-l", "WARNING", "-n", "grid@%h"),
                *("--without-gossip", "--without-mingle", "--without-heartbeat"),
            ],
            cwd=Path(__file__).resolve().parent,
            env=peer_env(
                {
                    "BENCH_S3_URL": s3.url,
                    "BENCH_CELERY_PREFETCH": "1",
                    "BENCH_CELERY_ACKS_LATE": "1",
                }
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            import peers_celery

            for result in [peers_celery.noop.delay() for _ in range(WARM_UP)]:
                result.get(timeout=60)
            workers = psutil.Process(worker.pid)
            before = cpu_seconds([workers]), s3.cpu_s()
            meter = CpuMeter()
            started = time.perf_counter()
            pending = []
            for clip in clips:
                key = f"inputs/{clip.name}"
                s3.client.upload_file(str(clip), bucket, key)
                pending.append(
                    peers_celery.transcode.delay(bucket, key, f"outputs/{clip.name}", argv)
                )
            outputs = [r.get(timeout=RUN_TIMEOUT_S) for r in pending]
            wall = time.perf_counter() - started
            cpu = meter.read()
            cpu_s = {
                "celery_workers": round(cpu_seconds([workers]) - before[0], 2),
                "moto_s3": round(s3.cpu_s() - before[1], 2),
            }
        except Exception as error:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise BenchError(f"celery run failed: {error}\n{tail}") from error
        finally:
            kill_tree(worker)
    _check_outputs(ffmpeg, s3, bucket, outputs, work / "check", options, seconds)
    return Run(wall, *cpu, len(clips)), cpu_s


def _check_outputs(  # noqa: PLR0917 - one call site
    ffmpeg: str,
    s3: MotoServer,
    bucket: str,
    outputs: list[dict[str, Any]],
    folder: Path,
    options: TranscodeOptions,
    seconds: float,
) -> None:
    """Every output is in S3, as large as the task said, and a valid MP4; then empty the
    bucket (moto keeps objects in memory)."""
    folder.mkdir()
    try:
        for output in outputs:
            local = folder / Path(output["key"]).name
            s3.client.download_file(bucket, output["key"], str(local))
            if local.stat().st_size != output["size"]:
                raise BenchError(f"celery output {output['key']}: size differs from the task's")
            problem = mp4_problem(ffmpeg, local, options.height, seconds)
            if problem:
                raise BenchError(f"celery output {problem}")
            local.unlink()
    finally:
        listed = s3.client.list_objects_v2(Bucket=bucket).get("Contents", [])
        for item in listed:
            s3.client.delete_object(Bucket=bucket, Key=item["Key"])
        with contextlib.suppress(Exception):
            s3.client.delete_bucket(Bucket=bucket)
