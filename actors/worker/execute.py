"""Running one task's handler: its context, its clock, and what its failure means.

The handler runs in the worker's executor thread. Whatever escapes it becomes the task's
failure: a :class:`TaskError` keeps its class (permanent or not), any other exception is a
transient failure carrying the end of its traceback, so the completion event says what went
wrong without the worker's logs.
"""

from __future__ import annotations

import json
import math
import resource
import time
import traceback
from typing import Any

from batchfarm.actors.errors import TaskCancelled, TaskError
from batchfarm.actors.handlers import TaskContext, resolve
from batchfarm.actors.settings import MediaSettings, TasksSettings
from batchfarm.actors.worker.assignment import Assignment

#: How much of a traceback a completion carries.
TRACEBACK_TAIL_CHARS = 3000


def run_handler(assignment: Assignment, media: MediaSettings, threads: int) -> None:
    """Run the assignment's handler; record its metadata or failure, timings and CPU time."""
    task = assignment.task
    assert task is not None
    assert assignment.folder is not None
    assignment.started_wall = time.time()
    assignment.run_started = time.monotonic()
    cpu_before = _cpu_seconds()
    try:
        handler = resolve(task.handler)
        context = TaskContext(
            task=task,
            params=assignment.params,
            inputs=list(assignment.inputs),
            output_dir=assignment.folder / "out",
            scratch=assignment.folder / "tmp",
            media=media,
            threads=threads,
            progress=lambda fraction: _set_progress(assignment, fraction),
            cancelled=assignment.cancel.is_set,
        )
        meta = handler(context)
        assignment.meta = _check_meta(task.handler, meta)
        if assignment.cancel.is_set() and assignment.cancel_reason == "lease_lost":
            # Finished, but the task is another worker's now: commit nothing.
            raise TaskCancelled("lease_lost")
    except TaskCancelled as error:
        reason = assignment.cancel_reason or error.reason
        assignment.failure = TaskCancelled(reason, _cancel_message(reason, task.time_limit_s))
    except TaskError as error:
        assignment.failure = error
    except Exception as error:  # noqa: BLE001 - a handler's bug fails its task, not the worker
        tail = "".join(traceback.format_exception(error))[-TRACEBACK_TAIL_CHARS:]
        assignment.failure = TaskError(f"{type(error).__name__}: {error}", stderr_tail=tail)
    finally:
        assignment.finished_wall = time.time()
        assignment.timings["compute_s"] = time.monotonic() - assignment.run_started
        assignment.cpu_s = _cpu_seconds() - cpu_before
    if assignment.failure is None:
        assignment.progress = 1.0


def past_time_limit(assignment: Assignment, tasks: TasksSettings, now: float | None = None) -> bool:
    """Stop a run past its time limit; True once it has ignored a stop for ``cancel_grace``.

    ``tasks`` gives the grid's default limit (for a body without one) and the grace. True
    means the handler hung: its thread cannot be stopped, so its process must end.
    """
    now = time.monotonic() if now is None else now
    if assignment.run_started is None or assignment.task is None:
        return False
    limit = assignment.task.time_limit_s or tasks.time_limit or None
    running_s = now - assignment.run_started
    if limit is not None and running_s > limit and not assignment.cancel.is_set():
        assignment.stop("time_limit")
        assignment.timings["cancelled_at"] = now
    cancelled_at = assignment.timings.get("cancelled_at")
    if assignment.cancel.is_set() and cancelled_at is None:
        assignment.timings["cancelled_at"] = now
    elif cancelled_at is not None and now - cancelled_at > tasks.cancel_grace:
        return True
    return False


def _set_progress(assignment: Assignment, fraction: float) -> None:
    if isinstance(fraction, int | float) and math.isfinite(fraction):
        assignment.progress = min(1.0, max(0.0, float(fraction)))


def _check_meta(handler: str, meta: object) -> dict[str, Any]:
    """A handler's result must be a JSON object (or None): it travels in the completion."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise TaskError(
            f"handler {handler!r} returned a {type(meta).__name__}, expected a dict or None"
        )
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TaskError(
            f"handler {handler!r} returned metadata that is not JSON: {error}"
        ) from None
    return dict(meta)


def _cancel_message(reason: str, time_limit_s: float | None) -> str:
    if reason == "time_limit":
        limit = f" of {time_limit_s:g} s" if time_limit_s else ""
        return f"stopped: ran past its time limit{limit}"
    return f"stopped: {reason.replace('_', ' ')}"


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the tools handlers run).

    Process-wide rather than per thread: the worker's other threads only move bytes, and
    a tool's CPU time is only visible once it has been waited for.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
