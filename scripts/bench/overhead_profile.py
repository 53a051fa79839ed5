"""Where batchfarm's no-op time goes: the overhead benchmark's profile, phase by phase.

The end-to-end run has the manager and the node share the machine. Here the same job runs
in phases, one part at a time, on one state folder:

1. submit: ``submit_job`` with no process running (plan, record, enqueue);
2. node alone: ``batchfarm node`` (2 workers) until the task queue is empty (every
   completion sent, every message deleted); no manager runs, so completion events wait in
   their queue. CPU is sampled per process, and the most messages the workers held;
3. manager alone: ``batchfarm manager`` records the waiting events until the job is done
   (its rate from the store's ``updated_at`` stamps, so its start-up does not count);
4. results under cProfile: the state as it was after phase 2 (files copied then) is
   recorded again in this process by the manager's own ``ResultsProcessor``, profiled, and
   its time split by what it waits on: queue receive and delete, decoding, recording runs,
   and advancing the job (store reads and writes);
5. the node under cProfile (``overhead_nodeprof.py``), on at most 3,000 tasks: the busiest
   functions of the supervisor and of each worker, and how many messages the workers held.

Also the embedded queue's floor (two processes doing receive(10) + delete_batch, as in the
node benchmark). Used by ``overhead_bench.py``.
"""

from __future__ import annotations

import cProfile
import multiprocessing as mp
import pstats
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from grid_procs import Grid, check_all_once, noop_spec
from node_runs import PARALLEL, RUN_TIMEOUT_S, BenchError, run_queue_floor
from overhead_nodeprof import profile_node

from batchfarm.actors.backends import COMPLETIONS, open_queue, open_task_queues
from batchfarm.actors.manager.plan import SpecPlanner
from batchfarm.actors.manager.results import ResultsProcessor

#: No-op tasks the profiled node runs (cProfile slows it several-fold).
NODE_PROFILE_TASKS = 3000
#: The results processor's calls, by what the time goes to (function name, file's end).
PARTS = {
    "queue receive": ("receive", "queue/local.py"),
    "queue delete": ("delete_batch", "queue/local.py"),
    "decode events": ("decode_body", "codec.py"),
    "record runs (store)": ("record_runs", "store/jobs.py"),
    "advance jobs (store reads + writes)": ("_advance", "manager/results.py"),
}


def run_phases(count: int, work: Path, prefetch: int) -> dict[str, Any]:
    """Every phase on ``count`` no-op tasks; returns the figures (see the module doc)."""
    figures: dict[str, Any] = {"tasks": count}
    with Grid(work / "split", prefetch=prefetch) as grid:
        started = time.perf_counter()
        job_id = grid.submit(noop_spec(count))
        figures["submit_s"] = round(time.perf_counter() - started, 3)

        node = _node_alone(grid)
        snapshot = work / "snapshot"
        _copy_state(grid.state, snapshot)
        figures["manager_alone"] = _manager_alone(grid, job_id, count)
        tasks = check_all_once(grid.store, job_id, "noop", count)
        first = min(t.started_at for t in tasks)
        handlers = max(t.finished_at for t in tasks) - first
        # Settled: every completion sent and every message deleted (the queue drained).
        node["first_start_to_settled_s"] = round(node.pop("drained_at") - first, 3)
        node["tasks_per_s"] = round(count / node["first_start_to_settled_s"], 1)
        node["handler_span_s"] = round(handlers, 3)
        node["cpu_ms_per_task"] = round(1000 * node["cpu_s"]["total"] / count, 3)
        figures["node_alone"] = node
        settings = grid.settings

    restored = work / "profiled"
    _copy_state(snapshot, restored / "state")
    state_settings = _with_state(settings, restored / "state")
    figures["results_profile"] = _profile_results(state_settings, job_id, count)
    figures["node_profile"] = profile_node(
        min(count, NODE_PROFILE_TASKS), work / "node-profile", prefetch
    )
    with_floor = work / "floor"
    with_floor.mkdir()
    floor = run_queue_floor(count, with_floor, mp.get_context("spawn"))
    figures["queue_floor_msgs_per_s"] = round(floor.rate, 1)
    return figures


def _node_alone(grid: Grid) -> dict[str, Any]:
    """Run the node until the task queue is drained; its span and CPU by process."""
    sampler = _CpuSampler()
    launched = time.perf_counter()
    grid.start("node")
    sampler.watch(psutil.Process(grid.procs["node"].pid))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    held = 0
    with open_task_queues(grid.settings.queue) as queues:
        while (depth := queues.depth()).backlog:
            held = max(held, depth.in_flight)
            grid.check_alive()
            if time.monotonic() > deadline:
                raise BenchError("node alone: tasks left at the deadline")
            time.sleep(0.25)  # a depth query on a long queue is not free
    drained_at = time.time()
    drained = time.perf_counter() - launched
    cpu = sampler.stop()
    grid.stop("node")
    return {
        "launch_to_drained_s": round(drained, 3),
        "drained_at": drained_at,
        "max_in_flight": held,
        "cpu_s": cpu,
    }


