"""The transcode handler against the real ffmpeg, on generated clips."""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest

from batchfarm.actors.errors import TaskCancelled, TaskError
from batchfarm.actors.handlers.transcode import transcode
from tests.media import describe, make_clip, probe_file


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=2.0)


def contains(argv, *run):
    return any(argv[i : i + len(run)] == list(run) for i in range(len(argv)))


def test_transcodes_to_a_lower_height(make_ctx, clip):
    harness = make_ctx("transcode", params={"height": 120}, inputs=[clip])
    meta = transcode(harness.ctx)
    out = harness.ctx.output_dir / "out.mp4"
    assert meta == {
        "height": 120,
        "width": 160,
        "duration_s": pytest.approx(2.0, abs=0.1),
        "bytes": out.stat().st_size,
        "video_codec": "h264",
        "audio_codec": "aac",
    }
    dump = describe(out)
    assert "Video: h264" in dump
    assert ", 160x120" in dump
    assert "Audio: aac" in dump
    assert [p.name for p in harness.ctx.output_dir.iterdir()] == ["out.mp4"]
    # Progress rises to the end.
    assert harness.progress[-1] == 1.0
    assert harness.progress == sorted(harness.progress)
    assert all(0.0 <= p <= 1.0 for p in harness.progress)


def test_ffmpeg_runs_hardened_and_limited_to_its_threads(make_ctx, clip):
    harness = make_ctx("transcode", params={"height": 120}, inputs=[clip], threads=2)
    transcode(harness.ctx)
    # The input is probed and the output verified in-process (PyAV): ffmpeg runs once.
    assert len(harness.ctx.argvs) == 1
    argv = harness.ctx.argvs[0]
    assert contains(argv, "-nostdin", "-hide_banner", "-y", "-threads", "2")
    assert contains(argv, "-filter_threads", "2")
    assert contains(argv, "-protocol_whitelist", "file,pipe")
    assert contains(argv, "-progress", "pipe:1", "-nostats")
    assert contains(argv, "-movflags", "+faststart")
    assert contains(argv, "-c:v", "libx264", "-preset", "veryfast", "-crf", "23")
    assert contains(argv, "-vf", "scale=-2:120")
    # The input's format is pinned to what the probe found, big frames are refused by the
    # decoder too, and no output runs past [media] max_duration.
    assert contains(argv, "-format_whitelist")
    assert contains(argv, "-max_pixels", "33177600", "-f", "mov", "-i", str(clip))
    assert contains(argv, "-t", "21600.000000")
    # The input path only ever follows -i.
    assert argv[argv.index(str(clip)) - 1] == "-i"


def test_params_shape_the_output(make_ctx, tmp_path):
    source = make_clip(tmp_path / "wide.mkv", seconds=1.0, width=640, height=360, audio=False)
    params = {
        "height": 180,
        "crf": 35,
        "preset": "ultrafast",
        "name": "small.mp4",
        "audio_bitrate": "64k",
    }
    harness = make_ctx("transcode", params=params, inputs=[source])
    meta = transcode(harness.ctx)
    assert (meta["width"], meta["height"]) == (320, 180)
    assert [p.name for p in harness.ctx.output_dir.iterdir()] == ["small.mp4"]
    probe = probe_file(harness.ctx.output_dir / "small.mp4")
    assert (probe.video.codec, probe.video.height, probe.audio) == ("h264", 180, None)
    assert contains(harness.ctx.argvs[0], "-crf", "35")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"height": 121}, "param height = 121: expected an even integer from 16 to 4320"),
        ({"height": 8}, "param height = 8: expected an integer from 16 to 4320"),
        ({"height": 4322}, "param height = 4322: expected an integer"),
        ({"height": "720"}, 'param height = "720": expected an integer'),
        ({"height": True}, "param height = true: expected an integer"),
        ({"crf": 52}, "param crf = 52: expected an integer from 0 to 51"),
        ({"crf": 2.5}, "param crf = 2.5: expected an integer"),
        ({"preset": "placebo"}, 'param preset = "placebo": expected one of the presets aac,'),
        ({"preset": "fast -vf x"}, 'param preset = "fast -vf x": expected one of'),
        ({"audio_bitrate": "128"}, 'param audio_bitrate = "128": expected a bitrate'),
        ({"audio_bitrate": "1000k"}, 'param audio_bitrate = "1000k": expected a bitrate'),
        ({"audio_bitrate": "8k"}, 'param audio_bitrate = "8k": expected a bitrate'),
        ({"name": "../out.mp4"}, 'param name = "../out.mp4": expected a plain file name'),
        ({"name": "-y.mp4"}, 'param name = "-y.mp4": expected a plain file name'),
        ({"name": "out.mkv"}, 'param name = "out.mkv": expected a plain file name'),
        ({"name": ".mp4"}, 'param name = ".mp4": expected a plain file name'),
        ({"vf": "scale=1:1"}, "unknown param vf: expected only audio_bitrate, crf, height,"),
        ({"preset": "h265-720p"}, 'param preset = "h265-720p": expected one of the presets aac,'),
        ({"preset": "../x"}, 'param preset = "../x": expected one of the presets'),
        ({"speed": "placebo"}, 'param speed = "placebo": expected one of ultrafast,'),
        ({"preset": "av1-480p", "speed": "fast"}, 'param speed = "fast": expected one of 0, 1,'),
        ({"preset": "av1-480p", "crf": 64}, "param crf = 64: expected an integer from 0 to 63"),
        ({"video_bitrate": "3M"}, 'param video_bitrate = "3M": expected a bit rate'),
        ({"preset": "aac", "name": "x.mp3"}, 'param name = "x.mp3": expected a plain file name'),
        ({"options": "-g 48"}, 'param options = "-g 48": expected a list of ffmpeg output'),
        ({"options": ["-g"]}, 'param options = ["-g"]: expected an even-length list'),
        ({"options": ["-i", "x"]}, 'param options: flag = "-i": expected a flag from -ac,'),
        ({"options": ["-vf", "movie=/etc/passwd"]}, 'param options: flag = "-vf": expected'),
        ({"options": ["-g", "0"]}, 'param options: -g = "0": expected an integer from 1 to'),
        ({"options": ["-g", "4", "-g", "8"]}, 'param options: flag = "-g": expected each flag'),
        (
            {"options": ["-force_key_frames", "expr:eval(system('x'))"]},
            "param options: -force_key_frames = \"expr:eval(system('x'))\": expected a keyframe",
        ),
    ],
)
def test_bad_params_are_permanent_and_named(make_ctx, clip, params, message):
    harness = make_ctx("transcode", params=params, inputs=[clip])
    with pytest.raises(TaskError) as caught:
        transcode(harness.ctx)
    assert str(caught.value) == f"transcode: {message}" or message in str(caught.value)
    assert str(caught.value).startswith("transcode: ")
    assert caught.value.permanent is True
    assert harness.ctx.argvs == []  # refused before ffmpeg ever ran


