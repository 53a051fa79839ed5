"""A fault test: the link between the workers and SQS/S3 drops for a few seconds mid-job.

Both nodes reach moto through a TCP relay (``tests/faults/relay.py``); the manager goes
direct. Mid-job the relay resets every connection and refuses new ones for
:data:`CUT_S` seconds, then heals. The workers must back off and say so in their logs,
resume on their own, and the job must finish with nothing lost (every part's output in S3,
the fan-in manifest listing them all) and nothing counted twice (the store has each task
succeeded once; a run repeated because its delete was lost counts as a duplicate run).
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import pytest

from batchfarm.actors.backends import open_store
from tests.aws_grid.awsgrid import AwsGrid
from tests.faults.relay import Relay
from tests.worker.grid import wait_for

PARTS = 12
#: How long the link stays down. botocore's standard retries back off at random (up to
#: 2^n s per attempt, 20 s at most) and stop early once the client's retry quota is spent, so
#: whether a call outlasts them within the cut, and the worker's own backoff shows, depends
#: on how many calls were in flight: the test requires botocore's backoff and no loss, and
#: counts the worker's backoff only as information.
CUT_S = 8.0
#: A failed AWS call, as a node's log shows it (aws.py logs each attempt botocore retries).
BACKOFF = re.compile(r"(SQS|S3) \w+ failed \(attempt \d+ of \d+: .+\); backing off")
#: The worker giving up on a call for now and pausing before the next.
WORKER_BACKOFF = re.compile(r"worker \d+ cannot (receive|settle)|cannot renew \d+ leases")


@pytest.mark.slow
def test_workers_back_off_through_a_cut_link_and_lose_nothing(aws_grid: AwsGrid, tmp_path):
    moto = urlsplit(aws_grid.moto.endpoint)
    with Relay(str(moto.hostname), int(moto.port or 0)) as relay:
        aws_grid.manager()
        nodes = [aws_grid.node(f"cut-node-{n}", relay.endpoint) for n in range(2)]
        aws_grid.wait_ready(nodes=2)
        spec = tmp_path / "job.toml"
        spec.write_text(
            f'name = "cut"\n[[stages]]\nname = "work"\nparts = {PARTS}\n'
            'handler = "tests.worker.handlers:flaky"\nparams = { seconds = 0.4 }\n'
            '[[stages]]\nname = "manifest"\nhandler = "checksum"\nmode = "fan_in"\n'
            'params = { manifest = "SHA256SUMS" }\n'
        )
        job_id = aws_grid.submit(spec)
        wait_for(lambda: done_parts(aws_grid, job_id) >= 2, 60, "two parts done before the cut")
        relay.cut()
        time.sleep(CUT_S)
        during = done_parts(aws_grid, job_id)
        relay.restore()
        assert aws_grid.wait(job_id, timeout=90) == "succeeded", aws_grid.logs()

    assert during < PARTS, "the cut came too late: the job had finished"
    assert relay.counts.reset + relay.counts.refused > 0
    logs = [node.output() for node in nodes]
    assert any(BACKOFF.search(log) for log in logs), aws_grid.logs()
    worker_backoffs = sum(len(WORKER_BACKOFF.findall(log)) for log in logs)
    print(f"worker-level backoffs during the cut: {worker_backoffs}")
    for node in nodes:
        assert node.proc.poll() is None, node.output()

    # Nothing counted twice: each task succeeded once in the store.
    with open_store(aws_grid.settings.store) as store:
        tasks = store.tasks(job_id, limit=None)
        counts = {c.stage.name: c.counts for c in store.stage_counts(job_id)}
    assert sorted((t.stage, t.part, t.state) for t in tasks) == [
        ("manifest", 0, "succeeded"),
        *(("work", n, "succeeded") for n in range(PARTS)),
    ]
    assert counts == {"work": {"succeeded": PARTS}, "manifest": {"succeeded": 1}}
    # Nothing lost: every part's output is in S3, and the manifest names each once.
    outputs = aws_grid.objects(f"jobs/{job_id}/work/")
    assert sorted(outputs) == sorted(f"jobs/{job_id}/work/{n}/part.txt" for n in range(PARTS))
    assert all(
        outputs[f"jobs/{job_id}/work/{n}/part.txt"] == f"{n}\n".encode() for n in range(PARTS)
    )
    manifest = aws_grid.objects(f"jobs/{job_id}/manifest/")[f"jobs/{job_id}/manifest/0/SHA256SUMS"]
    listed = sorted(line.split("  ")[1] for line in manifest.decode().splitlines())
    assert listed == sorted(outputs)


def done_parts(aws_grid: AwsGrid, job_id: str) -> int:
    """Tasks of the first stage the store has as succeeded."""
    with open_store(aws_grid.settings.store) as store:
        return sum(t.state == "succeeded" for t in store.tasks(job_id, stage="work", limit=None))
