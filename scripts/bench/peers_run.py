"""The overhead benchmark's peers: Celery, Dramatiq and RQ on Redis, Huey on SQLite.

Each peer runs as users start it (its own worker command, 2 worker processes, in the
configuration that is fastest for no-op tasks), with its task module from this folder
(``peers_celery.py``, ``peers_dramatiq.py``, ``peers_rq.py``, ``peers_huey.py``). A run:
start the workers, run a few warm-up tasks to the end (so every worker is up), then time from
the first enqueue to the last result stored, then check that every task has its result.
Redis keys live in one dedicated database, flushed before and after each run.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from grid_procs import POLL_S, cpu_seconds, kill_tree
from node_runs import PARALLEL, RUN_TIMEOUT_S, BenchError

HERE = Path(__file__).resolve().parent
REDIS_URL = "redis://127.0.0.1:6379/5"
#: Keys whose existence is checked per round trip while waiting for results.
WINDOW = 1000
#: Tasks each peer runs before the timed run, so that its workers are all up.
WARM_UP = 4 * PARALLEL
PEERS = ("celery", "dramatiq", "rq", "huey", "huey-sync")

#: How each peer is configured, for the report.
CONFIGS = {
    "celery": "prefork -c 2, prefetch multiplier {celery_prefetch}, early ack,"
    " --without-gossip/mingle/heartbeat; Redis broker + Redis result backend",
    "dramatiq": "2 processes x 8 threads; Redis broker + Results middleware (Redis backend)",
    "rq": "2 x rq worker -w SimpleWorker (no fork per job); enqueue_many in pipelines of 500;"
    " results kept (default result_ttl)",
    "huey": "SqliteHuey, consumer -k process -w 2, polling delay 1 ms (max 50 ms),"
    " fsync {huey_fsync}; results stored (store_none)",
    "huey-sync": "as huey, with SQLite's default synchronous=FULL (every commit synced,"
    " as batchfarm's sends are)",
}


@dataclass
class PeerRun:
    """One timed no-op run of a peer."""

    tasks: int
    #: Seconds from the first enqueue to seeing the last result stored.
    wall_s: float
    #: Seconds the client took to enqueue every task.
    submit_s: float
    #: CPU seconds over the run: the peer's workers, the Redis server, this client.
    cpu_s: dict[str, float]

    @property
    def rate(self) -> float:
        return self.tasks / self.wall_s


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def redis_server() -> psutil.Process | None:
    """The Redis server process at port 6379 (for its CPU time), if this user can see it."""
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "redis-server":
            with contextlib.suppress(psutil.Error):
                if any(c.laddr and c.laddr.port == 6379 for c in process.net_connections()):
                    return process
    return None


def peer_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a peer's worker command: this folder importable, Redis db set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    env["BENCH_REDIS_URL"] = REDIS_URL
    env.update(extra)
    return env


def venv_bin(name: str) -> str:
    """A console script of the running venv (``celery``, ``rq``, ...)."""
    return str(Path(sys.executable).parent / name)


def wait_keys(exists: Callable[[list[str]], int], keys: list[str], deadline: float) -> float:
    """Wait until every key exists (``exists(chunk)`` counts those that do); return when.

    Tasks finish roughly in enqueue order, so the keys are checked a window at a time from
    the front: the wait costs about one round trip per window, not one per key per poll.
    """
    start = 0
    while start < len(keys):
        chunk = keys[start : start + WINDOW]
        if exists(chunk) == len(chunk):
            start += len(chunk)
            continue
        if time.monotonic() > deadline:
            raise BenchError(f"{len(keys) - start} of {len(keys)} results missing at the deadline")
        time.sleep(POLL_S)
    return time.perf_counter()


class Peer:
    """A peer's worker processes and its client; subclasses fill in the four steps."""

    name = ""

    def __init__(self, work: Path, options: dict[str, Any]) -> None:
        self.work = work.resolve()
        self.options = options
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        log = (self.work / f"{self.name}-{len(self.procs)}.log").open("ab")
        with log:
            self.procs.append(
                subprocess.Popen(
                    argv,
                    cwd=HERE,
                    env=peer_env(extra_env or {}),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def check_alive(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc.poll() is not None:
                log = (self.work / f"{self.name}-{index}.log").read_text(errors="replace")
                raise BenchError(
                    f"{self.name} worker exited with {proc.returncode}:\n{log[-3000:]}"
                )

    def close(self) -> None:
        for proc in self.procs:
            kill_tree(proc)
        self.procs = []

    def workers_cpu(self) -> float:
        return cpu_seconds([psutil.Process(p.pid) for p in self.procs if p.poll() is None])

    # The four steps.
    def start(self) -> None:
        raise NotImplementedError

    def submit(self, count: int) -> Any:
        raise NotImplementedError

    def wait(self, handle: Any, deadline: float) -> float:
        raise NotImplementedError

    def verify(self, handle: Any, count: int) -> None:
        raise NotImplementedError


class CeleryPeer(Peer):
    name = "celery"

    def start(self) -> None:
        self.spawn(
            [
                *(venv_bin("celery"), "-A", "peers_celery", "worker", "-P", "prefork", "-c"),
                *(str(PARALLEL), "-l", "WARNING", "-n", "bench@%h"),
                *("--without-gossip", "--without-mingle", "--without-heartbeat"),
            ],
            {
                "BENCH_CELERY_PREFETCH": str(self.options["celery_prefetch"]),
                "BENCH_CELERY_ACKS_LATE": "0",
            },
        )
        import peers_celery

        self.app, self.task = peers_celery.app, peers_celery.noop
        warm = [self.task.delay() for _ in range(WARM_UP)]
        for result in warm:
            result.get(timeout=60)
            result.forget()
        self.redis = redis_client()

    def submit(self, count: int) -> list[str]:
        with self.app.producer_or_acquire() as producer:
            return [self.task.apply_async(producer=producer).id for _ in range(count)]

    def wait(self, handle: list[str], deadline: float) -> float:
        keys = [f"celery-task-meta-{task_id}" for task_id in handle]
        return wait_keys(lambda chunk: int(self.redis.exists(*chunk)), keys, deadline)

    def verify(self, handle: list[str], count: int) -> None:
        statuses: dict[str, int] = {}
        for start in range(0, len(handle), WINDOW):
            keys = [f"celery-task-meta-{t}" for t in handle[start : start + WINDOW]]
            for raw in self.redis.mget(keys):
                status = json.loads(raw)["status"] if raw else "missing"
                statuses[status] = statuses.get(status, 0) + 1
        _expect(self.name, statuses, "SUCCESS", count)


class DramatiqPeer(Peer):
    name = "dramatiq"

    def start(self) -> None:
        self.spawn(
            [
                *(venv_bin("dramatiq"), "peers_dramatiq", "--processes", str(PARALLEL)),
                *("--threads", str(self.options["dramatiq_threads"])),
            ]
        )
        import peers_dramatiq

        self.backend, self.actor = peers_dramatiq.backend, peers_dramatiq.noop
        for message in [self.actor.send() for _ in range(WARM_UP)]:
            self.backend.get_result(message, block=True, timeout=60_000)
        self.redis = redis_client()

    def submit(self, count: int) -> list[str]:
        return [self.backend.build_message_key(self.actor.send()) for _ in range(count)]

    def wait(self, handle: list[str], deadline: float) -> float:
        return wait_keys(lambda chunk: int(self.redis.exists(*chunk)), handle, deadline)

    def verify(self, handle: list[str], count: int) -> None:
        statuses: dict[str, int] = {}
        for start in range(0, len(handle), WINDOW):
            with self.redis.pipeline(transaction=False) as pipe:
                for key in handle[start : start + WINDOW]:
                    pipe.lindex(key, 0)
                for raw in pipe.execute():
                    # A stored None is the no-op's result; an error is stored as a dict.
                    status = "missing" if raw is None else repr(json.loads(raw))
                    statuses[status] = statuses.get(status, 0) + 1
        _expect(self.name, statuses, "None", count)


class RqPeer(Peer):
    name = "rq"
    #: Jobs per enqueue_many pipeline: workers start on the first ones while the rest go in.
    CHUNK = 500

    def start(self) -> None:
        import peers_rq
        from rq import Queue

        for index in range(PARALLEL):
            self.spawn(
                [
                    *(venv_bin("rq"), "worker", "-w", "rq.worker.SimpleWorker", "-u", REDIS_URL),
                    *("-q", "--name", f"bench-rq-{index}", "default"),
                ]
            )
        self.redis = redis_client()
        self.queue = Queue("default", connection=self.redis)
        self.function = peers_rq.noop
        self.finished_key = self.queue.finished_job_registry.key
        warm = [self.queue.enqueue(self.function) for _ in range(WARM_UP)]
        deadline = time.monotonic() + 60
        while self.redis.zcard(self.finished_key) < len(warm):
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError("rq: warm-up jobs not finished in 60 s")
            time.sleep(POLL_S)
        self.base = int(self.redis.zcard(self.finished_key))

    def submit(self, count: int) -> list[str]:
        from rq import Queue

        ids: list[str] = []
        for start in range(0, count, self.CHUNK):
            size = min(self.CHUNK, count - start)
            jobs = self.queue.enqueue_many([Queue.prepare_data(self.function) for _ in range(size)])
            ids += [job.id for job in jobs]
        return ids

    def wait(self, handle: list[str], deadline: float) -> float:
        target = self.base + len(handle)
        while self.redis.zcard(self.finished_key) < target:
            if time.monotonic() > deadline:
                raise BenchError("rq: results missing at the deadline")
            time.sleep(POLL_S)
        return time.perf_counter()

    def verify(self, handle: list[str], count: int) -> None:
        statuses: dict[str, int] = {}
        for start in range(0, len(handle), WINDOW):
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in handle[start : start + WINDOW]:
                    pipe.hget(f"rq:job:{job_id}", "status")
                    pipe.zscore(self.finished_key, job_id)
                replies = pipe.execute()
            for status, score in zip(replies[::2], replies[1::2], strict=True):
                key = "missing" if status is None or score is None else status.decode()
                statuses[key] = statuses.get(key, 0) + 1
        _expect(self.name, statuses, "finished", count)


class HueyPeer(Peer):
    name = "huey"

    def fsync(self) -> str:
        return str(self.options["huey_fsync"])

    def start(self) -> None:
        db = self.work / "huey.db"
        env = {"BENCH_HUEY_DB": str(db), "BENCH_HUEY_FSYNC": self.fsync()}
        os.environ.update(env)  # the client below opens the same file
        self.spawn(
            [
                *(venv_bin("huey_consumer"), "peers_huey.huey", "-k", "process"),
                *("-w", str(PARALLEL), "-d", "0.001", "-m", "0.05", "-b", "1.1", "-n", "-q"),
            ],
            env,
        )
        import peers_huey

        # Its instance is made at import from the environment: this run's file and fsync.
        module = importlib.reload(peers_huey)
        self.huey, self.task = module.huey, module.noop
        for result in [self.task() for _ in range(WARM_UP)]:
            result.get(blocking=True, timeout=60)

    def submit(self, count: int) -> list[str]:
        return [self.task().id for _ in range(count)]

    def wait(self, handle: list[str], deadline: float) -> float:
        storage = self.huey.storage
        while storage.result_store_size() < len(handle):
            if time.monotonic() > deadline:
                raise BenchError("huey: results missing at the deadline")
            time.sleep(POLL_S)
        return time.perf_counter()

    def verify(self, handle: list[str], count: int) -> None:
        items = self.huey.storage.result_items()
        statuses: dict[str, int] = {}
        for task_id in handle:
            raw = items.get(task_id)
            status = "missing" if raw is None else repr(self.huey.serializer.deserialize(raw))
            statuses[status] = statuses.get(status, 0) + 1
        _expect(self.name, statuses, "None", count)


class HueySyncPeer(HueyPeer):
    """Huey with SQLite's default durability: every commit synced, as batchfarm's sends."""

    name = "huey-sync"

    def fsync(self) -> str:
        return "default"


def _expect(name: str, statuses: dict[str, int], good: str, count: int) -> None:
    if statuses.get(good, 0) != count:
        raise BenchError(f"{name}: results by status {statuses}, expected {count} x {good}")


PEER_CLASSES: dict[str, type[Peer]] = {
    "celery": CeleryPeer,
    "dramatiq": DramatiqPeer,
    "rq": RqPeer,
    "huey": HueyPeer,
    "huey-sync": HueySyncPeer,
}


@contextlib.contextmanager
def flushed_redis() -> Iterator[None]:
    """The dedicated Redis database, empty before and after."""
    client = redis_client()
    client.flushdb()
    try:
        yield
    finally:
        client.flushdb()
        client.close()


def run_peer(name: str, count: int, work: Path, options: dict[str, Any]) -> PeerRun:
    """One timed run of ``count`` no-op tasks through peer ``name`` (fresh workers)."""
    peer = PEER_CLASSES[name](work, options)
    server = redis_server()
    with flushed_redis():
        try:
            peer.start()
            redis_before = _cpu(server)
            workers_before = peer.workers_cpu()
            client_before = time.process_time()
            started = time.perf_counter()
            handle = peer.submit(count)
            submitted = time.perf_counter()
            done = peer.wait(handle, time.monotonic() + RUN_TIMEOUT_S)
            cpu = {
                "workers": peer.workers_cpu() - workers_before,
                "redis": _cpu(server) - redis_before,
                "client": time.process_time() - client_before,
            }
            peer.check_alive()
            peer.verify(handle, count)
        finally:
            peer.close()
    if server is None:
        del cpu["redis"]  # not visible to this user: left out rather than shown as 0
    return PeerRun(count, done - started, submitted - started, _rounded(cpu))


def _cpu(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


def _rounded(cpu: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in cpu.items()}