@pytest.mark.parametrize("count", [0, 2])
def test_exactly_one_input(make_ctx, clip, count):
    with pytest.raises(TaskError, match=f"has {count} inputs, expected exactly 1") as caught:
        transcode(make_ctx("transcode", inputs=[clip] * count).ctx)
    assert caught.value.permanent is True


def test_corrupt_input_is_permanent_and_named(make_ctx, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(20_000))
    harness = make_ctx("transcode", params={"height": 120}, inputs=[bad])
    with pytest.raises(TaskError) as caught:
        transcode(harness.ctx)
    assert caught.value.permanent is True
    # Refused by the probe, naming the input and why, before ffmpeg ever runs.
    assert str(caught.value).startswith(
        "input inputs/bad.mp4: not a media file batchfarm reads"
        " (Invalid data found when processing input); expected audio or video in one of: mov,"
    )
    assert harness.ctx.argvs == []
    assert list(harness.ctx.output_dir.iterdir()) == []


def test_input_without_video_is_permanent(make_ctx, tmp_path):
    sound = make_clip(tmp_path / "tone.mp4", seconds=1.0, video=False)
    assert probe_file(sound).audio.codec == "aac"
    with pytest.raises(TaskError, match=r"input inputs/tone\.mp4 has no video stream") as caught:
        transcode(make_ctx("transcode", inputs=[sound]).ctx)
    assert caught.value.permanent is True


def ffmpeg_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


def test_cancel_mid_transcode_stops_ffmpeg_quickly(make_ctx, tmp_path):
    # Upscaling with a slow preset on one thread: many seconds of work if left alone.
    source = make_clip(tmp_path / "long.mp4", seconds=3.0, width=640, height=360)
    params = {"height": 1080, "preset": "slower"}
    harness = make_ctx("transcode", params=params, inputs=[source])
    seen_ffmpeg: list[int] = []
    cancelled_at: list[float] = []

    def cancel_soon() -> None:
        # Once ffmpeg has reported some progress (from its -progress out_time_us lines).
        deadline = time.monotonic() + 10
        while not any(0 < p < 1 for p in harness.progress) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen_ffmpeg.extend(p.pid for p in ffmpeg_children())
        cancelled_at.append(time.monotonic())
        harness.cancel.set()

    threading.Thread(target=cancel_soon, daemon=True).start()
    with pytest.raises(TaskCancelled):
        transcode(harness.ctx)
    assert time.monotonic() - cancelled_at[0] < 0.5
    assert seen_ffmpeg, "ffmpeg was not running when the task was cancelled"
    assert ffmpeg_children() == []
    assert not any(psutil.pid_exists(pid) for pid in seen_ffmpeg)
    assert list(harness.ctx.output_dir.iterdir()) == []
