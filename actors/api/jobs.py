"""The jobs' endpoints: submit, list, look at, cancel and retry jobs; their tasks and results.

Every function here runs in Starlette's threadpool (see :mod:`batchfarm.actors.api.web`).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from batchfarm.actors.api import views
from batchfarm.actors.api.deadline import FRESH_S, outlooks
from batchfarm.actors.api.web import (
    ApiContext,
    ApiError,
    by_method,
    context,
    int_query,
    object_body,
    states_query,
    with_body,
)
from batchfarm.actors.backends.blobs.keys import check_key
from batchfarm.actors.backends.store import JobState, JobView, TaskState
from batchfarm.actors.errors import BlobKeyError
from batchfarm.actors.manager.accept import accept_job
from batchfarm.actors.manager.cancel import UnknownJobError, cancel_job
from batchfarm.actors.manager.results import output_keys
from batchfarm.actors.manager.retry import retry_job

PREFIX = "/api/v1"
#: Jobs a list returns by default, and at most.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Failed tasks a job's detail shows.
FAILURES_SHOWN = 20
_JOB_STATES = tuple(str(state) for state in JobState)
_TASK_STATES = tuple(str(state) for state in TaskState)


def _fleet(api: ApiContext) -> views.Fleet:
    return views.Fleet.of(api.store.nodes(), api.store.workers())


def _extras(api: ApiContext, jobs: list[JobView], now: float) -> dict[str, views.Extras]:
    """Each job's costs, and the autoscaler's outlook when a job has a deadline."""
    costs = api.store.stage_costs_of(job.id for job in jobs)
    seen = {}
    if any(job.deadline is not None for job in jobs):
        seen = outlooks(api.store.scaling_events(since=now - FRESH_S, limit=500), now)
    return {job.id: views.Extras(costs.get(job.id, {}), seen) for job in jobs}


def _job(api: ApiContext, job_id: str) -> JobView:
    job = api.store.job(job_id)
    if job is None:
        raise UnknownJobError(f"no job {job_id!r}")
    return job


def create_job(request: Request, body: Any) -> Response:
    """``POST /jobs``: accept a job in stored form; 201, or 200 for the same job again."""
    api = context(request)
    data = object_body(body, ("id", "spec"))
    spec = data.get("spec")
    if not isinstance(spec, dict):
        expected = "expected the job spec, an object in stored form (inputs.keys, no files)"
        raise ApiError(400, f"request body: spec: {expected}", field="spec")
    job_id = data.get("id")
    if job_id is not None and not isinstance(job_id, str):
        raise ApiError(400, "request body: id: expected a job id (text) or null", field="id")
    job_id, created = accept_job(
        spec,
        job_id,
        store=api.store,
        blobs=api.blobs,
        tasks=api.tasks,
        defaults=api.settings.tasks,
    )
    job = _job(api, job_id)
    status = 201 if created else 200
    return JSONResponse({"id": job.id, "state": job.state, "created": created}, status)


def list_jobs(request: Request) -> Response:
    """``GET /jobs``: jobs newest first, with their progress."""
    api = context(request)
    states = states_query(request, "state", _JOB_STATES)
    limit = int_query(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    jobs = api.store.jobs(states=states, limit=limit)
    counts = api.store.stage_counts_of(job.id for job in jobs)
    fleet, now = _fleet(api), time.time()
    extras = _extras(api, jobs, now)
    return JSONResponse(
        {
            "jobs": [
                views.job_view(job, counts.get(job.id, []), fleet, now, extras[job.id])
                for job in jobs
            ]
        }
    )


def get_job(request: Request) -> Response:
    """``GET /jobs/{id}``: a job with its stages and first failures."""
    api = context(request)
    job = _job(api, request.path_params["job"])
    counts = api.store.stage_counts(job.id)
    failed = api.store.tasks(job.id, states=[TaskState.FAILED], limit=FAILURES_SHOWN)
    now = time.time()
    extras = _extras(api, [job], now)[job.id]
    return JSONResponse(views.job_detail(job, counts, failed, _fleet(api), now, extras=extras))


def list_tasks(request: Request) -> Response:
    """``GET /jobs/{id}/tasks``: a job's tasks by stage and part, filtered and paged."""
    api = context(request)
    job = _job(api, request.path_params["job"])
    stage_name = request.query_params.get("stage") or None
    states = states_query(request, "state", _TASK_STATES)
    limit = int_query(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = int_query(request, "offset", 0, 0, 2**31 - 1)
    stages = {stage.name: stage for stage in api.store.stages(job.id)}
    if stage_name is not None and stage_name not in stages:
        expected = f"expected one of {', '.join(stages)}"
        raise ApiError(
            404, f"job {job.id!r} has no stage {stage_name!r}: {expected}", field="stage"
        )
    tasks = api.store.tasks(job.id, stage=stage_name, states=states, limit=limit, offset=offset)
    fleet = _fleet(api)
    costs = api.store.task_costs(job.id, [(t.stage, t.part) for t in tasks])
    return JSONResponse(
        {
            "tasks": [
                views.task_view(t, job, stages.get(t.stage), fleet, costs.get(t.task_id, 0.0))
                for t in tasks
            ]
        }
    )


def get_task(request: Request) -> Response:
    """``GET /jobs/{id}/tasks/{stage}/{part}``: one task."""
    api = context(request)
    job = _job(api, request.path_params["job"])
    stage_name, part = request.path_params["stage"], request.path_params["part"]
    task = api.store.task(job.id, stage_name, part)
    if task is None:
        raise ApiError(404, f"job {job.id!r} has no task {stage_name}/{part}")
    stage = next((s for s in api.store.stages(job.id) if s.name == stage_name), None)
    cost = api.store.task_costs(job.id, [(task.stage, task.part)]).get(task.task_id, 0.0)
    return JSONResponse(views.task_view(task, job, stage, _fleet(api), cost))


def cancel(request: Request) -> Response:
    """``POST /jobs/{id}/cancel``: cancel a job (false if it had already finished)."""
    api = context(request)
    job_id = request.path_params["job"]
    cancelled = cancel_job(api.store, api.blobs, job_id, reason="cancelled through the API")
    return JSONResponse({"id": job_id, "cancelled": cancelled, "state": _job(api, job_id).state})


def retry(request: Request) -> Response:
    """``POST /jobs/{id}/retry``: send a job's failed tasks again."""
    api = context(request)
    job_id = request.path_params["job"]
    count = retry_job(api.store, api.tasks, job_id, api.settings.tasks)
    return JSONResponse({"id": job_id, "retried": count, "state": _job(api, job_id).state})


def results(request: Request) -> Response:
    """``GET /jobs/{id}/results``: the outputs of the last stage's succeeded tasks."""
    api = context(request)
    job = _job(api, request.path_params["job"])
    stages = api.store.stages(job.id)
    found: list[dict[str, Any]] = []
    if stages:
        last = stages[-1].name
        done = api.store.tasks(job.id, stage=last, states=[TaskState.SUCCEEDED], limit=None)
        for task in done:
            sizes = {o["key"]: o.get("size") for o in task.outputs if isinstance(o, dict)}
            found.extend(
                {
                    "task": task.task_id,
                    "stage": task.stage,
                    "part": task.part,
                    "key": key,
                    "size": sizes.get(key),
                    "url": f"{PREFIX}/blobs/{quote(key, safe='/')}",
                }
                for key in output_keys(task.outputs)
            )
    return JSONResponse({"results": found})


def blob(request: Request) -> Response:
    """``GET /blobs/{key}``: an object under ``jobs/``, streamed."""
    api = context(request)
    key = request.path_params["key"]
    try:
        check_key(key)
    except BlobKeyError:
        raise ApiError(404, f"no object {key!r}: expected a key under jobs/") from None
    if not key.startswith("jobs/"):
        raise ApiError(404, f"no object {key!r}: the API serves only keys under jobs/")
    info = api.blobs.head(key)
    name = quote(key.rpartition("/")[2])
    headers = {
        "Content-Length": str(info.size),
        "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
    }
    return StreamingResponse(
        api.blobs.get(key), media_type="application/octet-stream", headers=headers
    )


ROUTES: list[BaseRoute] = [
    Route(f"{PREFIX}/jobs", by_method(list_jobs, with_body(create_job)), methods=["GET", "POST"]),
    Route(f"{PREFIX}/jobs/{{job}}", get_job, methods=["GET"]),
    Route(f"{PREFIX}/jobs/{{job}}/tasks", list_tasks, methods=["GET"]),
    Route(f"{PREFIX}/jobs/{{job}}/tasks/{{stage}}/{{part:int}}", get_task, methods=["GET"]),
    Route(f"{PREFIX}/jobs/{{job}}/cancel", cancel, methods=["POST"]),
    Route(f"{PREFIX}/jobs/{{job}}/retry", retry, methods=["POST"]),
    Route(f"{PREFIX}/jobs/{{job}}/results", results, methods=["GET"]),
    Route(f"{PREFIX}/blobs/{{key:path}}", blob, methods=["GET"]),
]
