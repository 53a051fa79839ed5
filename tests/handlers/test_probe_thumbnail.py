"""The probe and thumbnail handlers on generated clips."""

from __future__ import annotations

import json

import av
import pytest

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.probe import probe
from batchfarm.actors.handlers.registry import check_params, resolve
from batchfarm.actors.handlers.thumbnail import thumbnail
from batchfarm.actors.settings import MediaSettings
from tests.media import make_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 2.0, 320, 240, fps=25)


def test_probe_reports_the_facts(make_ctx, clip):
    harness = make_ctx("probe", inputs=[clip])
    facts = probe(harness.ctx)
    json.dumps(facts)  # stored with the task: it must be JSON
    assert facts["container"] == "mov,mp4,m4a,3gp,3g2,mj2"
    assert facts["duration_s"] == pytest.approx(2.0, abs=0.05)
    assert facts["size_bytes"] == clip.stat().st_size
    assert facts["bit_rate"] > 0
    video = facts["video"]
    assert (video["codec"], video["width"], video["height"]) == ("h264", 320, 240)
    assert (video["display_width"], video["display_height"], video["rotation"]) == (320, 240, 0)
    assert video["fps"] == 25.0
    assert video["frames"] == 50
    assert video["pix_fmt"] == "yuv420p"
    audio = facts["audio"]
    assert (audio["codec"], audio["sample_rate"], audio["channels"]) == ("aac", 44100, 1)
    assert (facts["has_video"], facts["has_audio"]) == (True, True)
    assert (facts["within_limits"], facts["limit_problem"]) == (True, None)
    assert harness.progress == [1.0]
    assert harness.ctx.argvs == []  # PyAV, in-process: no ffmpeg run at all
    # The same facts are an output file, for `results` and for the next stage to read.
    written = harness.ctx.output_dir / "probe.json"
    assert json.loads(written.read_text()) == facts


def test_probe_of_audio_only_and_rotated(make_ctx, tmp_path):
    sound = make_clip(tmp_path / "sound.m4a", 1.0, video=False)
    facts = probe(make_ctx("probe", inputs=[sound]).ctx)
    assert (facts["video"], facts["has_video"], facts["audio"]["codec"]) == (None, False, "aac")
    phone = make_clip(tmp_path / "phone.mp4", 1.0, 320, 240, rotation=270, audio=False)
    facts = probe(make_ctx("probe", inputs=[phone]).ctx)
    assert facts["video"]["rotation"] == 270
    assert (facts["video"]["display_width"], facts["video"]["display_height"]) == (240, 320)
    assert facts["audio"] is None


def test_probe_says_when_a_file_is_over_the_limits(make_ctx, clip):
    harness = make_ctx("probe", inputs=[clip], media=MediaSettings(max_duration=1.0))
    facts = probe(harness.ctx)
    assert facts["within_limits"] is False
    assert "above [media] max_duration = 1 s" in facts["limit_problem"]


def test_probe_params_and_inputs(make_ctx, clip):
    harness = make_ctx("probe", params={"name": "facts.json"}, inputs=[clip])
    probe(harness.ctx)
    assert [p.name for p in harness.ctx.output_dir.iterdir()] == ["facts.json"]
    with pytest.raises(TaskError, match="probe: unknown param x: expected only name"):
        probe(make_ctx("probe", params={"x": 1}, inputs=[clip]).ctx)
    with pytest.raises(TaskError, match=r'param name = "a\.txt": expected a plain file name'):
        probe(make_ctx("probe", params={"name": "a.txt"}, inputs=[clip]).ctx)
    with pytest.raises(TaskError, match="probe: the task has 2 inputs, expected exactly 1"):
        probe(make_ctx("probe", inputs=[clip, clip]).ctx)


def test_handlers_are_built_in():
    assert resolve("probe") is probe
    assert resolve("thumbnail") is thumbnail
    with pytest.raises(TaskError, match="thumbnail: param count = 0"):
        check_params("thumbnail", {"count": 0})


def decoded(path):
    """An image's codec, size and RGB rows (bytes, 3 per pixel)."""
    with av.open(str(path)) as image:
        codec = image.streams.video[0].codec_context.name
        frame = next(image.decode(video=0))
        plane = frame.reformat(format="rgb24").planes[0]
        data, stride = bytes(plane), plane.line_size
        rows = [data[y * stride : y * stride + frame.width * 3] for y in range(frame.height)]
        return codec, frame.width, frame.height, rows


