"""The API's OpenAPI 3.1 document, written by hand and served at ``/openapi.json``.

A test checks that every route of the app is described here and every path here is a route.
"""

from __future__ import annotations

from typing import Any

PREFIX = "/api/v1"

_NUM = {"type": "number"}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_TIME = {"type": ["number", "null"], "description": "seconds since the epoch"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}
_COUNTS = {
    "type": "object",
    "description": "tasks per state, and their total",
    "additionalProperties": _INT,
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(**props: Any) -> dict[str, Any]:
    """An object schema whose every property is required."""
    return {"type": "object", "properties": props, "required": list(props)}


def _opt(**props: Any) -> dict[str, Any]:
    """An object schema whose properties are all optional."""
    return {"type": "object", "properties": props}


def _list_of(key: str, item: dict[str, Any]) -> dict[str, Any]:
    return _obj(**{key: {"type": "array", "items": item}})


_ERROR = _opt(
    error={**_STR, "description": "one line naming what was wrong and what was expected"},
    status=_INT,
    field={**_STR, "description": "the field at fault, e.g. stages[1].params.height"},
)
_JOB_FIELDS: dict[str, Any] = {
    "id": _STR,
    "name": _STR,
    "state": _STR,
    "reason": _STR_OR_NULL,
    "why": {**_STR_OR_NULL, "description": "why a job that runs nothing waits"},
    "priority": _STR,
    "created_at": _NUM,
    "start_at": _TIME,
    "deadline": {**_TIME, "description": "when the job should be done by, if it has a deadline"},
    "deadline_status": {
        "type": ["object", "null"],
        "description": "whether the deadline will be met (null without one)",
        "properties": {
            "state": {
                "type": "string",
                "enum": ["met", "missed", "on_track", "at_risk", "unknown"],
            },
            "text": {**_STR, "description": "e.g. deadline 2026-12-31T18:00:00Z: on track (...)"},
        },
        "required": ["state", "text"],
    },
    "started_at": _TIME,
    "finished_at": _TIME,
    "wall_s": _NUM_OR_NULL,
    "cpu_s": _NUM,
    "tasks": _COUNTS,
    "total": {**_INT, "description": "tasks known, counting parts of stages still to come"},
    "done": {**_INT, "description": "tasks succeeded"},
    "failed": _INT,
    "progress": {**_NUM, "minimum": 0, "maximum": 1},
    "eta_s": _NUM_OR_NULL,
    "throughput": {**_NUM_OR_NULL, "description": "finished tasks per second"},
    "cost_dollars": {**_NUM, "description": "what the job's task runs cost (node-seconds x price)"},
}
#: What a task's, stage's or job's runs cost: run seconds x node price / node workers.
_COST = {**_NUM, "description": "dollars: run seconds x node price per hour / 3600 / workers"}
_STAGE = _obj(
    name=_STR,
    index=_INT,
    handler=_STR,
    mode=_STR,
    node_class=_STR,
    state=_STR,
    reason=_STR_OR_NULL,
    why=_STR_OR_NULL,
    tasks=_COUNTS,
    total=_INT,
    done=_INT,
    failed=_INT,
    progress=_NUM,
    wall_s=_NUM_OR_NULL,
    cpu_s=_NUM,
    compute_s=_NUM,
    bytes_in=_INT,
    bytes_out=_INT,
    duplicate_runs=_INT,
    cost_dollars=_COST,
    throughput=_NUM_OR_NULL,
    eta_s=_NUM_OR_NULL,
    started_at=_TIME,
    finished_at=_TIME,
)
_TASK = _obj(
    id={**_STR, "description": "<job>/<stage>/<part>"},
    job_id=_STR,
    stage=_STR,
    part=_INT,
    state=_STR,
    reason=_STR_OR_NULL,
    why=_STR_OR_NULL,
    inputs={"type": "array", "items": _STR},
    outputs={"type": "array", "items": {"type": "object"}},
    attempts=_INT,
    node_id=_STR_OR_NULL,
    worker={"type": ["integer", "null"]},
    error={"type": ["object", "null"]},
    queued_at=_TIME,
    started_at=_TIME,
    finished_at=_TIME,
    queue_wait_s=_NUM,
    fetch_s=_NUM,
    compute_s=_NUM,
    upload_s=_NUM,
    cpu_s=_NUM,
    bytes_in=_INT,
    bytes_out=_INT,
    duplicate_runs=_INT,
    updated_at=_NUM,
    cost_dollars=_COST,
)
_WORKER = _obj(
    node_id=_STR,
    index=_INT,
    pid=_INT,
    core={"type": ["integer", "null"]},
    state=_STR,
    task=_STR_OR_NULL,
    done=_INT,
    failed=_INT,
    cpu_percent=_NUM,
    rss_bytes=_INT,
    updated_at=_NUM,
)
_NODE = _obj(
    id=_STR,
    node_class=_STR,
    host=_STR,
    state=_STR,
    reason=_STR_OR_NULL,
    cordoned=_BOOL,
    cordon_reason=_STR_OR_NULL,
    first_seen=_NUM,
    last_heartbeat=_NUM,
    cpu_percent=_NUM,
    rss_bytes=_INT,
    price_per_hour={**_NUM_OR_NULL, "description": "dollars per node-hour; null if unknown"},
    instance_type=_STR_OR_NULL,
    zone=_STR_OR_NULL,
    lifecycle={**_STR_OR_NULL, "description": "spot or on-demand (EC2 only)"},
    workers={"type": "array", "items": _ref("Worker")},
    busy=_INT,
)
_FAILURE = _obj(task=_STR, stage=_STR, part=_INT, error={"type": ["object", "null"]})
_RESULT = _obj(
    task=_STR, stage=_STR, part=_INT, key=_STR, size={"type": ["integer", "null"]}, url=_STR
)
_SCALING_EVENT = _obj(
    id=_INT,
    time=_NUM,
    node_class=_STR,
    provider=_STR,
    direction={"type": "string", "enum": ["out", "in", "hold"]},
    desired_before=_INT,
    desired_after=_INT,
    backlog={**_INT, "description": "waiting plus running tasks when deciding"},
    rate={**_NUM, "description": "tasks per second one node finishes"},
    nodes={**_INT, "description": "nodes up when deciding"},
    reason=_STR,
    details={"type": "object", "description": "the figures the decision was made from"},
)
SCHEMAS: dict[str, Any] = {
    "Error": _ERROR,
    "Job": _obj(**_JOB_FIELDS),
    "JobDetail": _obj(
        **_JOB_FIELDS,
        stages={"type": "array", "items": _ref("Stage")},
        failures={"type": "array", "items": _ref("Failure"), "maxItems": 20},
    ),
    "Stage": _STAGE,
    "Task": _TASK,
    "Failure": _FAILURE,
    "Result": _RESULT,
    "Node": _NODE,
    "Worker": _WORKER,
    "ScalingEvent": _SCALING_EVENT,
    "ScalingClass": _obj(
        provider={**_STR, "description": '"local", "aws", or "" when the class is not scaled'},
        node_class=_STR,
        group={**_STR, "description": 'the Auto Scaling group ("aws")'},
        min_nodes=_INT,
        max_nodes=_INT,
        price_per_hour={**_NUM, "description": "on-demand dollars per node-hour; 0: unknown"},
        desired={"type": ["integer", "null"], "description": "nodes as last decided"},
        nodes={**_INT, "description": "nodes of the class reporting now"},
        last_decision={"oneOf": [_ref("ScalingEvent"), {"type": "null"}]},
        events={"type": "array", "items": _ref("ScalingEvent")},
    ),
    "Scaling": {
        "description": "the default node class's fields, and every class in classes",
        "allOf": [
            _ref("ScalingClass"),
            _obj(classes={"type": "array", "items": _ref("ScalingClass")}),
        ],
    },
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "a bad request: the field at fault is named",
        401: "no token, or a wrong one",
        403: "the read token cannot write",
        404: "not found",
        409: "a conflict with the current state",
        413: "the body is over [api] max_request_bytes",
        503: "a backend (store, queue, blob store) or the manager's loop is unavailable",
    }
    return {str(code): _json(_ref("Error"), words[code]) for code in (401, *codes)}


def _path(name: str, description: str, schema: dict[str, Any] = _STR) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _op(summary: str, ok: dict[str, Any], *errors: int, **extra: Any) -> dict[str, Any]:
    status = extra.pop("status", "200")
    return {"summary": summary, "responses": {status: ok, **_errors(*errors)}, **extra}


_JOB_ID = _path("job", "the job's id")
_NODE_ID = _path("node", "the node's id")
_STATES = {"type": "array", "items": _STR}


def _node_command(summary: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    ok = _json(_obj(node=_STR, command=_STR, sent=_BOOL), "the command went to the loop")
    extra: dict[str, Any] = {"parameters": [_NODE_ID], "status": "202"}
    if body is not None:
        extra["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": body}},
        }
    return {"post": _op(summary, ok, 404, 409, 503, **extra)}


