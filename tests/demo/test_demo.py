"""``scripts/demo``, the README's first command, run as a user runs it (minus the install)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_the_demo_runs_a_two_stage_job_and_stops_the_grid_cleanly(tmp_path):
    demo = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFARM_")}
    env.update(
        BATCHFARM_VENV=sys.prefix,  # the venv under test; the demo must not reinstall it
        BATCHFARM_DEMO_INSTALL="0",
        BATCHFARM_DEMO_DIR=str(demo),
        BATCHFARM_DEMO_CLIPS="3",
    )
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "grid stopped cleanly" in out
    # Stage 1's outputs: one transcode per clip, in the blob store; stage 2 (the job's result,
    # downloaded): one manifest listing each of them with its checksum.
    [manifest] = list((demo / "results").rglob("SHA256SUMS"))
    blobs = demo / "state" / "blobs" / "objects"
    videos = sorted(blobs.glob("jobs/*/transcode/*/*.mp4"))
    assert len(videos) == 3, out
    listed = dict(line.split() for line in manifest.read_text().splitlines())
    assert listed == {
        hashlib.sha256(v.read_bytes()).hexdigest(): str(v.relative_to(blobs)) for v in videos
    }
    for video in videos:
        assert str(video) in out
    # The statistics table names both stages; the grid's log shows no traceback.
    assert "transcode" in out
    assert "manifest" in out
    assert "Traceback" not in (demo / "grid.log").read_text()
