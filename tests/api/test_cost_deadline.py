"""Costs and deadlines through the API, ``status``'s tables and ``/metrics``."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import UTC, datetime

from rich.console import Console

from batchfarm.actors.api.deadline import deadline_status
from batchfarm.actors.backends.store import JobView, NewScalingEvent, NodeBeat, WorkerBeat
from batchfarm.actors.cli import jobview, show
from tests.api.apigrid import API, metric, noop_spec

#: Dollars per hour of the inline worker's node, and its workers.
PRICE = 7.2
WORKERS = 2


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def price_node(grid, node: str = "node-x") -> None:
    crew = [WorkerBeat(i, pid=100 + i, state="idle") for i in range(WORKERS)]
    grid.store.record_heartbeats(
        [NodeBeat(node, time.time(), "up", workers=crew, price_per_hour=PRICE)]
    )


def rendered(renderable) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_a_finished_job_costs_its_runs_seconds_at_its_nodes_price_per_worker(grid) -> None:
    price_node(grid)
    deadline = time.time() + 3600
    created = grid.client.post(f"{API}/jobs", json={"spec": noop_spec(3, deadline=iso(deadline))})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    grid.run_tasks()

    job = grid.client.get(f"{API}/jobs/{job_id}").json()
    tasks = grid.client.get(f"{API}/jobs/{job_id}/tasks").json()["tasks"]
    seconds = [t["finished_at"] - t["started_at"] for t in tasks]
    assert all(s > 0 for s in seconds)
    expected = sum(seconds) * PRICE / WORKERS / 3600
    assert job["state"] == "succeeded"
    assert abs(job["cost_dollars"] - expected) < 1e-12
    assert abs(job["stages"][0]["cost_dollars"] - expected) < 1e-12
    for task, took in zip(tasks, seconds, strict=True):
        assert abs(task["cost_dollars"] - took * PRICE / WORKERS / 3600) < 1e-12
    one = grid.client.get(f"{API}/jobs/{job_id}/tasks/noop/0").json()
    assert one["cost_dollars"] == tasks[0]["cost_dollars"]

    assert abs(job["deadline"] - deadline) < 1e-5
    assert job["deadline_status"]["state"] == "met"
    assert job["deadline_status"]["text"].startswith(
        f"deadline {datetime.fromtimestamp(deadline, UTC):%Y-%m-%dT%H:%M:%SZ}: met (finished "
    )
    text = grid.client.get("/metrics").text
    cost = metric(text, "batchfarm_task_cost_dollars_total", handler="noop", node_class="default")
    assert abs(cost - expected) < 1e-9
    assert metric(text, "batchfarm_node_cost_dollars_total", node_class="default") == 0.0
    assert metric(text, "batchfarm_jobs_deadline_at_risk") == 0.0
    # status JOB shows the total and each stage's cost, and the deadline's verdict.
    shown = rendered(jobview.job_view(job, tasks))
    due = f"{datetime.fromtimestamp(deadline, UTC):%Y-%m-%dT%H:%M:%SZ}"
    assert re.search(rf"^deadline +{due}: met \(finished ", shown, re.MULTILINE), shown
    total = show.dollars(job["cost_dollars"])
    assert re.search(rf"^cost +{re.escape(total)} *$", shown, re.MULTILINE), shown
    assert re.search(rf"│ noop .*│ {re.escape(total)} │$", shown, re.MULTILINE), shown


def test_a_job_the_autoscaler_cannot_size_for_is_at_risk_in_status_and_metrics(grid) -> None:
    deadline = time.time() + 600
    late = grid.client.post(f"{API}/jobs", json={"spec": noop_spec(5, deadline=iso(deadline))})
    calm = grid.client.post(f"{API}/jobs", json={"spec": noop_spec(1)})
    assert late.status_code == calm.status_code == 201
    # Nothing decided yet and nothing running: no ETA, so no verdict either way.
    job = grid.client.get(f"{API}/jobs/{late.json()['id']}").json()
    assert job["deadline_status"]["state"] == "unknown"
    assert grid.client.get(f"{API}/jobs/{calm.json()['id']}").json()["deadline_status"] is None

    grid.store.record_scaling_event(
        NewScalingEvent(
            time=time.time(),
            node_class="default",
            provider="local",
            desired_before=4,
            desired_after=4,
            backlog=6,
            rate=0.1,
            nodes=4,
            reason="hold: the fleet matches the backlog",
            details={"needed": 7, "deadlines_met": False, "fleet": {"max": 4}},
        )
    )
    job = grid.client.get(f"{API}/jobs/{late.json()['id']}").json()
    assert job["deadline_status"]["state"] == "at_risk"
    assert job["deadline_status"]["text"].endswith(
        ": at risk (needs 7 nodes, class default max is 4)"
    )
    listed = grid.client.get(f"{API}/jobs").json()["jobs"]
    shown = rendered(jobview.jobs_table(listed))
    assert "deadline" in shown.splitlines()[0]
    assert "at risk" in shown
    assert metric(grid.client.get("/metrics").text, "batchfarm_jobs_deadline_at_risk") == 1.0


def test_a_deadline_in_the_past_or_without_a_zone_is_refused_naming_the_field(grid) -> None:
    past = grid.client.post(f"{API}/jobs", json={"spec": noop_spec(1, deadline=iso(1.0e9))})
    assert past.status_code == 400
    assert past.json()["field"] == "deadline"
    assert "expected a time in the future" in past.json()["error"]
    naive = grid.client.post(
        f"{API}/jobs", json={"spec": noop_spec(1, deadline="2099-01-01T00:00:00")}
    )
    assert naive.status_code == 400
    assert "expected a date and time with its zone" in naive.json()["error"]


def test_the_verdict_follows_the_eta_and_the_clock() -> None:
    now = 2_000_000_000.0  # 2033-05-18T03:33:20Z
    due = now + 3600

    def verdict(state: str = "running", eta_s: float | None = None, **fields: float) -> str:
        job = JobView("j", "", state, None, 0, {}, now - 60, None, due, now - 60, None, now)
        status = deadline_status(replace(job, **fields), eta_s, ["default"], {}, now)
        assert status is not None
        return status["text"].removeprefix("deadline 2033-05-18T04:33:20Z: ")

    assert verdict(eta_s=600) == "on track (ETA 2033-05-18T03:43:20Z)"
    assert verdict(eta_s=5100) == "at risk (ETA 2033-05-18T04:58:20Z is 25 min late)"
    assert verdict() == "unknown (no ETA yet)"
    assert verdict(finished_at=due + 120, state="succeeded") == (
        "missed (finished 2033-05-18T04:35:20Z, 2 min late)"
    )
    assert verdict(finished_at=now, state="failed") == "missed (the job failed)"
    ok = JobView("j", "", "running", None, 0, {}, now, None, None, now, None, now)
    assert deadline_status(ok, 10.0, ["default"], {}, now) is None
