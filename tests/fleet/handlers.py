"""A handler for the fleet harness tests, named ``tests.fleet.handlers:record``."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from batchfarm.actors.handlers import TaskContext


def record(ctx: TaskContext) -> dict[str, Any]:
    """Sleep ``seconds`` (honouring cancellation), logging each run's start and end.

    Each line of the file ``log`` is ``{"task", "event": "start"|"end", "node_pid", "at"}``;
    the node's pid is the worker's parent, which the harness maps to its instance. A run cut
    short leaves a start without an end. One small ``O_APPEND`` write per line: whole lines.
    """
    seconds = float(ctx.params.get("seconds", 1.0))
    started = time.monotonic()
    _log(ctx, "start")
    while time.monotonic() - started < seconds:
        ctx.check_cancelled()
        time.sleep(0.02)
    (ctx.output_dir / "part.txt").write_text(f"{ctx.task.part}\n")
    _log(ctx, "end")
    return {"part": ctx.task.part}


def _log(ctx: TaskContext, event: str) -> None:
    line = {"task": ctx.task.task_id, "event": event, "node_pid": os.getppid(), "at": time.time()}
    fd = os.open(str(ctx.params["log"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def runs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every line :func:`record` logged."""
    try:
        with open(path) as lines:
            return [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError:
        return []
