"""Helpers for the scheduling tests: submitting specs to a grid in tmp and reading it back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchfarm.actors.backends import open_blobs, open_store, open_task_queues
from batchfarm.actors.backends.store import JobView, TaskView
from batchfarm.actors.manager.spec import JobSpec, parse_spec
from batchfarm.actors.manager.submit import submit_job
from batchfarm.actors.settings import Settings, node_class_names

SLEEP = "tests.worker.handlers:sleep"


def spec(data: dict[str, Any]) -> JobSpec:
    """A checked spec from its tree (no local files)."""
    return parse_spec(data, source="job.toml", base_dir=".")


def sleep_job(parts: int, seconds: float, *, name: str, priority: str = "normal") -> JobSpec:
    """One stage of ``parts`` tasks, each sleeping ``seconds``."""
    stage = {"name": "work", "handler": SLEEP, "parts": parts, "params": {"seconds": seconds}}
    return spec({"name": name, "priority": priority, "stages": [stage]})


def files_job(folder: Path, name: str, parts: int, handler: str, params: dict[str, Any]) -> JobSpec:
    """One stage of ``handler`` over ``parts`` small local files, written to ``folder/name``."""
    (folder / name).mkdir()
    for n in range(parts):
        (folder / name / f"in{n}.bin").write_bytes(bytes([n]) * 10)
    tree = {
        "name": name,
        "inputs": {"files": [f"{name}/*.bin"]},
        "stages": [{"name": "work", "handler": handler, "params": params}],
    }
    return parse_spec(tree, source=f"{name}.toml", base_dir=folder)


def submit(settings: Settings, job: JobSpec) -> str:
    """Submit ``job`` as the manager's API does (record, then enqueue); return its id."""
    with (
        open_store(settings.store) as store,
        open_task_queues(settings.queue, node_class_names(settings)) as tasks,
    ):
        blobs = open_blobs(settings.storage)
        try:
            return submit_job(job, store=store, blobs=blobs, tasks=tasks, defaults=settings.tasks)
        finally:
            blobs.close()


def job(settings: Settings, job_id: str) -> JobView:
    """The job as stored now."""
    with open_store(settings.store) as store:
        found = store.job(job_id)
    assert found is not None, job_id
    return found


def tasks(settings: Settings, job_id: str) -> list[TaskView]:
    """The job's tasks as stored now, by stage and part."""
    with open_store(settings.store) as store:
        return store.tasks(job_id, limit=None)


def state_is(settings: Settings, job_id: str, *states: str):
    """A condition for ``wait_for``: the job is in one of ``states``."""
    return lambda: job(settings, job_id).state in states
