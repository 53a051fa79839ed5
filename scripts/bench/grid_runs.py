"""The grid benchmark's batchfarm side: clips through a manager and one node, and its profile.

A fresh grid (``grid_procs.Grid``: manager, one node of 2 pinned workers, embedded backends)
is started and warmed up with a small no-op job; then one job whose inputs are the clip files
runs the ``transcode`` handler with the node benchmark's parameters. It is timed from the
``submit_job`` call (which uploads the inputs first) to the store saying the job succeeded.
Every task must have succeeded with one recorded run, and every output must be in the blob
store, as large as recorded, and a valid MP4 of the asked height and length.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

from grid_procs import Grid, check_all_once
from node_runs import (
    PARALLEL,
    RUN_TIMEOUT_S,
    BenchError,
    CpuMeter,
    Run,
    mp4_problem,
    transcode_params,
)

from batchfarm.actors.handlers.transcode import TranscodeOptions
from batchfarm.actors.manager.spec import parse_spec

STAGE = "transcode"


def run_grid(  # noqa: PLR0917 - the same shape as run_xargs, plus the node's settings
    ffmpeg: str,
    clips: list[Path],
    options: TranscodeOptions,
    work: Path,
    seconds: float,
    prefetch: int,
    pin: bool = True,
    env: dict[str, str] | None = None,
) -> tuple[Run, dict[str, Any]]:
    """Transcode the clips as one job through the grid; the run and its profile.

    ``env`` adds BATCHFARM_* settings to the grid's processes (the AWS backends).
    """
    tree = {
        "name": "grid-bench",
        "inputs": {"files": [str(clip) for clip in clips]},
        # The handler's parameters of the same names as the options' fields the bench sets.
        "stages": [{"name": STAGE, "handler": "transcode", "params": transcode_params(options)}],
    }
    spec = parse_spec(tree, source="grid bench", base_dir=clips[0].parent)
    with Grid(work, prefetch=prefetch, pin=pin, env=env) as grid:
        grid.start()
        grid.warm_up()
        meter = CpuMeter()
        run = grid.run(spec, RUN_TIMEOUT_S)
        cpu = meter.read()
        tasks = check_all_once(grid.store, run.job_id, STAGE, len(clips))
        job = grid.store.job(run.job_id)
        _check_outputs(grid, ffmpeg, tasks, work / "check", options, seconds)
    assert job is not None
    assert job.finished_at is not None
    profile = grid_profile(tasks, run.submitted_at, run.submit_s, run.wall_s, job.finished_at)
    profile["cpu_s"] = run.cpu_s
    return Run(run.wall_s, *cpu, len(clips)), profile


def _check_outputs(  # noqa: PLR0917 - one call site
    grid: Grid,
    ffmpeg: str,
    tasks: list[Any],
    folder: Path,
    options: TranscodeOptions,
    seconds: float,
) -> None:
    from batchfarm.actors.backends import open_blobs

    folder.mkdir()
    blobs = open_blobs(grid.settings.storage)
    try:
        for task in tasks:
            outputs = task.outputs or []
            if len(outputs) != 1:
                raise BenchError(f"part {task.part}: outputs {outputs}, expected one MP4")
            key, size = outputs[0]["key"], outputs[0]["size"]
            local = folder / f"{task.part}.mp4"
            info = blobs.get_file(key, local)
            if info.size != size:
                raise BenchError(f"{key}: {info.size} bytes stored, {size} recorded")
            problem = mp4_problem(ffmpeg, local, options.height, seconds)
            if problem:
                raise BenchError(f"grid output {key}: {problem}")
            local.unlink()
    finally:
        blobs.close()


def grid_profile(
    tasks: list[Any], submitted_at: float, submit_s: float, wall_s: float, done_at: float
) -> dict[str, Any]:
    """Where a grid run's time went, from the store's task records.

    ``worker_idle_s`` sums, over the 2 workers, the run's time outside their handlers'
    spans: start-up, the upload before the first task, gaps, and the idle tail.
    """
    by_worker: dict[Any, list[Any]] = {}
    for task in sorted(tasks, key=lambda t: t.started_at):
        by_worker.setdefault((task.node_id, task.worker), []).append(task)
    gaps = [
        later.started_at - earlier.finished_at
        for runs in by_worker.values()
        for earlier, later in itertools.pairwise(runs)
    ]
    end = submitted_at + wall_s
    busy = sum(t.finished_at - t.started_at for t in tasks)
    compute = sum(t.compute_s for t in tasks)
    last_finish = max(t.finished_at for t in tasks)
    return {
        "submit_upload_s": round(submit_s, 3),
        "submit_to_first_start_s": round(min(t.started_at for t in tasks) - submitted_at, 3),
        "tasks_per_worker": [len(runs) for runs in by_worker.values()],
        "queue_wait_s": _stats([t.queue_wait_s for t in tasks]),
        "fetch_s": _stats([t.fetch_s for t in tasks]),
        "compute_s": _stats([t.compute_s for t in tasks]),
        "upload_s": _stats([t.upload_s for t in tasks]),
        "gap_between_tasks_s": _stats(gaps),
        "worker_idle_at_end_s": round(
            sum(end - runs[-1].finished_at for runs in by_worker.values()), 3
        ),
        "last_finish_to_job_done_s": round(done_at - last_finish, 3),
        "job_done_to_seen_s": round(end - done_at, 3),
        "worker_idle_s": round(PARALLEL * wall_s - busy, 3),
        "handler_busy_share": round(compute / (PARALLEL * wall_s), 4),
    }


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
        "sum": round(sum(values), 3),
    }
