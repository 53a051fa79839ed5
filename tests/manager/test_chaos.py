"""Chaos: worker processes SIGKILLed at random while a job of a few hundred short tasks runs."""

from __future__ import annotations

import random
import time

import psutil
import pytest

from batchfarm.actors.backends import open_blobs, open_store
from batchfarm.actors.manager.spec import parse_spec
from tests.manager.managerproc import ManagerGrid
from tests.manager.test_manager_process import job_state, submit
from tests.worker.grid import wait_for

PARTS = 200


@pytest.mark.timeout(240)
def test_random_worker_kills_lose_nothing_and_count_every_task_once(tmp_path):
    grid = ManagerGrid(tmp_path)
    try:
        grid.manager()
        # Crashes are the point here: no give-up, quick restarts, short leases.
        node = grid.node(
            node_workers=2,
            node_restart_limit=1000,
            node_restart_backoff=0.05,
            queue_visibility_timeout=5,
        )
        node.wait_workers(2)
        spec = parse_spec(
            {
                "name": "chaos",
                "stages": [
                    {
                        "name": "work",
                        "handler": "tests.worker.handlers:sleep",
                        "params": {"seconds": 0.05},
                        "parts": PARTS,
                    }
                ],
            },
            source="chaos.toml",
            base_dir=tmp_path,
        )
        job_id = submit(grid.settings, spec)
        chaos = random.Random(20261203)
        kills = 0
        deadline = time.monotonic() + 180
        while job_state(grid.settings, job_id) != "succeeded" and time.monotonic() < deadline:
            workers = node.workers()
            if workers and kills < 15:
                victim = chaos.choice(workers)
                try:
                    victim.kill()
                    kills += 1
                except psutil.NoSuchProcess:
                    pass
            time.sleep(chaos.uniform(0.1, 0.4))
        wait_for(
            lambda: job_state(grid.settings, job_id) == "succeeded",
            timeout=60,
            what=f"the job done after {kills} kills",
        )
        assert kills >= 5
        with open_store(grid.settings.store) as store:
            tasks = store.tasks(job_id, limit=PARTS + 10)
            reruns = sum(t.attempts - 1 + t.duplicate_runs for t in tasks)
            assert [t.part for t in tasks if t.state == "succeeded"] == list(range(PARTS))
            assert len(tasks) == PARTS
        # Exactly one output per task, and nothing else under the job's stage.
        blobs = open_blobs(grid.settings.storage)
        keys = sorted(item.key for item in blobs.iter_list(f"jobs/{job_id}/work/"))
        blobs.close()
        assert keys == sorted(f"jobs/{job_id}/work/{n}/slept.txt" for n in range(PARTS))
        # At-least-once delivery showed its cost: killed workers' tasks ran again.
        assert reruns > 0
        assert node.proc.poll() is None, node.output()
    finally:
        grid.close()
