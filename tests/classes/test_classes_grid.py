"""Node classes end to end, as real processes: a manager and one node of each of two classes.

A job's two stages name different classes; each task must run on a node of its stage's
class, and none may be lost. A stage of a class with no node says why it waits, and a stage
naming a class the config lacks is refused before anything is uploaded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import pytest

from batchfarm.actors.backends import open_blobs, open_store
from batchfarm.actors.settings.model import NodeClasses
from tests.cli.grid import cli
from tests.manager.managerproc import ManagerGrid
from tests.manager.test_manager_process import job_state
from tests.worker.grid import wait_for

pytestmark = pytest.mark.slow

#: The grid's classes beside "default": "heavy" has a node, "gpu" none.
CLASSES = {"heavy": {"max_nodes": 2}, "gpu": {}}


@pytest.fixture
def grid(tmp_path):
    processes = ManagerGrid(tmp_path, node_workers=1)
    processes.env["BATCHFARM_CLASSES"] = "{heavy = {max_nodes = 2}, gpu = {}}"
    processes.settings = dataclasses.replace(processes.settings, classes=NodeClasses(CLASSES))
    yield processes
    processes.close()


def write_spec(folder: Path, name: str, stages: list[dict]) -> Path:
    """A job spec file over three small inputs, as a user writes one."""
    inputs = folder / name
    inputs.mkdir()
    for n in range(3):
        (inputs / f"in{n}.bin").write_bytes(bytes([n]) * 64)
    spec = {"name": name, "inputs": {"files": [f"{name}/*.bin"]}, "stages": stages}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def submit(grid: ManagerGrid, spec: Path) -> str:
    done = cli(grid.environment, "submit", str(spec), cwd=spec.parent)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_each_task_runs_on_its_stages_class_and_a_class_without_nodes_says_why(tmp_path, grid):
    grid.manager()
    grid.node("node-default")
    grid.node("node-heavy", node_node_class="heavy")
    api = httpx.Client(base_url=grid.api_url, timeout=10)
    wait_for(lambda: _nodes_up(api) == 2, timeout=30, what="both nodes reporting")

    spec = write_spec(
        tmp_path,
        "mixed",
        [
            {"name": "light", "handler": "tests.worker.handlers:copy"},
            {"name": "big", "handler": "tests.worker.handlers:copy", "node_class": "heavy"},
        ],
    )
    job_id = submit(grid, spec)
    wait_for(lambda: job_state(grid.settings, job_id) == "succeeded", timeout=60, what="job")

    with open_store(grid.settings.store) as store:
        tasks = store.tasks(job_id)
        nodes = {node.id: node.node_class for node in store.nodes()}
    ran_on = sorted((t.stage, t.part, t.node_id, t.state) for t in tasks)
    assert ran_on == [
        *[("big", n, "node-heavy", "succeeded") for n in range(3)],
        *[("light", n, "node-default", "succeeded") for n in range(3)],
    ]
    assert nodes == {"node-default": "default", "node-heavy": "heavy"}
    # Nothing lost or run twice: one attempt each, and every output of the last stage there.
    assert [(t.attempts, t.duplicate_runs) for t in tasks] == [(1, 0)] * 6
    blobs = open_blobs(grid.settings.storage)
    try:
        listed = blobs.list(f"jobs/{job_id}/big/").items
        outputs = [item.key for item in listed if item.key.endswith(".bin")]
    finally:
        blobs.close()
    assert sorted({key.split("/")[-2] for key in outputs}) == ["0", "1", "2"]  # every part's

    # The queues /metrics reports include each class's own.
    metrics = api.get("/metrics").text
    for queue in ("tasks", "tasks-high", "tasks-heavy", "tasks-heavy-high", "tasks-gpu"):
        assert f'batchfarm_queue_messages{{queue="{queue}",state="visible"}} 0.0' in metrics

    # A stage of a class the config has but no node serves waits, and says so.
    waiting = write_spec(
        tmp_path, "waits", [{"name": "render", "handler": "checksum", "node_class": "gpu"}]
    )
    job_id = submit(grid, waiting)

    def why() -> str | None:
        (stage,) = api.get(f"/api/v1/jobs/{job_id}").json()["stages"]
        return stage["why"]

    wait_for(lambda: why() is not None, timeout=10, what="the stage's why")
    assert why() == "waiting for a node of class 'gpu': none is up"
    with open_store(grid.settings.store) as store:
        assert {t.state for t in store.tasks(job_id)} == {"queued"}
    shown = cli(grid.environment, "status", job_id)
    assert "waiting for a node of class 'gpu'" in shown.stdout, shown.stdout

    refused_spec = write_spec(
        tmp_path, "typo", [{"name": "render", "handler": "checksum", "node_class": "gpus"}]
    )
    refused = cli(grid.environment, "submit", str(refused_spec), cwd=tmp_path)
    assert refused.returncode == 1
    assert "stages[0].node_class" in refused.stderr
    assert 'expected a node class of the grid: "default", "gpu", "heavy"' in refused.stderr
    blobs = open_blobs(grid.settings.storage)
    try:
        # Nothing uploaded for the refused job: only the waiting job's inputs are stored.
        assert not [item.key for item in blobs.list("jobs/").items if "typo" in item.key]
    finally:
        blobs.close()
    api.close()


def _nodes_up(api: httpx.Client) -> int:
    try:
        found = api.get("/api/v1/nodes").json()
    except httpx.HTTPError:
        return 0
    return sum(1 for node in found.get("nodes", []) if node.get("state") == "up")


def test_one_manager_scales_each_class_with_a_provider(tmp_path):
    grid = ManagerGrid(
        tmp_path,
        node_workers=1,
        autoscale_interval=0.3,
        autoscale_idle=1.0,
        autoscale_target_drain=2.0,
        autoscale_default_task=1.0,
    )
    # Only "heavy" is autoscaled (local nodes); the default class has no provider.
    grid.env["BATCHFARM_CLASSES"] = '{heavy = {provider = "local", max_nodes = 1}}'
    classes = NodeClasses({"heavy": {"provider": "local", "max_nodes": 1}})
    grid.settings = dataclasses.replace(grid.settings, classes=classes)
    api = httpx.Client(base_url=grid.api_url, timeout=10)
    try:
        manager = grid.manager()
        wait_for(lambda: _scaling(api) is not None, timeout=30, what="the manager's API")
        spec = write_spec(
            tmp_path,
            "scaled",
            [{"name": "big", "handler": "tests.worker.handlers:copy", "node_class": "heavy"}],
        )
        job_id = submit(grid, spec)
        wait_for(lambda: job_state(grid.settings, job_id) == "succeeded", timeout=60, what="job")
        with open_store(grid.settings.store) as store:
            assert {t.node_id for t in store.tasks(job_id)} == {"local-heavy-1"}
        # Idle again, the class's fleet goes back to its minimum.
        wait_for(lambda: _desired(api, "heavy") == 0, timeout=30, what="heavy back to 0")

        shown = _scaling(api)
        assert [c["node_class"] for c in shown["classes"]] == ["default", "heavy"]
        default, heavy = shown["classes"]
        assert (default["provider"], default["events"]) == ("", [])
        assert (heavy["provider"], heavy["max_nodes"]) == ("local", 1)
        moves = [(e["desired_before"], e["desired_after"]) for e in reversed(heavy["events"])]
        assert [m for m in moves if m[0] != m[1]] == [(0, 1), (1, 0)]
        metrics = api.get("/metrics").text
        assert 'batchfarm_autoscaler_desired_nodes{node_class="heavy"} 0.0' in metrics
        assert 'batchfarm_autoscaler_desired_nodes{node_class="default"}' not in metrics
        listed = cli(grid.environment, "scaling")
        assert listed.returncode == 0, listed.stderr
        assert "autoscaler: off ([autoscale] provider is empty)" in listed.stdout
        assert "autoscaler: local, class heavy: desired 0" in listed.stdout
        manager.proc.terminate()
        assert manager.proc.wait(30) == 0, manager.output()
    finally:
        api.close()
        grid.close()


def _scaling(api: httpx.Client) -> dict | None:
    try:
        return api.get("/api/v1/scaling").json()
    except httpx.HTTPError:
        return None


def _desired(api: httpx.Client, node_class: str) -> int | None:
    found = _scaling(api) or {}
    views = {c["node_class"]: c for c in found.get("classes", [])}
    return views.get(node_class, {}).get("desired")
