"""A checked job spec made into store records and task bodies: ids, keys, tasks, params.

Pure: no I/O. The job manager submits a job in this order, so a bad spec or an oversized
body stops it before anything is written:

1. ``spec = load_spec(path)`` (or ``spec_from_flags``): every check that needs no store;
2. ``job_id = new_job_id(spec.name)``, ``plan = make_plan(spec, job_id, input_keys(spec,
   job_id), settings.tasks)``: the bodies are encoded once here, so a body too large fails;
3. ``upload_inputs(spec, blobs, job_id, progress)`` (missing ``inputs.keys`` fail first), then
   ``blobs.put`` each of ``plan.blobs`` (params too large for a body);
4. ``store.create_job(plan.job, plan.tasks)``, then, once due, send ``plan.bodies`` and mark
   those tasks queued.

Later stages' tasks are made as their inputs complete, by :func:`chained_task`,
:func:`fan_in_task` and :func:`fan_out_task` (or :class:`SpecPlanner`, which reads the job's
stored spec).
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from batchfarm.actors.backends.store.models import JobState, StageMode, StageState, TaskState
from batchfarm.actors.backends.store.records import NewJob, NewStage, NewTask, StageView
from batchfarm.actors.codec import encode_body
from batchfarm.actors.errors import NO_VALUE, MessageError, SpecError
from batchfarm.actors.manager.spec import PRIORITIES, JobSpec, StageSpec
from batchfarm.actors.messages import IDENT, TaskBody
from batchfarm.actors.settings import TasksSettings

#: Params larger than this (as compact JSON) travel by ``params_ref``, not in each body.
PARAMS_INLINE_BYTES = 64 * 1024
#: Longest part of a job id taken from the job's name.
_SLUG_LEN = 40


@dataclass(frozen=True)
class Plan:
    """What submitting a job writes: the job, its first stage's tasks and their bodies.

    ``blobs`` are the objects to put before any body is sent: params too large for a body,
    under the keys the bodies' ``params_ref`` names.
    """

    job: NewJob
    tasks: list[NewTask]
    bodies: list[TaskBody]
    blobs: dict[str, bytes]


def new_job_id(name: str = "", now: float | None = None) -> str:
    """``<name>-<yyyymmdd-hhmmss>-<4 hex>`` (UTC): readable, sortable by time, unique enough.

    The name is cut to 40 letters, digits, ``.``, ``_`` and ``-`` (others become ``-``),
    ``job`` if nothing is left; the result always matches ``messages.IDENT``.
    """
    slug = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in name)
    slug = "-".join(filter(None, slug.lower().split("-")))[:_SLUG_LEN].strip("._-") or "job"
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    job_id = f"{slug}-{stamp:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    assert IDENT.fullmatch(job_id), job_id  # the construction guarantees it
    return job_id


def params_ref_key(job_id: str, stage: str) -> str:
    """Where a stage's params go when they are too large for a body."""
    return f"jobs/{job_id}/params/{stage}.json"