def _manager_alone(grid: Grid, job_id: str, count: int) -> dict[str, Any]:
    """Start the manager on the waiting events; its recording rate and CPU."""
    launched = time.perf_counter()
    grid.start("manager")
    process = psutil.Process(grid.procs["manager"].pid)
    grid.wait(job_id, RUN_TIMEOUT_S)
    wall = time.perf_counter() - launched
    times = process.cpu_times()
    grid.stop("manager")
    stamps = [t.updated_at for t in grid.store.tasks(job_id, stage="noop", limit=None)]
    span = max(stamps) - min(stamps)
    job = grid.store.job(job_id)
    assert job is not None
    assert job.finished_at is not None
    return {
        "launch_to_done_s": round(wall, 3),
        "record_span_s": round(span, 3),
        "recorded_per_s": round(count / span, 1),
        "last_record_to_job_done_s": round(job.finished_at - max(stamps), 3),
        "cpu_s": round(times.user + times.system, 2),
        "cpu_ms_per_task": round(1000 * (times.user + times.system) / count, 3),
    }


def _profile_results(settings: Any, job_id: str, count: int) -> dict[str, Any]:
    """Record the waiting events in this process with the manager's ResultsProcessor."""
    from batchfarm.actors.backends import open_store

    store = open_store(settings.store)
    tasks = open_task_queues(settings.queue)
    completions = open_queue(settings.queue, COMPLETIONS)

    def stored_spec(wanted: str) -> dict[str, Any]:
        job = store.job(wanted)
        if job is None:
            raise BenchError(f"job {wanted} is not in the restored store")
        return dict(job.spec)

    processor = ResultsProcessor(
        store,
        tasks,
        completions,
        SpecPlanner(stored_spec, settings.tasks),
        visibility_s=settings.queue.visibility_timeout,
    )
    profiler = cProfile.Profile()
    steps = 0
    started = time.perf_counter()
    profiler.enable()
    try:
        while processor.step(wait_s=0):
            steps += 1
    finally:
        profiler.disable()
        wall = time.perf_counter() - started
        job = store.job(job_id)
        tasks.close()
        completions.close()
        store.close()
    if job is None or job.state != "succeeded":
        raise BenchError(f"profiled results: job {job_id} ended {job and job.state}")
    stats = pstats.Stats(profiler)
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    parts = {
        label: round(_cumulative(table, name, suffix), 3) for label, (name, suffix) in PARTS.items()
    }
    parts["other"] = round(wall - sum(parts.values()), 3)
    top = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:12]
    return {
        "steps": steps,
        "events_per_step": round(count / max(steps, 1), 2),
        "profiled_wall_s": round(wall, 3),
        "profiled_events_per_s": round(count / wall, 1),
        "ms_per_step": {k: round(1000 * v / max(steps, 1), 3) for k, v in parts.items()},
        "seconds": parts,
        "top_self_time": [
            {
                "function": f"{Path(f).name}:{line} {name}",
                "calls": row[1],
                "self_s": round(row[2], 3),
            }
            for (f, line, name), row in top
        ],
    }


def _cumulative(
    table: dict[tuple[str, int, str], tuple[Any, ...]], name: str, suffix: str
) -> float:
    return sum(
        row[3] for (file, _, func), row in table.items() if func == name and file.endswith(suffix)
    )


def _copy_state(source: Path, target: Path) -> None:
    """Copy the SQLite files of a state folder (no process has them open)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name.startswith(("queue.db", "grid.db")):
            shutil.copy2(path, target / path.name)


def _with_state(settings: Any, state: Path) -> Any:
    from batchfarm.actors.settings import load

    return load(None, {"BATCHFARM_GRID_STATE_DIR": str(state)}).settings


class _CpuSampler:
    """CPU seconds of a process and its children, sampled until stopped (children that exit
    keep their last sample), split into the process itself and its workers."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, root: psutil.Process) -> None:
        self._root = root
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.2)

    def _sample(self) -> None:
        try:
            members = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for member in members:
            try:
                times = member.cpu_times()
                role = "supervisor" if member.pid == self._root.pid else "workers"
                self._last[member.pid] = (role, times.user + times.system)
            except psutil.NoSuchProcess:
                continue

    def stop(self) -> dict[str, float]:
        self._sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        split = {"supervisor": 0.0, "workers": 0.0}
        for role, seconds in self._last.values():
            split[role] += seconds
        split["total"] = split["supervisor"] + split["workers"]
        split["per_worker"] = split["workers"] / PARALLEL
        return {k: round(v, 2) for k, v in split.items()}
