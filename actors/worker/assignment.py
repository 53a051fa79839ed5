"""One received task on its way through a worker: fetched, run, stored, reported.

An :class:`Assignment` is made when a message is received and carries everything the
worker learns about the task: the decoded body, where its inputs landed, how the run went.
The functions here do the blob-store side: fetching inputs before the run and storing the
outputs after it, under the task's deterministic prefix (``jobs/<job>/<stage>/<part>/``), so
a task that runs twice writes the same objects.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.queue import Received
from batchfarm.actors.codec import decode_body
from batchfarm.actors.errors import (
    BlobError,
    BlobNotFoundError,
    MessageError,
    TaskError,
)
from batchfarm.actors.messages import (
    AbandonedRun,
    Completion,
    ErrorInfo,
    OutputRef,
    TaskBody,
    Timings,
    poison_marker,
)
from batchfarm.actors.worker.leases import Lease


@dataclass
class Assignment:
    """A received message and what became of its task so far."""

    message: Received
    lease: Lease
    #: The decoded body; None when the body is not a valid task (see ``bad_body``).
    task: TaskBody | None
    bad_body: MessageError | None = None
    folder: Path | None = None
    inputs: list[Path] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    #: Why the task failed (fetch, run or store); None while it has not.
    failure: TaskError | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    outputs: list[OutputRef] = field(default_factory=list)
    progress: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    cpu_s: float = 0.0
    received_wall: float = field(default_factory=time.time)
    started_wall: float = 0.0
    finished_wall: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    #: Set to stop the running handler; ``cancel_reason`` says why.
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str | None = None
    run_started: float | None = None
    #: The outputs are stored (or failed to store): a settle tried again does not redo it.
    stored: bool = False
    #: The completion event went out: a settle tried again does not send it twice.
    reported: bool = False
    #: The message was deleted or handed back: a settle tried again leaves it be.
    settled: bool = False

    @property
    def attempt(self) -> int:
        """Which run of the task this is (the message's receive count)."""
        return self.message.receive_count

    @property
    def label(self) -> str:
        """The task id, or the message id for a body that is not a task."""
        return self.task.task_id if self.task else f"message {self.message.message_id}"

    def stop(self, reason: str) -> None:
        """Ask the running handler to stop; the first reason given is kept."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.cancel.set()

    def cleanup(self) -> None:
        """Remove the task's scratch folder (inputs, outputs, temp files), if it was made."""
        if self.folder is None:
            return
        try:
            # Most short tasks make no folder at all; of the rest, many leave theirs empty:
            # removing empty folders is several times cheaper than walking the tree.
            self.folder.rmdir()
        except FileNotFoundError:
            return
        except OSError:
            shutil.rmtree(self.folder, ignore_errors=True)


def receive(message: Received, lease: Lease) -> Assignment:
    """Decode a received message into an assignment (a bad body is kept, not raised)."""
    try:
        task = decode_body(message.body, TaskBody)
    except MessageError as error:
        return Assignment(message=message, lease=lease, task=None, bad_body=error)
    assert isinstance(task, TaskBody)  # decode_body checked the kind
    return Assignment(message=message, lease=lease, task=task)


def fetch(assignment: Assignment, blobs: BlobStore, scratch_root: Path) -> None:
    """Download the task's inputs and merged parameters into its scratch folder.

    The folder holds ``in`` (inputs), ``out`` (outputs) and ``tmp`` (the handler's temp
    files), each made when first needed: ``in`` here for a task with inputs, the others by
    the handler's :class:`~batchfarm.actors.handlers.TaskContext`. A no-op task makes none.

    A missing input or parameter object fails the task for good (retrying will not make it
    appear); any other store error fails it for now (retried after a backoff).
    """
    task = assignment.task
    assert task is not None
    started = time.monotonic()
    folder = scratch_root / f"{task.job}.{task.stage}.{task.part}.{assignment.attempt}"
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)  # a previous run of this attempt left it
    if task.inputs:
        (folder / "in").mkdir(parents=True)
    assignment.folder = folder
    try:
        params = dict(task.params)
        if task.params_ref is not None:
            params.update(_read_params(blobs, task.params_ref))
        assignment.params = params
        for index, key in enumerate(task.inputs):
            # Local names are ours, never the key's: a key is data, not a path to trust.
            suffix = "".join(PurePosixPath(key).suffixes[-2:])[:16]
            path = folder / "in" / f"{index:04d}{_safe_suffix(suffix)}"
            info = blobs.get_file(key, path)
            assignment.inputs.append(path)
            assignment.bytes_in += info.size
    except BlobNotFoundError as error:
        assignment.failure = TaskError(f"input not found: {error}", permanent=True)
    except BlobError as error:
        assignment.failure = TaskError(f"cannot fetch input: {error}")
    except TaskError as error:
        assignment.failure = error
    assignment.timings["fetch_s"] = time.monotonic() - started


