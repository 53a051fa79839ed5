"""Accepting a job whose inputs are already in the blob store: the server's half of a submit.

The HTTP API's ``POST /jobs`` and :func:`~batchfarm.actors.manager.submit.submit_job` (after
it uploaded the spec's files) both end here. A job arrives in its stored form (what
:meth:`JobSpec.to_stored` returns: inputs only as ``inputs.keys``) and goes through, in
this order, so that nothing is recorded or queued before every check has passed:

1. the spec's submit-time checks (:func:`parse_spec`: keys, handlers, built-in params,
   limits, the line of stages; each stage's node class is one the grid has); ``inputs.files``
   is refused, the server reads no local file;
2. the job id's format (a client makes it with ``new_job_id`` to upload inputs under it);
3. idempotency: a job with that id and the same stored spec is the job already accepted (a
   retried request is safe); with another spec it is a :class:`JobConflictError`;
4. every ``inputs.keys`` object exists (``head``), and the plan (bodies small enough);
5. then the writes: the plan's blobs, the job in the store, its first tasks in the queue
   (unless the job waits for its start time).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.backends.store import JobState, JobView, Store
from batchfarm.actors.errors import (
    NO_VALUE,
    BatchfarmError,
    BlobNotFoundError,
    SpecError,
    StoreError,
)
from batchfarm.actors.manager.node_classes import check_node_classes
from batchfarm.actors.manager.plan import make_plan, new_job_id
from batchfarm.actors.manager.spec import JobSpec, parse_spec
from batchfarm.actors.messages import IDENT
from batchfarm.actors.settings import TasksSettings

#: How a job's stored spec names where it came from in error messages.
SOURCE = "spec"


class JobConflictError(BatchfarmError):
    """A job id that names an existing job with a different spec."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job {job_id!r} exists with a different spec: expected the same spec (a retried"
            " submit) or a new job id"
        )
        self.job_id = job_id


def accept_job(
    data: Mapping[str, Any],
    job_id: str | None,
    *,
    store: Store,
    blobs: BlobStore,
    tasks: TaskQueues,
    defaults: TasksSettings,
    source: str = SOURCE,
    uploaded: Collection[str] = (),
) -> tuple[str, bool]:
    """Check, plan, record and (when due) enqueue the job ``data`` describes.

    ``data`` is a spec in stored form; ``job_id`` the id to give it (None: a new one from
    the spec's name). Returns the job's id and whether it was created now (False: the same
    job had been accepted before). Raises :class:`SpecError` (naming the field) for a bad
    spec, id or missing input, :class:`JobConflictError` for an id taken by another spec;
    either way nothing was written. ``uploaded`` names input keys the caller has just
    written itself, which need no lookup.
    """
    inputs = data.get("inputs") if isinstance(data, Mapping) else None
    if isinstance(inputs, Mapping) and "files" in inputs:
        expected = (
            "expected only inputs.keys (objects in the blob store): the server reads no local"
            " file; `batchfarm submit` uploads local files first"
        )
        raise SpecError(source, "inputs.files", NO_VALUE, expected)
    spec = parse_spec(data, source=source, base_dir=Path("."), submit=True)
    check_node_classes(spec.stages, tasks.node_classes(), source)
    if job_id is None:
        job_id = new_job_id(spec.name)
    elif not IDENT.fullmatch(job_id):
        expected = (
            "expected a job id of 1 to 64 letters, digits, '_', '.' or '-', starting with a"
            " letter or digit (as new_job_id makes)"
        )
        raise SpecError(source, "id", job_id, expected)
    existing = store.job(job_id)
    if existing is not None:
        return _same_job(existing, spec), False
    known = set(uploaded)
    for index, key in enumerate(spec.keys):
        if key in known:
            continue
        try:
            blobs.head(key)
        except BlobNotFoundError:
            expected = "expected an object in the blob store"
            raise SpecError(source, f"inputs.keys[{index}]", key, expected) from None
    plan = make_plan(spec, job_id, list(spec.keys), defaults)
    for key, blob in plan.blobs.items():
        blobs.put(key, blob)
    try:
        store.create_job(plan.job, plan.tasks)
    except StoreError:
        # Two requests for one new id at once: the loser finds the winner's job.
        raced = store.job(job_id)
        if raced is None:
            raise
        return _same_job(raced, spec), False
    if plan.job.state != JobState.SCHEDULED:
        # Imported here: submit imports this module (submit_job ends in accept_job).
        from batchfarm.actors.manager.submit import enqueue_first  # noqa: PLC0415

        first = spec.stages[0].node_class
        enqueue_first(
            store, tasks, job_id, plan.bodies, priority=plan.job.priority, node_class=first
        )
    return job_id, True


def _same_job(existing: JobView, spec: JobSpec) -> str:
    """The existing job's id if ``spec`` is the spec it was accepted with, else a conflict.

    A spec with ``after`` starts relative to its first acceptance, so a retry of it is
    compared with the start time stored then.
    """
    start = existing.start_at if spec.after_s is not None else spec.start_time(time.time())
    wanted = spec.to_stored(list(spec.keys), start)
    if _canonical(wanted) != _canonical(existing.spec):
        raise JobConflictError(existing.id)
    return existing.id


def _canonical(value: Any) -> str:
    # The stored spec went through the database's JSON: compare as JSON text, keys sorted.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
