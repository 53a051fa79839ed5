"""Node classes in the manager: each stage's tasks go to its class's queues, and only there.

A job's stages name different classes; its first tasks, the chained and fan-in tasks the
results processor sends, and retried tasks all go to the queue of their stage's class (and
the job's priority). Each class's worker sees only its own class's queues, as a node does.
"""

from __future__ import annotations

import dataclasses

import pytest

from batchfarm.actors.backends import (
    COMPLETIONS,
    TASKS,
    TASKS_HIGH,
    open_blobs,
    open_queue,
    open_store,
    open_task_queues,
    task_queue_name,
)
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.backends.store import JobState
from batchfarm.actors.errors import QueueError, SpecError
from batchfarm.actors.manager.plan import SpecPlanner
from batchfarm.actors.manager.results import ResultsProcessor
from batchfarm.actors.manager.retry import retry_job
from batchfarm.actors.settings import node_class_names
from batchfarm.actors.settings.model import NodeClasses
from tests.manager import jobs_grid
from tests.manager.results_grid import InlineWorker, drive
from tests.worker.grid import make_settings

#: Every queue of the grid below: the default class keeps the names from before classes.
QUEUES = [
    "tasks-high",
    "tasks-gpu-high",
    "tasks-heavy-high",
    "tasks",
    "tasks-gpu",
    "tasks-heavy",
]


def test_queue_names_per_class_and_priority():
    assert [task_queue_name(p) for p in (1, 0)] == [TASKS_HIGH, TASKS]
    assert [task_queue_name(p, "gpu") for p in (5, 1, 0, -1)] == [
        "tasks-gpu-high",
        "tasks-gpu-high",
        "tasks-gpu",
        "tasks-gpu",
    ]


@pytest.fixture
def grid(tmp_path):
    """An embedded grid with classes heavy and gpu, the manager's queues (every class)."""
    settings = make_settings(tmp_path / "state")
    settings = dataclasses.replace(settings, classes=NodeClasses({"heavy": {}, "gpu": {}}))
    store = open_store(settings.store)
    queues = open_task_queues(settings.queue, node_class_names(settings))
    completions = open_queue(settings.queue, COMPLETIONS)
    blobs = open_blobs(settings.storage)
    yield settings, store, queues, completions, blobs
    for closing in (queues, completions, blobs, store):
        closing.close()


def visible(queues: TaskQueues) -> dict[str, int]:
    return {name: depth.visible for name, depth in queues.depths().items() if depth.visible}


def test_the_manager_opens_every_class_and_a_node_only_its_own(grid):
    settings, _, queues, _, _ = grid
    assert queues.node_classes() == ["default", "gpu", "heavy"]
    assert queues.names() == QUEUES
    node = open_task_queues(settings.queue, ["heavy"])
    try:
        assert node.names() == ["tasks-heavy-high", "tasks-heavy"]  # highest first
        assert node.for_priority(1, "heavy").name == "tasks-heavy-high"
        with pytest.raises(QueueError, match="no task queues of node class 'default' here"):
            node.for_priority(0)
        node.for_priority(0, "heavy").send("x")
        assert queues.depth("heavy").visible == 1
        assert queues.depth("default").visible == queues.depth("gpu").visible == 0
        assert queues.depth().visible == 1
    finally:
        node.close()


def test_each_stages_tasks_go_to_its_class_and_run_only_on_that_class(grid):
    settings, store, queues, completions, blobs = grid
    keys = [f"in/{p}.bin" for p in range(3)]
    for part, key in enumerate(keys):
        blobs.put(key, f"input {part}".encode())
    stages = [
        {"name": "first", "handler": "noop", "node_class": "heavy"},
        {"name": "second", "handler": "noop"},
        {"name": "all", "handler": "noop", "mode": "fan_in", "node_class": "gpu"},
    ]
    data = {"name": "mix", "priority": "high", "inputs": {"keys": keys}, "stages": stages}
    job_id = jobs_grid.submit(settings, jobs_grid.spec(data))
    assert visible(queues) == {"tasks-heavy-high": 3}

    # One worker per class, each seeing only its class's queues, as the class's node does.
    workers = {
        name: InlineWorker(TaskQueues(by_class={name: queues.by_class[name]}), completions, blobs)
        for name in queues.node_classes()
    }
    workers["default"].fail.add(f"{job_id}/second/1")  # fails for good once: retried below

    def run_all() -> None:
        for worker in workers.values():
            worker()

    planner = SpecPlanner(lambda job: store.job(job).spec, settings.tasks)
    results = ResultsProcessor(store, queues, completions, planner)
    drive(results, lambda: store.job(job_id).state == JobState.FAILED, between=run_all)
    assert retry_job(store, queues, job_id, settings.tasks) == 1
    assert visible(queues) == {"tasks-high": 1}  # the retried task goes to its class's queue
    done = lambda: store.job(job_id).state == JobState.SUCCEEDED  # noqa: E731
    drive(results, done, between=run_all, what="the job done")

    stage_of = {name: {run.split("/")[1] for run in w.runs} for name, w in workers.items()}
    assert stage_of == {"heavy": {"first"}, "default": {"second"}, "gpu": {"all"}}
    assert sorted(run for w in workers.values() for run in w.runs) == sorted(
        [*(t.task_id for t in store.tasks(job_id, limit=None)), f"{job_id}/second/1"]
    )
    assert visible(queues) == {}


def test_a_stage_of_a_class_the_grid_lacks_is_refused_before_anything_is_written(grid):
    settings, store, queues, _, blobs = grid
    data = {
        "name": "typo",
        "inputs": {"keys": ["in/x.bin"]},
        "stages": [
            {"name": "a", "handler": "noop"},
            {"name": "b", "handler": "noop", "node_class": "hevy"},
        ],
    }
    with pytest.raises(SpecError) as refused:
        jobs_grid.submit(settings, jobs_grid.spec(data))
    assert str(refused.value) == (
        'job.toml: stages[1].node_class = "hevy": expected a node class of the grid:'
        ' "default", "gpu", "heavy" (see [classes.NAME])'
    )
    assert store.jobs() == []
    assert blobs.list("jobs/").items == []
    assert visible(queues) == {}


def test_a_class_the_config_dropped_is_opened_on_demand_so_its_jobs_wait_not_stall(grid):
    settings, store, queues, completions, blobs = grid
    blobs.put("in/0.bin", b"x")
    data = {
        "name": "old",
        "inputs": {"keys": ["in/0.bin"]},
        "stages": [
            {"name": "a", "handler": "noop"},
            {"name": "b", "handler": "noop", "node_class": "gpu"},
        ],
    }
    job_id = jobs_grid.submit(settings, jobs_grid.spec(data))
    # The manager restarts with a config that no longer has the gpu class.
    manager = open_task_queues(settings.queue, ["default", "heavy"], open_others=True)
    try:
        assert manager.node_classes() == ["default", "heavy"]
        planner = SpecPlanner(lambda job: store.job(job).spec, settings.tasks)
        results = ResultsProcessor(store, manager, completions, planner)
        worker = InlineWorker(
            TaskQueues(by_class={"default": queues.by_class["default"]}), completions, blobs
        )
        # Stage b's task still goes to tasks-gpu, where it waits for a gpu node.
        drive(results, lambda: queues.depth("gpu").visible == 1, between=worker, what="b queued")
        assert "tasks-gpu" in manager.names()
        assert manager.node_classes() == ["default", "heavy"]  # submits still name the config's
        assert store.task(job_id, "b", 0).state == "queued"
    finally:
        manager.close()
