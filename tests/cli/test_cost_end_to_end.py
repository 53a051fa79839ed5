"""End to end: a real manager and node (`batchfarm up`) price a job's runs; `status` shows it."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

from batchfarm.actors.cli import show
from tests.cli.grid import UpProcess, api, cli, grid_env

#: ``[autoscale] price_per_hour`` of the grid: $3.60 a node-hour is $0.001 a node-second.
PRICE = 3.6
WORKERS = 2


def test_a_finished_jobs_cost_is_its_run_seconds_at_the_node_price_per_worker(tmp_path) -> None:
    env = {**grid_env(tmp_path / "state"), "BATCHFARM_AUTOSCALE_PRICE_PER_HOUR": str(PRICE)}
    up = UpProcess(tmp_path, env, "--workers", str(WORKERS))
    try:
        up.wait_ready()
        deadline = datetime.fromtimestamp(time.time() + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        args = ("--handler", "noop", "--param", "sleep_s=0.4", "--parts", "4")
        submitted = cli(env, "submit", *args, "--deadline", deadline, "--wait", timeout=120)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()

        with api(env) as client:
            tasks = client.tasks(job_id)
            (node,) = client.nodes()
        assert node["price_per_hour"] == PRICE
        seconds = sum(t["finished_at"] - t["started_at"] for t in tasks)
        assert len(tasks) == 4
        assert seconds >= 4 * 0.4
        expected = seconds * PRICE / 3600 / WORKERS

        shown = cli(env, "status", job_id, "--json")
        assert shown.returncode == 0, shown.stderr
        job = json.loads(shown.stdout)
        assert abs(job["cost_dollars"] - expected) < 1e-9
        assert abs(job["stages"][0]["cost_dollars"] - expected) < 1e-9
        assert abs(sum(t["cost_dollars"] for t in tasks) - expected) < 1e-9
        assert job["deadline_status"]["state"] == "met"

        text = cli(env, "status", job_id).stdout
        assert re.search(rf"^deadline +{deadline}: met \(finished ", text, re.MULTILINE)
        total = re.escape(show.dollars(job["cost_dollars"]))
        assert re.search(rf"^cost +{total} *$", text, re.MULTILINE), text
        listed = cli(env, "status").stdout
        assert re.search(rf"^{re.escape(job_id)} .* met ", listed, re.MULTILINE), listed
    finally:
        up.close()