def _params_json(stage: StageSpec) -> bytes:
    text = json.dumps(stage.params, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def _by_ref(stage: StageSpec) -> bool:
    return len(_params_json(stage)) > PARAMS_INLINE_BYTES


def _body(
    job_id: str,
    stage: StageSpec,
    part: int,
    inputs: Sequence[str],
    *,
    defaults: TasksSettings | None,
    now: float | None,
    extra: Mapping[str, Any] | None = None,
) -> TaskBody:
    """A task body of ``stage``; its params inline, or by reference when they are large."""
    ref = params_ref_key(job_id, stage.name) if _by_ref(stage) else None
    params = {} if ref is not None else dict(stage.params)
    params.update(extra or {})
    limits = defaults or TasksSettings()
    return TaskBody(
        job=job_id,
        stage=stage.name,
        part=part,
        handler=stage.handler,
        inputs=list(inputs),
        params=params,
        params_ref=ref,
        max_attempts=limits.max_attempts if stage.max_attempts is None else stage.max_attempts,
        time_limit_s=stage.time_limit,
        retry_backoff_s=stage.retry_backoff,
        enqueued_at=time.time() if now is None else now,
    )


def chained_task(
    job_id: str,
    stage: StageSpec,
    part: int,
    inputs: Sequence[str],
    defaults: TasksSettings | None = None,
    *,
    now: float | None = None,
) -> TaskBody:
    """The task of a ``chain`` stage fed by part ``part`` of the stage before (its outputs).

    ``defaults`` gives ``max_attempts`` when the stage sets none (the ``[tasks]`` defaults if
    None); time limit and backoff left None take the worker's config.
    """
    if stage.mode != StageMode.CHAIN or stage.source is None:
        raise ValueError(f"stage {stage.name!r} is not a chained stage")
    return _body(job_id, stage, part, inputs, defaults=defaults, now=now)


def fan_in_task(
    job_id: str,
    stage: StageSpec,
    inputs: Sequence[str],
    defaults: TasksSettings | None = None,
    *,
    now: float | None = None,
) -> TaskBody:
    """The one task (part 0) of a ``fan_in`` stage: every output of the stage before."""
    if stage.mode != StageMode.FAN_IN:
        raise ValueError(f"stage {stage.name!r} is not a fan-in stage")
    return _body(job_id, stage, 0, inputs, defaults=defaults, now=now)


def fan_out_task(
    job_id: str,
    stage: StageSpec,
    part: int,
    key: str,
    defaults: TasksSettings | None = None,
    *,
    now: float | None = None,
) -> TaskBody:
    """Part ``part`` of a ``fan_out`` stage: the ``part``-th output of the stage before.

    The outputs are counted over the previous stage's parts in part order, so a fan-out
    task keeps its number (and its output keys) when it is planned again (a retry).
    """
    if stage.mode != StageMode.FAN_OUT:
        raise ValueError(f"stage {stage.name!r} is not a fan-out stage")
    return _body(job_id, stage, part, [key], defaults=defaults, now=now)


def first_tasks(
    spec: JobSpec,
    job_id: str,
    input_keys: Sequence[str],
    defaults: TasksSettings | None = None,
    *,
    now: float | None = None,
) -> list[TaskBody]:
    """The bodies of the first stage: one per input, or ``parts`` with every input each.

    For a job that waited for its start time, call it again then with the stored spec
    (``JobSpec.from_stored``) and its ``keys``.
    """
    first = spec.stages[0]
    if first.parts is None:
        return [
            _body(job_id, first, i, [key], defaults=defaults, now=now)
            for i, key in enumerate(input_keys)
        ]
    bodies = []
    for part in range(first.parts):
        extra = {first.range.param: first.range.value(part)} if first.range else None
        bodies.append(
            _body(job_id, first, part, input_keys, defaults=defaults, now=now, extra=extra)
        )
    return bodies


def make_plan(
    spec: JobSpec,
    job_id: str,
    input_keys: Sequence[str],
    defaults: TasksSettings | None = None,
    *,
    now: float | None = None,
) -> Plan:
    """The job, its stages, its first stage's tasks and bodies, and the params to upload.

    Tasks are created ``pending``: the job manager sends their bodies (at once, or when the
    start time comes) and only then marks them queued. Raises :class:`SpecError` when a
    body would be too large for the queue (too many inputs for one task).
    """
    now = time.time() if now is None else now
    if not IDENT.fullmatch(job_id):
        raise ValueError(f"job id {job_id!r} does not match {IDENT.pattern}")
    start = spec.start_time(now)
    later = start is not None and start > now
    when = datetime.fromtimestamp(start, UTC).isoformat() if later and start else ""
    bodies = first_tasks(spec, job_id, input_keys, defaults, now=now)
    for body in bodies:
        try:
            encode_body(body)
        except MessageError as e:
            expected = f"expected task bodies small enough for the queue: part {body.part}: {e}"
            raise SpecError(spec.source, "inputs", NO_VALUE, expected) from None
    stages = [
        NewStage(
            name=stage.name,
            index=stage.index,
            handler=stage.handler,
            params=stage.params,
            node_class=stage.node_class,
            mode=str(stage.mode),
            state=StageState.PENDING,
            reason=f"waiting for stage {stage.source}" if stage.source else "waiting to start",
        )
        for stage in spec.stages
    ]
    job = NewJob(
        id=job_id,
        stages=stages,
        name=spec.name,
        priority=PRIORITIES[spec.priority],
        spec=spec.to_stored(input_keys, start),
        state=JobState.SCHEDULED if later else JobState.PENDING,
        reason=f"waiting for its start time ({when})" if later else "waiting to be queued",
        start_at=start,
        deadline=spec.deadline,
        created_at=now,
    )
    reason = "waiting for the job's start time" if later else "waiting to be queued"
    tasks = [
        NewTask(body.stage, body.part, list(body.inputs), TaskState.PENDING, reason)
        for body in bodies
    ]
    blobs = {
        params_ref_key(job_id, stage.name): _params_json(stage)
        for stage in spec.stages
        if _by_ref(stage)
    }
    return Plan(job=job, tasks=tasks, bodies=bodies, blobs=blobs)


class SpecPlanner:
    """Next-stage task bodies for the results processor, from each job's stored spec.

    ``job_spec(job_id)`` returns the spec the store keeps (``JobView.spec``); it is read once
    per job and kept for the ``cache_size`` most recent jobs.
    """

    def __init__(
        self,
        job_spec: Callable[[str], Mapping[str, Any]],
        defaults: TasksSettings | None = None,
        *,
        cache_size: int = 256,
    ) -> None:
        self._job_spec = job_spec
        self._defaults = defaults
        self._cache: OrderedDict[str, JobSpec] = OrderedDict()
        self._cache_size = cache_size

    def next_task(self, stage: StageView, part: int, inputs: Sequence[str]) -> TaskBody:
        """Part ``part`` of ``stage`` (a later stage) over ``inputs``, per its mode."""
        spec = self._spec(stage.job_id).stage(stage.name)
        if spec.mode == StageMode.FAN_IN:
            return replace(fan_in_task(stage.job_id, spec, inputs, self._defaults), part=part)
        if spec.mode == StageMode.FAN_OUT:
            if len(inputs) != 1:
                raise ValueError(f"a fan-out task takes one input, not {len(inputs)}")
            return fan_out_task(stage.job_id, spec, part, inputs[0], self._defaults)
        return chained_task(stage.job_id, spec, part, inputs, self._defaults)

    def _spec(self, job_id: str) -> JobSpec:
        spec = self._cache.get(job_id)
        if spec is None:
            spec = JobSpec.from_stored(self._job_spec(job_id))
            self._cache[job_id] = spec
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(job_id)
        return spec
