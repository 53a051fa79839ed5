"""A batchfarm grid as real processes for the grid and overhead benchmarks.

``batchfarm manager`` and ``batchfarm node`` (2 workers) run as the README starts them,
with embedded backends in a fresh state folder; jobs are submitted in this process with
``submit_job`` and followed in the store until the manager records them done. Scripts do not
import tests, so the few lines of ``tests/ports.py`` and ``tests/node/nodeproc.py`` this
needs are repeated here.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from node_runs import PARALLEL, BenchError

from batchfarm.actors.backends import open_blobs, open_store, open_task_queues
from batchfarm.actors.backends.store import Store
from batchfarm.actors.manager.spec import JobSpec, parse_spec
from batchfarm.actors.manager.submit import submit_job
from batchfarm.actors.settings import Settings, load

#: How often the bench reads the job's state from the store while it waits.
POLL_S = 0.05
#: Ports below Linux's ephemeral range, so nothing dialling out can be handed one of them.
PORTS = (20000, 32000)


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1."""
    while True:
        port = random.randrange(*PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds of the processes and their live children."""
    total = 0.0
    seen: set[int] = set()
    for process in processes:
        try:
            tree = [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for member in tree:
            if member.pid in seen:
                continue
            seen.add(member.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                times = member.cpu_times()
                total += times.user + times.system
    return total


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill a process we started and everything under it; a failed run leaves no strays."""
    try:
        parent = psutil.Process(proc.pid)
        tree = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    if proc.poll() is None:
        proc.wait(10)


@dataclass
class JobRun:
    """One timed job: submit to the manager recording it succeeded."""

    job_id: str
    #: Seconds from calling submit_job to seeing the job succeeded in the store.
    wall_s: float
    #: Seconds submit_job took (plan, upload the inputs, record, enqueue).
    submit_s: float
    #: Epoch seconds when submit_job was called.
    submitted_at: float
    #: CPU seconds spent over the run, by process: manager, node (supervisor and workers).
    cpu_s: dict[str, float]


class Grid:
    """A manager and one node of ``workers`` workers (pinned unless told) on a fresh state
    folder; ``env`` adds BATCHFARM_* settings (other backends: ``grid_aws.py``)."""

    def __init__(
        self,
        work: Path,
        *,
        prefetch: int = 1,
        workers: int = PARALLEL,
        pin: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.work = work.resolve()
        self.state = self.work / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFARM_")}
        self.env.update(
            BATCHFARM_GRID_STATE_DIR=str(self.state),
            BATCHFARM_NODE_WORKERS=str(workers),
            BATCHFARM_NODE_PIN=str(pin).lower(),
            BATCHFARM_NODE_PREFETCH=str(prefetch),
            BATCHFARM_API_LISTEN=f"http://127.0.0.1:{free_port()}",
            BATCHFARM_NODE_MANAGER=f"tcp://127.0.0.1:{free_port()}",
        )
        self.env.update(env or {})
        self.settings: Settings = load(None, self.env).settings
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._store: Store | None = None

    # -- processes ---------------------------------------------------------------------------

    def start(
        self, *roles: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        """Start ``manager`` and/or ``node`` (both by default), each logging to a file.

        ``env`` adds variables to the grid's environment; ``args`` go to each command.
        """
        for role in roles or ("manager", "node"):
            command = [sys.executable, "-m", "batchfarm.actors.cli", role, *args]
            if role == "node":
                command += ["--name", "bench"]
            with (self.work / f"{role}.log").open("ab") as log:
                self.procs[role] = subprocess.Popen(
                    command, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
                )

    def stop(self, role: str) -> None:
        """Kill one of the processes (and its workers)."""
        proc = self.procs.pop(role, None)
        if proc is not None:
            kill_tree(proc)

    def close(self) -> None:
        """Kill every process this grid started and close the store."""
        for role in list(self.procs):
            self.stop(role)
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Grid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_alive(self) -> None:
        """Fail the run, with the log's tail, if a grid process has exited."""
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                log = (self.work / f"{role}.log").read_text(errors="replace")[-3000:]
                raise BenchError(f"batchfarm {role} exited with {proc.returncode}:\n{log}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each running process, its children included."""
        return {role: cpu_seconds([psutil.Process(proc.pid)]) for role, proc in self.procs.items()}

    # -- jobs ----------------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.settings.store)
        return self._store

    def submit(self, spec: JobSpec) -> str:
        """Submit a checked spec as the manager would: upload, record, enqueue."""
        blobs = open_blobs(self.settings.storage)
        tasks = open_task_queues(self.settings.queue)
        try:
            return submit_job(
                spec, store=self.store, blobs=blobs, tasks=tasks, defaults=self.settings.tasks
            )
        finally:
            tasks.close()
            blobs.close()

    def wait(self, job_id: str, timeout: float) -> float:
        """Wait until the store says the job succeeded; return when (perf_counter)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.store.job(job_id)
            now = time.perf_counter()
            if job is not None and job.state == "succeeded":
                return now
            if job is not None and job.state in ("failed", "cancelled"):
                raise BenchError(f"job {job_id} {job.state}: {job.reason}")
            self.check_alive()
            if time.monotonic() > deadline:
                state = None if job is None else job.state
                raise BenchError(f"job {job_id} not done after {timeout:.0f} s (state {state})")
            time.sleep(POLL_S)

    def run(self, spec: JobSpec, timeout: float) -> JobRun:
        """Submit ``spec`` and wait for it: timed from the submit call to the recorded end."""
        before = self.cpu()
        submitted_at = time.time()
        started = time.perf_counter()
        job_id = self.submit(spec)
        submitted = time.perf_counter()
        done = self.wait(job_id, timeout)
        after = self.cpu()
        cpu = {role: round(after[role] - before.get(role, 0.0), 2) for role in after}
        return JobRun(job_id, done - started, submitted - started, submitted_at, cpu)

    def warm_up(self, timeout: float = 60.0) -> None:
        """Run a small no-op job, so both processes and every worker are up before timing."""
        spec = noop_spec(4 * PARALLEL, name="warm-up")
        self.wait(self.submit(spec), timeout)


def noop_spec(parts: int, name: str = "overhead") -> JobSpec:
    """A one-stage job of ``parts`` no-op tasks."""
    tree: dict[str, Any] = {"name": name, "stages": [{"handler": "noop", "parts": parts}]}
    return parse_spec(tree, source="bench", base_dir=Path.cwd())


def check_all_once(store: Store, job_id: str, stage: str, count: int) -> list[Any]:
    """Every task of the stage succeeded, each run recorded once; returns the tasks."""
    tasks = store.tasks(job_id, stage=stage, limit=None)
    if sorted(t.part for t in tasks) != list(range(count)):
        raise BenchError(f"job {job_id}: {len(tasks)} tasks in the store, expected {count}")
    wrong = [t for t in tasks if t.state != "succeeded" or t.attempts != 1 or t.duplicate_runs]
    if wrong:
        t = wrong[0]
        raise BenchError(
            f"job {job_id}: {len(wrong)} tasks not succeeded exactly once; part {t.part}:"
            f" state {t.state}, attempts {t.attempts}, duplicate runs {t.duplicate_runs}"
        )
    return tasks
