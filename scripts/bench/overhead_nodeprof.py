"""A node's no-op run under cProfile, every thread of every process, and its queue depth.

Used by ``overhead_profile.py``. The node (``batchfarm node --until-empty``, 2 workers, no
manager) runs a job of no-op tasks with a ``sitecustomize`` module on its ``PYTHONPATH``
that profiles every thread of the supervisor and of each worker process and writes the
merged stats every 2 s. Meanwhile the task queue's depth is sampled: how many messages the
workers hold (in flight) beside how many completions they have sent. The profiler slows the
node several-fold: read the shares, not the rates.
"""

from __future__ import annotations

import pstats
import time
from pathlib import Path
from typing import Any

from grid_procs import Grid, noop_spec
from node_runs import RUN_TIMEOUT_S, BenchError

from batchfarm.actors.backends import COMPLETIONS, open_queue, open_task_queues

#: Written as ``sitecustomize.py``: Python imports it at start-up in every process.
SITECUSTOMIZE = '''\
"""Profile every thread of this process with cProfile; dump the merged stats every 2 s."""
import atexit, cProfile, os, pstats, sys, threading, time

_out = os.environ.get("BENCH_PROFILE_DIR")
if _out:
    _profiles = []
    _lock = threading.Lock()

    def _start(frame, event, arg):
        profile = cProfile.Profile()
        with _lock:
            _profiles.append(profile)
        sys.setprofile(None)
        profile.enable()

    class _Snapshot:
        def __init__(self, stats):
            self.stats = stats

        def create_stats(self):
            pass

    def _dump_once():
        path = os.path.join(_out, f"{os.getpid()}.prof")
        with _lock:
            profiles = list(_profiles)
        merged = None
        for profile in profiles:
            try:
                profile.snapshot_stats()  # unlike create_stats, it keeps profiling
                stats = pstats.Stats(_Snapshot(profile.stats))
            except Exception:
                continue
            if merged is None:
                merged = stats
            else:
                merged.add(stats)
        if merged is not None:
            merged.dump_stats(path + ".tmp")
            os.replace(path + ".tmp", path)

    def _dump():
        while True:
            time.sleep(2.0)
            _dump_once()

    _main = cProfile.Profile()
    _profiles.append(_main)
    _main.enable()
    threading.setprofile(_start)
    threading.Thread(target=_dump, daemon=True).start()
    atexit.register(_dump_once)
'''

#: Functions where a thread waits rather than works (idle time, not cost).
IDLE = (
    "sleep",
    "poll",
    "acquire",
    "wait",
    "select",
    "_dump",
    "_dump_once",
    "snapshot_stats",
    "getstats",
    "dump_stats",
    "marshal.dump",
)
TOP = 10


def profile_node(count: int, work: Path, prefetch: int) -> dict[str, Any]:
    """Run ``count`` no-ops through a profiled node; the busiest functions by process."""
    site, out = work / "site", work / "profiles"
    site.mkdir(parents=True)
    out.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    with Grid(work, prefetch=prefetch) as grid:
        grid.submit(noop_spec(count))
        path = [str(site), grid.env.get("PYTHONPATH", "")]
        env = {
            "PYTHONPATH": ":".join(p for p in path if p),
            "BENCH_PROFILE_DIR": str(out),
            # The node exits a second after the queue stays empty.
            "BATCHFARM_QUEUE_WAIT": "1.0",
        }
        grid.start("node", env=env, args=("--until-empty",))
        proc = grid.procs["node"]
        depth = _watch_depth(grid, proc.pid)
        if proc.returncode != 0:
            raise BenchError(f"profiled node exited with {proc.returncode}")
        grid.procs.pop("node")
    time.sleep(0.1)
    return {"tasks": count, **depth, "processes": _read_profiles(out, proc.pid)}


def _watch_depth(grid: Grid, node_pid: int) -> dict[str, Any]:
    """Sample the queues until the node exits: the most messages held at once."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    held: list[int] = []
    with open_task_queues(grid.settings.queue) as tasks:
        completions = open_queue(grid.settings.queue, COMPLETIONS)
        try:
            while grid.procs["node"].poll() is None:
                if time.monotonic() > deadline:
                    raise BenchError("profiled node: not done at the deadline")
                held.append(tasks.depth().in_flight)
                time.sleep(0.25)
            sent = completions.depth().visible
        finally:
            completions.close()
    return {"max_in_flight": max(held, default=0), "completions_sent": sent}


def _read_profiles(folder: Path, node_pid: int) -> dict[str, Any]:
    """Per process (supervisor, worker N): busy seconds and the top functions by self time."""
    found: dict[str, Any] = {}
    workers = 0
    for path in sorted(folder.glob("*.prof")):
        stats = pstats.Stats(str(path))
        table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
        busy = {key: row for key, row in table.items() if not _idle(key)}
        if not busy:
            continue
        if int(path.stem) == node_pid:
            role = "supervisor"
        elif any(func == "_executor_loop" for _, _, func in table):
            role = f"worker {workers}"
            workers += 1
        else:
            continue  # a helper process (multiprocessing's resource tracker)
        total = sum(row[2] for row in busy.values())
        top = sorted(busy.items(), key=lambda item: item[1][2], reverse=True)[:TOP]
        found[role] = {
            "busy_self_s": round(total, 2),
            "top": [
                {
                    "function": f"{Path(file).name}:{line} {func}",
                    "calls": row[1],
                    "self_s": round(row[2], 2),
                    "share": round(row[2] / total, 3),
                }
                for (file, line, func), row in top
            ],
        }
    return found


def _idle(key: tuple[str, int, str]) -> bool:
    file, _, func = key
    return any(word in func for word in IDLE) or file.endswith("sitecustomize.py")
