"""Completion events as the store records them, and how a failed run is described."""

from __future__ import annotations

from batchfarm.actors.backends.store import TaskRun
from batchfarm.actors.messages import AbandonedRun, Completion


def task_run(event: Completion) -> TaskRun:
    """The store's record of the run a completion event reports."""
    error = None
    if event.error is not None:
        error = {
            "type": event.error.type,
            "message": event.error.message,
            "stderr_tail": event.error.stderr_tail,
            "permanent": event.error.permanent,
        }
    return TaskRun(
        job=event.job,
        stage=event.stage,
        part=event.part,
        ok=event.ok,
        node=event.node,
        worker=event.worker,
        attempt=event.attempt,
        started_at=event.started_at,
        finished_at=event.finished_at,
        outputs=[{"key": o.key, "size": o.size, "sha256": o.sha256} for o in event.outputs],
        error=error,
        final=event.final,
        queue_wait_s=event.timings.queue_wait_s,
        fetch_s=event.timings.fetch_s,
        compute_s=event.timings.compute_s,
        upload_s=event.timings.upload_s,
        cpu_s=event.cpu_s,
        bytes_in=event.bytes_in,
        bytes_out=event.bytes_out,
        result=dict(event.meta) or None,
        abandoned=isinstance(event, AbandonedRun),
    )


def failure_reason(run: TaskRun) -> str:
    """Why a stage or job failed, naming the task and its error."""
    error = run.error or {}
    kind = error.get("type") or "error"
    message = error.get("message") or "no message"
    why = f"{run.reason}; " if run.reason else ""
    return f"task {run.task_id} failed: {why}{kind}: {message}"
