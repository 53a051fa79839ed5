"""The whole grid on AWS-compatible servers: SQS and S3 on moto, the store on PostgreSQL.

:class:`AwsGrid` names a fresh bucket (made with the AWS CLI, as a user makes one), a fresh
queue prefix (the grid creates its queues) and a fresh PostgreSQL database, and starts a real
``batchfarm manager`` and real ``batchfarm node`` processes on them through
:class:`~tests.manager.managerproc.ManagerGrid`. Nodes may be pointed at another endpoint
than the manager (the fault tests' relay in front of moto).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3

from batchfarm.actors.cli.client import ApiError
from batchfarm.actors.settings import Settings
from tests.aws import REGION, MotoServer, unique_name
from tests.cli.grid import api, cli, wait_state
from tests.manager.managerproc import ManagerGrid, ManagerProcess
from tests.node.nodeproc import NodeProcess

#: Where the grid keeps its objects in its bucket ([storage] url = s3://BUCKET/PREFIX).
PREFIX = "grid"
FINISHED = ("succeeded", "failed", "cancelled")


def aws_cli(moto: MotoServer, *args: str) -> str:
    """Run the AWS CLI (the venv's ``aws``) against moto, as a user would; its stdout."""
    command = [str(Path(sys.executable).with_name("aws")), "--endpoint-url", moto.endpoint, *args]
    done = subprocess.run(
        [*command, "--region", REGION], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"aws {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


class AwsGrid:
    """A manager and nodes on ``sqs://``, ``s3://`` (moto) and PostgreSQL; closed at the end."""

    def __init__(self, tmp_path: Path, moto: MotoServer, store_url: str) -> None:
        self.moto = moto
        self.bucket = unique_name("bf-grid")
        self.queue_prefix = unique_name("bf-grid")
        self.storage_url = f"s3://{self.bucket}/{PREFIX}"
        aws_cli(moto, "s3", "mb", f"s3://{self.bucket}")
        self.grid = ManagerGrid(
            tmp_path,
            queue_url=f"sqs://{self.queue_prefix}",
            queue_endpoint_url=moto.endpoint,
            storage_url=self.storage_url,
            storage_endpoint_url=moto.endpoint,
            store_url=store_url,
        )
        self.s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name=REGION)

    @property
    def settings(self) -> Settings:
        return self.grid.settings

    @property
    def env(self) -> dict[str, str]:
        """The environment of a ``batchfarm`` CLI run against this grid."""
        return self.grid.environment

    def manager(self) -> ManagerProcess:
        return self.grid.manager()

    def node(self, name: str, endpoint: str | None = None, **more: Any) -> NodeProcess:
        """A node of one unpinned worker (two share this machine's cores); ``endpoint`` is
        where it reaches SQS and S3 (default: moto itself)."""
        if endpoint is not None:
            more = {"queue_endpoint_url": endpoint, "storage_endpoint_url": endpoint, **more}
        return self.grid.node(name, node_workers=1, node_pin="false", **more)

    def wait_ready(self, nodes: int, timeout: float = 60.0) -> None:
        """Wait until the manager's API answers and ``nodes`` nodes report themselves up."""
        deadline = time.monotonic() + timeout
        while True:
            for process in self.grid.started:
                if process.proc.poll() is not None:
                    raise AssertionError(f"{process.log.name} exited:\n{process.output()[-3000:]}")
            try:
                with api(self.env) as client:
                    if sum(node.get("state") == "up" for node in client.nodes()) >= nodes:
                        return
            except ApiError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise AssertionError(f"{nodes} nodes not up after {timeout} s:\n{self.logs()}")
            time.sleep(0.2)

    def submit(self, spec: Path) -> str:
        """``batchfarm submit SPEC`` as a user runs it; the job's id."""
        done = cli(self.env, "submit", str(spec))
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def wait(self, job_id: str, timeout: float = 60.0) -> str:
        """Wait until the job has finished; its state."""
        return wait_state(self.env, job_id, FINISHED, timeout)

    def objects(self, under: str) -> dict[str, bytes]:
        """The bucket's objects under ``PREFIX/under``, by key below the grid's prefix."""
        found: dict[str, bytes] = {}
        pages = self.s3.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=f"{PREFIX}/{under}"):
            for item in page.get("Contents", []):
                body = self.s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                found[item["Key"].removeprefix(f"{PREFIX}/")] = body
        return found

    def logs(self) -> str:
        """Every process's log so far, for failure messages."""
        return "\n".join(f"--- {p.log.name}\n{p.output()[-3000:]}" for p in self.grid.started)

    def close(self) -> None:
        self.grid.close()