def poisoned(task: TaskBody, blobs: BlobStore) -> str | None:
    """Why the manager declared this body's task poison, or None if it did not.

    The marker (:func:`~batchfarm.actors.messages.poison_marker`) holds the time of the
    verdict: a body enqueued after it (the job was retried since) is not poison. Raises
    :class:`BlobError` when the store cannot say.
    """
    try:
        text = blobs.read(poison_marker(task.job, task.stage, task.part))
    except BlobNotFoundError:
        return None
    stamp, _, reason = text.decode("utf-8", "replace").partition(" ")
    try:
        decided_at = float(stamp)
    except ValueError:
        decided_at = None
    if decided_at is not None and task.enqueued_at > decided_at:
        return None
    return reason.strip() or "poison"


def store_outputs(assignment: Assignment, blobs: BlobStore) -> None:
    """Upload every file the handler left in ``out/`` under the task's output prefix."""
    task = assignment.task
    assert task is not None
    assert assignment.folder is not None
    started = time.monotonic()
    out = assignment.folder / "out"
    found = out.rglob("*") if out.is_dir() else ()  # made on the handler's first use
    for path in sorted(p for p in found if p.is_file() and not p.is_symlink()):
        key = task.output_prefix + path.relative_to(out).as_posix()
        info = blobs.put_file(key, path)
        assignment.outputs.append(OutputRef(key=key, size=info.size, sha256=info.sha256))
        assignment.bytes_out += info.size
    assignment.timings["upload_s"] = time.monotonic() - started


def completion(assignment: Assignment, node: str, worker: int, *, final: bool) -> Completion:
    """The completion event for this run of the task."""
    task = assignment.task
    assert task is not None
    failure = assignment.failure
    error = None
    if failure is not None:
        error = ErrorInfo(
            type=type(failure).__name__,
            message=str(failure)[:2000],
            stderr_tail=failure.stderr_tail[-4000:],
            permanent=failure.permanent,
        )
    queue_wait = max(0.0, assignment.received_wall - task.enqueued_at) if task.enqueued_at else 0.0
    return Completion(
        job=task.job,
        stage=task.stage,
        part=task.part,
        ok=failure is None,
        node=node,
        worker=worker,
        attempt=assignment.attempt,
        started_at=assignment.started_wall or assignment.received_wall,
        finished_at=assignment.finished_wall or time.time(),
        outputs=list(assignment.outputs),
        error=error,
        final=final,
        timings=Timings(
            queue_wait_s=round(queue_wait, 6),
            fetch_s=round(assignment.timings.get("fetch_s", 0.0), 6),
            compute_s=round(assignment.timings.get("compute_s", 0.0), 6),
            upload_s=round(assignment.timings.get("upload_s", 0.0), 6),
        ),
        cpu_s=round(assignment.cpu_s, 6),
        bytes_in=assignment.bytes_in,
        bytes_out=assignment.bytes_out,
        meta=assignment.meta,
    )


def abandoned(assignment: Assignment, node: str, worker: int) -> AbandonedRun:
    """The event for this run of the task, which stopped without an outcome."""
    task = assignment.task
    assert task is not None
    return AbandonedRun(
        job=task.job,
        stage=task.stage,
        part=task.part,
        ok=False,
        node=node,
        worker=worker,
        attempt=assignment.attempt,
        started_at=assignment.started_wall,
        finished_at=assignment.finished_wall or time.time(),
        timings=Timings(compute_s=round(assignment.timings.get("compute_s", 0.0), 6)),
        cpu_s=round(assignment.cpu_s, 6),
        bytes_in=assignment.bytes_in,
    )


def _read_params(blobs: BlobStore, key: str) -> dict[str, Any]:
    try:
        value = json.loads(blobs.read(key))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TaskError(f"params_ref {key!r}: not JSON ({error})", permanent=True) from None
    if not isinstance(value, dict):
        raise TaskError(
            f"params_ref {key!r}: holds a {type(value).__name__}, expected a JSON object",
            permanent=True,
        )
    return value


def _safe_suffix(suffix: str) -> str:
    # Tools such as ffmpeg pick a demuxer by extension; keep a plain one, drop anything else.
    return suffix if all(c.isalnum() or c == "." for c in suffix) else ""
