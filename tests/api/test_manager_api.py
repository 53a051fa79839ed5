"""The API served by a real ``batchfarm manager`` process, with a real node doing the work."""

from __future__ import annotations

import signal
import socket

import httpx
import pytest

from batchfarm.actors.backends import open_blobs
from batchfarm.actors.runtime import ExitCode
from tests.api.apigrid import API, metric
from tests.manager.managerproc import ManagerGrid
from tests.media import make_clip
from tests.ports import free_port
from tests.worker.grid import wait_for


@pytest.fixture
def processes(tmp_path):
    started = ManagerGrid(tmp_path)
    yield started
    started.close()


def answers(client: httpx.Client) -> bool:
    try:
        return client.get(f"{API}/health").status_code == 200
    except httpx.TransportError:
        return False


def get(client: httpx.Client, path: str):
    response = client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def node_state(client: httpx.Client, node: str) -> tuple[str, bool] | None:
    for found in get(client, f"{API}/nodes")["nodes"]:
        if found["id"] == node:
            return found["state"], found["cordoned"]
    return None


def test_a_two_stage_job_posted_to_the_manager_runs_on_a_node(processes):
    manager = processes.manager()
    node = processes.node(node_workers=2)
    blobs = open_blobs(processes.settings.storage)
    keys = [f"uploads/clip{n}.bin" for n in range(3)]
    for n, key in enumerate(keys):
        blobs.put(key, bytes([n]) * 1000)
    spec = {
        "name": "e2e",
        "inputs": {"keys": keys},
        "stages": [
            {"name": "sum", "handler": "checksum", "params": {"manifest": "sum.txt"}},
            {
                "name": "all",
                "handler": "checksum",
                "mode": "fan_in",
                "params": {"manifest": "m.txt"},
            },
        ],
    }
    with httpx.Client(base_url=processes.api_url, timeout=10) as client:
        wait_for(lambda: answers(client), timeout=20, what="the manager's API")
        posted = client.post(f"{API}/jobs", json={"spec": spec})
        assert posted.status_code == 201, posted.text
        job_id = posted.json()["id"]
        wait_for(
            lambda: get(client, f"{API}/jobs/{job_id}")["state"] == "succeeded",
            timeout=60,
            what="the job done",
        )
        job = get(client, f"{API}/jobs/{job_id}")
        assert (job["done"], job["total"], job["progress"]) == (4, 4, 1.0)
        assert [(s["name"], s["state"]) for s in job["stages"]] == [
            ("sum", "succeeded"),
            ("all", "succeeded"),
        ]

        results = get(client, f"{API}/jobs/{job_id}/results")["results"]
        assert [r["key"] for r in results] == [f"jobs/{job_id}/all/0/m.txt"]
        manifest = client.get(results[0]["url"])
        assert manifest.content == blobs.read(results[0]["key"])
        named = sorted(line.split()[1] for line in manifest.text.splitlines())
        assert len(named) == 3
        assert all(name.startswith(f"jobs/{job_id}/sum/") for name in named)

        text = client.get("/metrics").text
        assert metric(text, "batchfarm_task_duration_seconds_count", handler="checksum") == 4
        assert metric(text, "batchfarm_jobs", state="succeeded") == 1

        # Steering: the commands go out through the manager's loop to the node.
        wait_for(lambda: node_state(client, "node-g") == ("up", False), what="the node up")
        paused = client.post(f"{API}/nodes/node-g/pause")
        assert paused.status_code == 202
        assert paused.json() == {"node": "node-g", "command": "pause", "sent": True}
        wait_for(lambda: node_state(client, "node-g") == ("paused", False), what="paused")
        assert client.post(f"{API}/nodes/node-g/cordon").json()["cordoned"] is True
        assert node_state(client, "node-g") == ("paused", True)
        # Released, a cordoned node is resumed.
        released = client.post(f"{API}/nodes/node-g/uncordon").json()
        assert released == {"node": "node-g", "cordoned": False, "resumed": True}
        wait_for(lambda: node_state(client, "node-g") == ("up", False), what="resumed")
        drained = client.post(f"{API}/nodes/node-g/drain")
        assert drained.json()["sent"] is True
        assert node.wait(30) == 0, node.output()
    blobs.close()
    manager.proc.send_signal(signal.SIGTERM)
    assert manager.proc.wait(20) == 0, manager.output()


def test_a_manager_refuses_to_listen_beyond_loopback_without_a_token(processes):
    manager = processes.manager(api_listen=f"http://0.0.0.0:{free_port()}")
    assert manager.proc.wait(20) == 1
    output = manager.output()
    assert "[api] token" in output
    assert "BATCHFARM_API_TOKEN" in output


def test_a_manager_whose_api_port_is_taken_stops_naming_the_setting(processes):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        manager = processes.manager(api_listen=f"http://127.0.0.1:{port}")
        assert manager.proc.wait(20) == ExitCode.CONFIG
    output = manager.output()
    assert "[api] listen" in output
    assert str(port) in output


def test_a_probe_jobs_stream_facts_are_stored_with_its_tasks(processes, tmp_path):
    processes.manager()
    processes.node(node_workers=1)
    blobs = open_blobs(processes.settings.storage)
    clip = make_clip(tmp_path / "in.mp4", seconds=2.0, width=320, height=240)
    blobs.put_file("uploads/in.mp4", clip)
    blobs.close()
    spec = {
        "name": "facts",
        "inputs": {"keys": ["uploads/in.mp4"]},
        "stages": [{"handler": "probe"}],
    }
    with httpx.Client(base_url=processes.api_url, timeout=10) as client:
        wait_for(lambda: answers(client), timeout=20, what="the manager's API")
        job_id = client.post(f"{API}/jobs", json={"spec": spec}).json()["id"]
        wait_for(
            lambda: get(client, f"{API}/jobs/{job_id}")["state"] == "succeeded",
            timeout=60,
            what="the probe done",
        )
        task = get(client, f"{API}/jobs/{job_id}/tasks/probe/0")
    facts = task["result"]
    assert facts["duration_s"] == pytest.approx(2.0, abs=0.05)
    assert (facts["video"]["width"], facts["video"]["height"]) == (320, 240)
    assert facts["audio"]["codec"] == "aac"
