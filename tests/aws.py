"""moto's server mode as a real AWS-compatible endpoint for the tests.

``moto_server`` runs as its own process on a free loopback port, and boto3 talks to it over
HTTP exactly as it would to AWS: no client is patched. The session fixture ``moto`` (in
``tests/conftest.py``) starts one server for the whole run; tests keep their queues and
buckets apart by name (``unique_name``) rather than resetting the server under each other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.ports import free_port

#: The region every test resource lives in.
REGION = "us-east-1"
#: Credentials boto3's chain finds in the environment; moto accepts any.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass
class MotoServer:
    """A running ``moto_server``: its endpoint URL and its process."""

    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Stop the server and wait for it."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def moto_binary() -> str:
    """The ``moto_server`` of this interpreter's environment (the test extras install it)."""
    beside = Path(sys.executable).with_name("moto_server")
    if beside.exists():
        return str(beside)
    found = shutil.which("moto_server")
    if found is None:
        raise RuntimeError(
            "moto_server not found beside the interpreter or on PATH: "
            "install the test extras (pip install '.[test]')"
        )
    return found


def start_moto(log: Path, timeout_s: float = 30.0) -> MotoServer:
    """Start ``moto_server`` on a free loopback port and wait until it answers."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [moto_binary(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **CREDENTIALS},
        )
    server = MotoServer(endpoint, process, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"moto_server exited with {process.returncode}: {log.read_text()[-2000:]}"
            )
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1.0)
        except httpx.HTTPError:
            time.sleep(0.1)
            continue
        return server
    server.stop()
    raise RuntimeError(f"moto_server on {endpoint} did not answer within {timeout_s:g} s")


@contextlib.contextmanager
def aws_credentials() -> Iterator[None]:
    """:data:`CREDENTIALS` in this process's environment (children inherit them), then undone."""
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def unique_name(prefix: str) -> str:
    """A fresh resource name (queue prefix, bucket), so tests never share state."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