_CORDON = {
    "post": _op(
        "Cordon a node: it takes no new work (the manager pauses it)",
        _json(_obj(node=_STR, cordoned=_BOOL)),
        400,
        404,
        parameters=[_NODE_ID],
        requestBody={
            "required": False,
            "content": {"application/json": {"schema": _opt(reason=_STR)}},
        },
    )
}
_UNCORDON = {
    "post": _op(
        "Release a cordoned node and resume it (resumed: the command went out)",
        _json(_obj(node=_STR, cordoned=_BOOL, resumed=_BOOL)),
        404,
        parameters=[_NODE_ID],
    )
}


PATHS: dict[str, Any] = {
    f"{PREFIX}/health": {
        "get": _op("The manager is up", _json(_obj(status=_STR, grid=_STR, version=_STR)))
    },
    f"{PREFIX}/jobs": {
        "post": {
            **_op(
                "Submit a job whose inputs are in the blob store",
                _json(_obj(id=_STR, state=_STR, created=_BOOL), "the job was created"),
                400,
                409,
                413,
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _opt(
                                id={**_STR, "description": "optional: the id new_job_id made"},
                                spec={"type": "object", "description": "the spec, stored form"},
                            )
                        }
                    },
                },
                status="201",
            ),
        },
        "get": _op(
            "Jobs, newest first",
            _json(_list_of("jobs", _ref("Job"))),
            400,
            parameters=[
                _query("state", "only jobs in these states (repeatable)", _STATES),
                _query("limit", "at most this many (1 to 1000)", {**_INT, "default": 100}),
            ],
        ),
    },
    f"{PREFIX}/jobs/{{job}}": {
        "get": _op(
            "A job, its stages and failures", _json(_ref("JobDetail")), 404, parameters=[_JOB_ID]
        )
    },
    f"{PREFIX}/jobs/{{job}}/tasks": {
        "get": _op(
            "A job's tasks",
            _json(_list_of("tasks", _ref("Task"))),
            400,
            404,
            parameters=[
                _JOB_ID,
                _query("stage", "only this stage's tasks", _STR),
                _query("state", "only tasks in these states (repeatable)", _STATES),
                _query("limit", "at most this many (1 to 1000)", {**_INT, "default": 100}),
                _query("offset", "skip this many", {**_INT, "default": 0}),
            ],
        )
    },
    f"{PREFIX}/jobs/{{job}}/tasks/{{stage}}/{{part}}": {
        "get": _op(
            "One task",
            _json(_ref("Task")),
            404,
            parameters=[
                _JOB_ID,
                _path("stage", "the stage's name"),
                _path("part", "the part", _INT),
            ],
        )
    },
    f"{PREFIX}/jobs/{{job}}/cancel": {
        "post": _op(
            "Cancel a job (cancelled is false if it had finished)",
            _json(_obj(id=_STR, cancelled=_BOOL, state=_STR)),
            404,
            parameters=[_JOB_ID],
        )
    },
    f"{PREFIX}/jobs/{{job}}/retry": {
        "post": _op(
            "Send a job's failed tasks again",
            _json(_obj(id=_STR, retried=_INT, state=_STR)),
            404,
            parameters=[_JOB_ID],
        )
    },
    f"{PREFIX}/jobs/{{job}}/results": {
        "get": _op(
            "The outputs of the last stage's succeeded tasks",
            _json(_list_of("results", _ref("Result"))),
            404,
            parameters=[_JOB_ID],
        )
    },
    f"{PREFIX}/blobs/{{key}}": {
        "get": _op(
            "An object under jobs/, streamed",
            {
                "description": "the object's bytes",
                "content": {"application/octet-stream": {"schema": {**_STR, "format": "binary"}}},
            },
            404,
            parameters=[_path("key", "the object's key, jobs/... (slashes included)")],
        )
    },
    f"{PREFIX}/nodes": {
        "get": _op("Nodes and their workers", _json(_list_of("nodes", _ref("Node"))))
    },
    f"{PREFIX}/nodes/{{node}}/drain": _node_command("Drain a node: finish running tasks, exit"),
    f"{PREFIX}/nodes/{{node}}/pause": _node_command(
        "Pause a node: take no new tasks (force: hand running ones back)",
        _opt(force=_BOOL),
    ),
    f"{PREFIX}/nodes/{{node}}/resume": _node_command("Resume a paused node"),
    f"{PREFIX}/nodes/{{node}}/cordon": _CORDON,
    f"{PREFIX}/nodes/{{node}}/uncordon": _UNCORDON,
    f"{PREFIX}/scaling": {
        "get": _op(
            "The autoscaler per node class: provider, limits, fleet, last decision, events",
            _json(_ref("Scaling")),
            400,
            parameters=[_query("limit", "at most this many events (1 to 1000)", _INT)],
        )
    },
    "/metrics": {
        "get": _op(
            "The grid's metrics, Prometheus text format",
            {"description": "metrics", "content": {"text/plain": {"schema": _STR}}},
        )
    },
    "/openapi.json": {"get": _op("This document", _json({"type": "object"}))},
}


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document for the package ``version``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "batchfarm manager API",
            "version": version,
            "description": (
                "Submit and follow jobs, fetch results, steer nodes. Every error is JSON:"
                " {error, status[, field]}. With [api] token set, send Authorization: Bearer"
                " <token> (or the read token, for GET and HEAD only)."
            ),
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
