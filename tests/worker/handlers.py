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


#: Set to "1" in a node's environment to make :func:`flaky` fail every run on that node.
BAD_NODE_ENV = "BATCHFARM_TEST_BAD_NODE"


def flaky(ctx: TaskContext) -> dict[str, Any]:
    """Take ``seconds``, then write ``part.txt``, unless this run fails (transiently).

    It fails on a node whose environment sets :data:`BAD_NODE_ENV` to 1, and for the parts
    in ``fail_parts`` while the file ``marker`` exists (the cause a test then removes).
    """
    part = ctx.task.part
    time.sleep(float(ctx.params.get("seconds", 0.0)))
    if os.environ.get(BAD_NODE_ENV) == "1":
        raise TaskError(f"part {part}: this node's scratch disk is bad")
    marker = ctx.params.get("marker")
    if marker and part in ctx.params.get("fail_parts", []) and os.path.exists(marker):
        raise TaskError(f"part {part}: {marker} is in the way")
    (ctx.output_dir / "part.txt").write_text(f"{part}\n")
    return {"part": part}
