"""Handlers for the worker tests, named as ``tests.worker.handlers:<name>``."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers import TaskContext


def copy(ctx: TaskContext) -> dict[str, Any]:
    """Copy each input to the outputs as out-<n>.bin, and a note naming the attempt."""
    for index, path in enumerate(ctx.inputs):
        shutil.copyfile(path, ctx.output_dir / f"out-{index}.bin")
    (ctx.output_dir / "note.txt").write_text(ctx.task.task_id)
    return {"copied": len(ctx.inputs)}


def sleep(ctx: TaskContext) -> dict[str, Any]:
    """Sleep ``seconds`` in small steps, honouring cancellation; report progress."""
    seconds = float(ctx.params.get("seconds", 1.0))
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        ctx.check_cancelled()
        ctx.progress(elapsed / seconds)
        time.sleep(0.02)
    (ctx.output_dir / "slept.txt").write_text(f"{seconds}")
    return {"seconds": seconds}


def hang(ctx: TaskContext) -> None:
    """Ignore cancellation and sleep far too long (a handler that will not stop)."""
    time.sleep(float(ctx.params.get("seconds", 3600)))


def fail(ctx: TaskContext) -> None:
    """Fail: permanently if params say so, else transiently."""
    if ctx.params.get("permanent"):
        raise TaskError("bad input: the clip is not a video", permanent=True)
    raise TaskError("the disk hiccuped", stderr_tail="line 1\nline 2: EIO")


def buggy(ctx: TaskContext) -> None:
    """Raise a plain exception, as a handler with a bug does."""
    {}["missing"]


def crash(ctx: TaskContext) -> None:
    """Kill the worker process outright."""
    os._exit(9)