@pytest.mark.parametrize(
    ("params", "at"), [({"at": 1.0}, 1.0), ({"at": "50%"}, 1.0), ({}, 0.2), ({"at": 2.0}, 1.96)]
)
def test_a_frame_at_a_time_or_percentage(make_ctx, clip, params, at):
    harness = make_ctx("thumbnail", params={**params, "width": 160}, inputs=[clip])
    meta = thumbnail(harness.ctx)
    out = harness.ctx.output_dir / "thumb.jpg"
    assert meta == {
        "name": "thumb.jpg",
        "width": 160,
        "height": 120,
        "bytes": out.stat().st_size,
        "times_s": [pytest.approx(at, abs=0.001)],
    }
    codec, width, height, _ = decoded(out)
    assert (codec, width, height) == ("mjpeg", 160, 120)


def test_different_times_give_different_frames(make_ctx, clip):
    pictures = []
    for at in (0.0, 1.5):
        harness = make_ctx("thumbnail", params={"at": at, "format": "png"}, inputs=[clip])
        thumbnail(harness.ctx)
        pictures.append(decoded(harness.ctx.output_dir / "thumb.png")[3])
    # testsrc2 moves every frame: a frame from 1.5 s is not the first one.
    assert pictures[0] != pictures[1]


def test_a_sprite_sheet(make_ctx, clip):
    params = {"count": 6, "columns": 3, "width": 80, "format": "png"}
    harness = make_ctx("thumbnail", params=params, inputs=[clip])
    meta = thumbnail(harness.ctx)
    assert meta["name"] == "sprite.png"
    assert (meta["width"], meta["height"]) == (240, 120)  # 3 x 2 tiles of 80x60
    assert meta["times_s"] == pytest.approx([0.0, 0.333, 0.667, 1.0, 1.333, 1.667], abs=0.001)
    codec, width, height, pixels = decoded(harness.ctx.output_dir / "sprite.png")
    assert (codec, width, height) == ("png", 240, 120)
    tiles = [
        b"".join(row[c * 240 : (c + 1) * 240] for row in pixels[r * 60 : (r + 1) * 60])
        for r in (0, 1)
        for c in (0, 1, 2)
    ]
    # Six different frames, none left black.
    assert all(sum(tile) / len(tile) > 10 for tile in tiles)
    assert len(set(tiles)) == 6


def test_a_time_past_the_end_is_refused(make_ctx, clip):
    harness = make_ctx("thumbnail", params={"at": 30}, inputs=[clip])
    with pytest.raises(TaskError) as caught:
        thumbnail(harness.ctx)
    assert str(caught.value) == (
        "thumbnail: param at = 30: past the end of input inputs/clip.mp4 (2.000 s long)"
    )
    assert caught.value.permanent is True


def test_thumbnail_of_audio_only_is_refused(make_ctx, tmp_path):
    sound = make_clip(tmp_path / "sound.mp4", 1.0, video=False)
    with pytest.raises(TaskError, match=r"input inputs/sound\.mp4 has no video stream"):
        thumbnail(make_ctx("thumbnail", inputs=[sound]).ctx)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"at": -1}, "param at = -1: expected a number from 0 to"),
        ({"at": "150%"}, 'param at = "150%": expected seconds'),
        ({"at": "1s"}, 'param at = "1s": expected seconds'),
        ({"count": 401}, "param count = 401: expected an integer from 1 to 400"),
        ({"count": 4, "columns": 5}, "param columns = 5: expected an integer from 1 to 4"),
        ({"width": 8}, "param width = 8: expected an integer from 16 to 3840"),
        ({"format": "gif"}, 'param format = "gif": expected one of jpeg, png'),
        ({"format": "png", "name": "a.jpg"}, 'param name = "a.jpg": expected a plain file name'),
        ({"vf": "x"}, "unknown param vf: expected only at, columns, count, format, name, width"),
    ],
)
def test_bad_thumbnail_params(make_ctx, clip, params, message):
    harness = make_ctx("thumbnail", params=params, inputs=[clip])
    with pytest.raises(TaskError) as caught:
        thumbnail(harness.ctx)
    assert str(caught.value).startswith(f"thumbnail: {message}")
    assert caught.value.permanent is True
    assert harness.ctx.argvs == []
