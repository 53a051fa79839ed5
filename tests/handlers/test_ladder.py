"""The ``ladder`` (one rendition, keyframes aligned) and ``hls`` (packaging) handlers."""

from __future__ import annotations

import re
import shutil

import pytest

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.hls import hls
from batchfarm.actors.handlers.ladder import ladder
from batchfarm.actors.handlers.registry import check_params
from tests.handlers.segmedia import make_source, tracks

RENDITIONS = [
    {"height": 180, "video_bitrate": "400k"},
    {"height": 120, "video_bitrate": "200k", "name": "low"},
    "h264-480p",  # a preset by name: 480p would upscale, so it is overridden below
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    # Keyframes only every 5 s in the source: the ladder must force its own every 2 s.
    folder = tmp_path_factory.mktemp("src")
    return make_source(folder / "title.mp4", seconds=6.0, keyframe_s=5.0)


def stream_infs(master: str) -> list[tuple[dict[str, str], str]]:
    """Each ``#EXT-X-STREAM-INF`` line's attributes and the URI after it."""
    lines = master.splitlines()
    out = []
    for n, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            text = line.split(":", 1)[1]
            attrs = dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', text))
            out.append(({k: v.strip('"') for k, v in attrs.items()}, lines[n + 1]))
    return out


def test_a_ladder_packaged_as_hls_lists_every_rendition_and_its_segments_decode(make_ctx, source):
    renditions = []
    for rendition in RENDITIONS:
        params = {"rendition": rendition, "segment_seconds": 2, "speed": "ultrafast"}
        if rendition == "h264-480p":
            params["rendition"] = {"preset": "h264-480p", "height": 96}
        harness = make_ctx("ladder", params=params, inputs=[source], keys=["in/title.mp4"])
        meta = ladder(harness.ctx)
        (out,) = harness.ctx.output_dir.iterdir()
        assert out.name == f"{meta['name']}.mp4"
        renditions.append(out)
    assert [p.name for p in renditions] == ["180p.mp4", "low.mp4", "96p.mp4"]

    keys = [f"jobs/j/ladder/{n}/{p.name}" for n, p in enumerate(renditions)]
    harness = make_ctx("hls", params={"segment_seconds": 2}, inputs=renditions, keys=keys)
    meta = hls(harness.ctx)
    out = harness.ctx.output_dir
    master = (out / "master.m3u8").read_text()
    assert master.startswith("#EXTM3U\n")
    variants = stream_infs(master)
    assert [uri for _, uri in variants] == ["180p/index.m3u8", "low/index.m3u8", "96p/index.m3u8"]
    sizes = {"180p": "240x180", "low": "160x120", "96p": "128x96"}
    timelines = []
    for attrs, uri in variants:
        assert attrs["RESOLUTION"] == sizes[uri.split("/")[0]]
        assert int(attrs["BANDWIDTH"]) >= int(attrs["AVERAGE-BANDWIDTH"]) > 0
        # The real profile and level of the H.264 stream, and AAC-LC.
        assert re.fullmatch(r"avc1\.[0-9a-f]{6},mp4a\.40\.2", attrs["CODECS"])
        playlist = (out / uri).read_text()
        assert "#EXT-X-ENDLIST" in playlist
        segments = [line for line in playlist.splitlines() if line and not line.startswith("#")]
        durations = [float(d) for d in re.findall(r"#EXTINF:([0-9.]+),", playlist)]
        timelines.append(durations)
        assert sum(durations) == pytest.approx(6.0, abs=0.1)
        for name in segments:
            segment = out / uri.split("/")[0] / name
            assert segment.is_file(), segment
            found = tracks(segment)  # raises on a decode error
            assert set(found) == {"video", "audio"}
            assert found["video"].frames > 0
    # Keyframes aligned: every rendition is cut at the same instants (every 2 s).
    assert timelines[0] == timelines[1] == timelines[2]
    assert timelines[0] == pytest.approx([2.0, 2.0, 2.0], abs=0.05)
    assert [r["name"] for r in meta["renditions"]] == ["180p", "low", "96p"]


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({}, r"param rendition = null: expected a preset name or a table"),
        ({"rendition": {"height": 121}}, r"param rendition\.height = 121: expected an even"),
        ({"rendition": {"heigth": 120}}, r"unknown param rendition\.heigth: expected only"),
        ({"rendition": "aac"}, r"expected a rendition with video"),
        ({"rendition": 720}, r"param rendition = 720"),
        ({"rendition": {"height": 120, "name": "../x"}}, r"rendition\.name"),
        ({"rendition": "h264-720p", "segment_seconds": 0}, r"segment_seconds = 0"),
    ],
)
def test_ladder_params_are_checked_at_submit_time(params, problem):
    with pytest.raises(TaskError, match=problem) as caught:
        check_params("ladder", params)
    assert caught.value.permanent


def test_hls_refuses_two_renditions_of_one_name(make_ctx, tmp_path):
    clip = make_source(tmp_path / "a.mp4", seconds=1.0)
    other = tmp_path / "b"
    other.mkdir()
    shutil.copyfile(clip, other / "a.mp4")
    harness = make_ctx("hls", inputs=[clip, other / "a.mp4"], keys=["l/0/a.mp4", "l/1/a.mp4"])
    with pytest.raises(TaskError, match=r"l/1/a\.mp4 and l/0/a\.mp4 are both rendition 'a'"):
        hls(harness.ctx)
    assert list(harness.ctx.output_dir.iterdir()) == []
