"""Run ``batchfarm node`` as a real process for the node tests, and look at its workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from tests.worker.grid import wait_for

#: Settings every node test shares, as BATCHFARM_* variables (quick polls and retries).
BASE_ENV = {
    "BATCHFARM_QUEUE_WAIT": "0.5",
    "BATCHFARM_TASKS_RETRY_BACKOFF": "0.2",
    "BATCHFARM_TASKS_RETRY_BACKOFF_MAX": "1.0",
    "BATCHFARM_NODE_RESTART_BACKOFF": "0.1",
    "BATCHFARM_NODE_HEARTBEAT_INTERVAL": "0.5",
    # Nobody listens here unless a test binds it: the node must not care.
    "BATCHFARM_NODE_MANAGER": "tcp://127.0.0.1:1",
}


class NodeProcess:
    """A ``batchfarm node`` process with its environment; killed at the end of the test."""

    def __init__(
        self,
        state: Path,
        name: str = "node-a",
        *args: str,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFARM_")}
        environ.update(BASE_ENV)
        environ["BATCHFARM_GRID_STATE_DIR"] = str(state)
        environ.update(env or {})
        self.log = state.parent / f"{name}.log"
        state.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("wb")
        command = [*prefix, sys.executable, "-m", "batchfarm.actors.cli", "node", "--name", name]
        self.proc = subprocess.Popen(
            [*command, *args], env=environ, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        self.ps = psutil.Process(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> list[psutil.Process]:
        """The live worker processes (the node's children running a worker actor)."""
        found = []
        for child in self.ps.children():
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def wait_workers(self, count: int, timeout: float = 20.0) -> list[psutil.Process]:
        wait_for(lambda: len(self.workers()) == count, timeout, f"{count} workers")
        return self.workers()

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node did not exit in {timeout} s:\n{self.output()}") from None

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        """Kill the node and everything under it (a failed test must not leave strays)."""
        kill_tree(self.ps, self.proc)
        self._log_file.close()


def kill_tree(ps: psutil.Process, proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``ps`` and every process under it, and reap ``proc`` (the same process)."""
    try:
        tree = [ps, *ps.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    if proc.poll() is None:
        proc.wait(10)


def gone(pids: list[int]) -> bool:
    """True when none of ``pids`` runs any more (zombies count as gone)."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def wait_exit(node: NodeProcess, timeout: float = 30.0) -> tuple[int, float]:
    started = time.monotonic()
    code = node.wait(timeout)
    return code, time.monotonic() - started


def kill_now(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def env_for(**values: Any) -> dict[str, str]:
    """BATCHFARM_<SECTION>_<KEY> variables from ``section_key=value`` keywords."""
    return {f"BATCHFARM_{key.upper()}": str(value) for key, value in values.items()}
