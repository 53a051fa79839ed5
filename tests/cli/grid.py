"""A whole grid for the CLI tests: ``batchfarm up`` as a real process, and the CLI as another."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from batchfarm.actors.backends import open_blobs
from batchfarm.actors.cli.client import ApiClient
from batchfarm.actors.settings import Settings, load
from tests.node.nodeproc import BASE_ENV, kill_tree
from tests.ports import free_port
from tests.worker.grid import wait_for

#: The line ``batchfarm up`` prints once the manager's API answers.
READY = "batchfarm up: API at "


@contextlib.contextmanager
def running_grid(folder: Path, token: str) -> Iterator[dict[str, str]]:
    """``batchfarm up --workers 2`` under ``folder`` with an API token; yields its environment."""
    env = {**grid_env(folder / "state"), "BATCHFARM_API_TOKEN": token}
    up = UpProcess(folder, env, "--workers", "2")
    try:
        up.wait_ready()
        yield env
    finally:
        up.close()


def grid_env(state: Path) -> dict[str, str]:
    """BATCHFARM_* variables for a grid under ``state`` with its own API and telemetry ports."""
    return {
        **BASE_ENV,
        "BATCHFARM_GRID_STATE_DIR": str(state),
        "BATCHFARM_API_LISTEN": f"http://127.0.0.1:{free_port()}",
        "BATCHFARM_NODE_MANAGER": f"tcp://127.0.0.1:{free_port()}",
        "BATCHFARM_NODE_HEARTBEAT_INTERVAL": "0.3",
    }


def environ(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without its BATCHFARM_* settings, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFARM_")}
    return base | env


def settings_of(env: dict[str, str]) -> Settings:
    """The settings a CLI run with ``env`` loads (to look at the blob store directly)."""
    return load(None, env).settings


def blob_keys(env: dict[str, str], prefix: str = "jobs/") -> list[str]:
    """Every key under ``prefix`` in the grid's blob store."""
    blobs = open_blobs(settings_of(env).storage)
    try:
        return [info.key for info in blobs.iter_list(prefix)]
    finally:
        blobs.close()


def read_blob(env: dict[str, str], key: str) -> bytes:
    blobs = open_blobs(settings_of(env).storage)
    try:
        return blobs.read(key)
    finally:
        blobs.close()


def cli(
    env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``batchfarm ARGS`` as a user does, with the grid's environment."""
    return subprocess.run(
        [sys.executable, "-m", "batchfarm.actors.cli", *args],
        capture_output=True,
        text=True,
        env=environ(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


class UpProcess:
    """A ``batchfarm up`` process; it and every process under it are killed on close."""

    def __init__(self, folder: Path, env: dict[str, str], *args: str) -> None:
        self.env = env
        folder.mkdir(parents=True, exist_ok=True)
        self.out_path = folder / "up.out"
        self.err_path = folder / "up.err"
        self._out = self.out_path.open("wb")
        self._err = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchfarm.actors.cli", "up", *args],
            env=environ(env),
            stdout=self._out,
            stderr=self._err,
        )
        self.ps = psutil.Process(self.proc.pid)

    def stdout(self) -> str:
        self._out.flush()
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"up exited {self.proc.returncode}:\n{self.stderr()}")
            return READY in self.stdout()

        wait_for(ready, timeout, "batchfarm up to print where its API is")

    def children(self) -> dict[str, psutil.Process]:
        """The manager and node processes, by verb."""
        found = {}
        for child in self.ps.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                verb = child.cmdline()[-1]
                found[verb] = child
        return found

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"up did not exit in {timeout} s:\n{self.stderr()}") from None

    def close(self) -> None:
        kill_tree(self.ps, self.proc)
        self._out.close()
        self._err.close()


def api(env: dict[str, str]) -> ApiClient:
    """A client of the grid's API in this process, for waiting cheaply (close it after use)."""
    settings = settings_of(env)
    return ApiClient(settings.api.listen, settings.api.token)


def wait_state(env: dict[str, str], job_id: str, states: tuple[str, ...], timeout: float) -> str:
    """Poll the API (in this process: cheaper than a CLI run) until the job is in ``states``."""
    deadline = time.monotonic() + timeout
    with api(env) as client:
        while True:
            state = str(client.job(job_id)["state"])
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {state} after {timeout} s, not {states}")
            time.sleep(0.1)
