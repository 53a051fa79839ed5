"""End to end on AWS-compatible servers: a manager and two nodes on SQS and S3 (moto) and
PostgreSQL transcode a two-stage job whose inputs a user put in S3 beforehand.

The clips go up with the AWS CLI (``aws s3 cp --recursive``), the job names them by
``s3://`` URL and is submitted with ``batchfarm submit``; the test then looks where a user
would: the bucket (boto3), the store, and ``batchfarm results``.
"""

from __future__ import annotations

import hashlib

import av
import pytest

from batchfarm.actors.backends import open_store
from tests.aws_grid.awsgrid import PREFIX, AwsGrid, aws_cli
from tests.cli.grid import cli
from tests.media import make_clip

CLIPS = 3


@pytest.mark.slow
def test_a_two_stage_job_on_sqs_s3_and_postgresql(aws_grid: AwsGrid, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for n in range(CLIPS):
        make_clip(clips / f"clip{n}.mp4", seconds=1.0, width=160, height=120)
    uploads = f"s3://{aws_grid.bucket}/{PREFIX}/uploads/"
    aws_cli(aws_grid.moto, "s3", "cp", "--recursive", str(clips), uploads)
    listed = aws_cli(aws_grid.moto, "s3", "ls", uploads)
    assert all(f"clip{n}.mp4" in listed for n in range(CLIPS)), listed

    aws_grid.manager()
    nodes = [aws_grid.node(f"aws-node-{n}") for n in range(2)]
    aws_grid.wait_ready(nodes=2)
    keys = ", ".join(f'"{uploads}clip{n}.mp4"' for n in range(CLIPS))
    spec = tmp_path / "job.toml"
    spec.write_text(
        f'name = "aws-e2e"\n[inputs]\nkeys = [{keys}]\n'
        '[[stages]]\nname = "transcode"\nhandler = "transcode"\n'
        'params = { height = 96, preset = "ultrafast" }\n'
        '[[stages]]\nname = "manifest"\nhandler = "checksum"\nmode = "fan_in"\n'
        'params = { manifest = "SHA256SUMS" }\n'
    )
    job_id = aws_grid.submit(spec)
    assert aws_grid.wait(job_id, timeout=90) == "succeeded", aws_grid.logs()

    # The bucket: the user's clips untouched (named, not copied), one MP4 per clip, one
    # manifest listing exactly those MP4s with their true digests.
    inputs = aws_grid.objects("uploads/")
    assert sorted(inputs) == [f"uploads/clip{n}.mp4" for n in range(CLIPS)]
    assert aws_grid.objects(f"jobs/{job_id}/input/") == {}
    outputs = aws_grid.objects(f"jobs/{job_id}/transcode/")
    assert sorted(outputs) == [f"jobs/{job_id}/transcode/{n}/out.mp4" for n in range(CLIPS)]
    manifests = aws_grid.objects(f"jobs/{job_id}/manifest/")
    assert list(manifests) == [f"jobs/{job_id}/manifest/0/SHA256SUMS"]
    lines = manifests[f"jobs/{job_id}/manifest/0/SHA256SUMS"].decode().splitlines()
    assert sorted(lines) == sorted(
        f"{hashlib.sha256(data).hexdigest()}  {key}" for key, data in outputs.items()
    )

    # The store (PostgreSQL): every task succeeded, ran once, on the grid's nodes.
    with open_store(aws_grid.settings.store) as store:
        tasks = store.tasks(job_id, limit=None)
    assert sorted((t.stage, t.part, t.state) for t in tasks) == [
        ("manifest", 0, "succeeded"),
        *(("transcode", n, "succeeded") for n in range(CLIPS)),
    ]
    assert all(t.attempts == 1 and t.duplicate_runs == 0 for t in tasks)
    assert {t.node_id for t in tasks} <= {"aws-node-0", "aws-node-1"}
    transcoded = sorted((t.part, t.inputs) for t in tasks if t.stage == "transcode")
    assert transcoded == [(n, [f"uploads/clip{n}.mp4"]) for n in range(CLIPS)]

    # The results, through the CLI: the last stage's manifest, as stored.
    done = cli(aws_grid.env, "results", job_id, "--to", str(tmp_path / "results"))
    assert done.returncode == 0, done.stderr
    got = tmp_path / "results" / "manifest" / "0" / "SHA256SUMS"
    assert got.read_bytes() == manifests[f"jobs/{job_id}/manifest/0/SHA256SUMS"]
    # ... and a transcoded clip is a real 96-line video.
    sample = tmp_path / "clip0.mp4"
    sample.write_bytes(outputs[f"jobs/{job_id}/transcode/0/out.mp4"])
    with av.open(str(sample)) as container:
        assert container.streams.video[0].height == 96
        assert container.streams.audio
    for node in nodes:
        assert node.proc.poll() is None, node.output()
