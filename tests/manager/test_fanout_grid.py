"""Segment-parallel encoding and an HLS ladder through a real manager and node.

A worker SIGKILLed in the middle of a segment's encode costs that segment one more run, and
nothing else: every other task of the job runs once.
"""

from __future__ import annotations

import re
import time

import httpx
import psutil
import pytest

from batchfarm.actors.backends import open_blobs, open_store
from batchfarm.actors.manager.spec import parse_spec
from tests.handlers.segmedia import make_source, tracks
from tests.manager.managerproc import ManagerGrid
from tests.manager.test_manager_process import job_state, submit
from tests.worker.grid import wait_for

FPS = 25
SEGMENTS = 4


@pytest.fixture
def grid(tmp_path):
    processes = ManagerGrid(tmp_path)
    yield processes
    processes.close()


def segment_job(tmp_path):
    make_source(tmp_path / "title.mp4", seconds=2.0 * SEGMENTS, fps=str(FPS))
    stages = [
        {"name": "split", "handler": "split", "params": {"seconds": 2}},
        {
            "name": "encode",
            "handler": "encode_segment",
            "mode": "fan_out",
            # Upscaled and slow: each segment's encode lasts long enough to be caught.
            "params": {"preset": "h264-480p", "speed": "medium"},
        },
        {"name": "join", "handler": "concat", "mode": "fan_in"},
    ]
    tree = {"name": "segments", "inputs": {"files": ["title.mp4"]}, "stages": stages}
    return parse_spec(tree, source="job.toml", base_dir=tmp_path)


def encoding_part(worker: psutil.Process, job_id: str) -> int | None:
    """The encode part ``worker`` runs ffmpeg for right now, or None."""
    try:
        children = worker.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            line = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        found = re.search(rf"{re.escape(job_id)}\.encode\.(\d+)\.", line)
        if found and "libx264" in line:
            return int(found[1])
    return None


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_worker_killed_mid_encode_costs_only_its_own_segment(tmp_path, grid):
    grid.manager()
    node = grid.node(node_workers=2, node_prefetch=0)
    node.wait_workers(2)
    job_id = submit(grid.settings, segment_job(tmp_path))

    killed: int | None = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline:
        for worker in node.workers():
            part = encoding_part(worker, job_id)
            # Not the audio part (0): a video segment, mid-encode.
            if part:
                time.sleep(0.1)  # well into it
                worker.kill()
                killed = part
                break
        time.sleep(0.01)
    assert killed is not None, "no segment encode was seen running"

    wait_for(
        lambda: job_state(grid.settings, job_id) in ("succeeded", "failed"),
        timeout=90,
        what="the job's end",
    )
    with open_store(grid.settings.store) as store:
        job = store.job(job_id)
        assert job.state == "succeeded", job.reason
        tasks = store.tasks(job_id, limit=None)
    runs = {(t.stage, t.part): (t.state, t.attempts, t.duplicate_runs) for t in tasks}
    # The split made the audio part and one per 2 s segment, each fanned out to a task.
    assert sorted(runs) == [("encode", n) for n in range(SEGMENTS + 1)] + [
        ("join", 0),
        ("split", 0),
    ]
    # The killed segment ran again; everything else ran exactly once.
    assert runs.pop(("encode", killed)) == ("succeeded", 2, 0)
    assert set(runs.values()) == {("succeeded", 1, 0)}
    # Both workers encoded segments: the fan-out ran in parallel.
    assert len({t.worker for t in tasks if t.stage == "encode"}) == 2

    # The joined title plays as the input did: every frame, audio in sync, no decode error.
    out = tmp_path / "joined.mp4"
    blobs = open_blobs(grid.settings.storage)
    try:
        blobs.get_file(f"jobs/{job_id}/join/0/out.mp4", out)
    finally:
        blobs.close()
    joined, original = tracks(out), tracks(tmp_path / "title.mp4")
    assert joined["video"].frames == original["video"].frames == SEGMENTS * 2 * FPS
    assert abs(joined["video"].duration - original["video"].duration) <= 1 / FPS
    assert abs(joined["audio"].end - joined["video"].end) <= 2 / FPS
    assert joined["video"].height == 480

    # Status sees the fan-out stage like any other: its size, all done.
    detail = httpx.get(f"{grid.api_url}/api/v1/jobs/{job_id}", timeout=10).json()
    stages = {
        s["name"]: (s["mode"], s["total"], s["done"], s["progress"]) for s in detail["stages"]
    }
    assert stages == {
        "split": ("chain", 1, 1, 1.0),
        "encode": ("fan_out", SEGMENTS + 1, SEGMENTS + 1, 1.0),
        "join": ("fan_in", 1, 1, 1.0),
    }


def test_a_ladder_job_encodes_renditions_in_parallel_and_packages_them(tmp_path, grid):
    grid.manager()
    node = grid.node(node_workers=2)
    make_source(tmp_path / "title.mp4", seconds=4.0, keyframe_s=4.0)
    renditions = [{"height": 180, "video_bitrate": "300k"}, {"height": 120, "name": "low"}]
    stages = [
        {
            "name": "renditions",
            "handler": "ladder",
            "params": {"segment_seconds": 2, "speed": "ultrafast"},
            "range": {"param": "rendition", "values": renditions},
        },
        {"name": "hls", "handler": "hls", "mode": "fan_in", "params": {"segment_seconds": 2}},
    ]
    tree = {"name": "ladder", "inputs": {"files": ["title.mp4"]}, "stages": stages}
    node.wait_workers(2)
    job_id = submit(grid.settings, parse_spec(tree, source="job.toml", base_dir=tmp_path))
    wait_for(
        lambda: job_state(grid.settings, job_id) in ("succeeded", "failed"),
        timeout=60,
        what="the job's end",
    )
    with open_store(grid.settings.store) as store:
        job = store.job(job_id)
        assert job.state == "succeeded", job.reason
        tasks = {(t.stage, t.part): t for t in store.tasks(job_id, limit=None)}
    assert sorted(tasks) == [("hls", 0), ("renditions", 0), ("renditions", 1)]
    # One rendition per task: each a file of its own, fed to the packaging fan-in in order.
    assert tasks["hls", 0].inputs == [
        f"jobs/{job_id}/renditions/0/180p.mp4",
        f"jobs/{job_id}/renditions/1/low.mp4",
    ]
    blobs = open_blobs(grid.settings.storage)
    try:
        prefix = f"jobs/{job_id}/hls/0/"
        keys = sorted(item.key[len(prefix) :] for item in blobs.iter_list(prefix))
        master = blobs.read(prefix + "master.m3u8").decode()
        out = tmp_path / "seg.ts"
        for key in keys:
            if key.endswith(".ts"):
                blobs.get_file(prefix + key, out)
                assert tracks(out)["video"].frames > 0  # each segment decodes
    finally:
        blobs.close()
    assert "180p/index.m3u8" in master
    assert "low/index.m3u8" in master
    assert master.count("#EXT-X-STREAM-INF:") == 2
    for name in ("180p", "low"):
        assert f"{name}/index.m3u8" in keys
        assert [k for k in keys if k.startswith(f"{name}/seg-")] == [
            f"{name}/seg-00000.ts",
            f"{name}/seg-00001.ts",
        ]
