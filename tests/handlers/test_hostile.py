"""Bad, odd and crafted inputs: each gets a correct output or a clear per-task error naming
the input and the reason, and nothing escapes the task (no network, no other file, no
runaway ffmpeg). Every input is generated here with ffmpeg.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from typing import ClassVar

import pytest

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.ffmpeg import SAFE_INPUT
from batchfarm.actors.handlers.probe import probe
from batchfarm.actors.handlers.transcode import transcode
from batchfarm.actors.settings import MediaSettings
from tests.media import ffmpeg_exe, make_clip, make_vfr_clip, probe_file


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return {
        "good": make_clip(folder / "good.mp4", seconds=2.0),
        "sound": make_clip(folder / "sound.mp4", seconds=1.0, video=False),
        "silent": make_clip(folder / "silent.mp4", seconds=1.0, audio=False),
    }


def run_transcode(make_ctx, source, params=None, media=None):
    harness = make_ctx("transcode", params=params or {"height": 120}, inputs=[source], media=media)
    return harness, transcode(harness.ctx)


def refused(make_ctx, source, params=None, media=None) -> TaskError:
    harness = make_ctx("transcode", params=params or {"height": 120}, inputs=[source], media=media)
    with pytest.raises(TaskError) as caught:
        transcode(harness.ctx)
    assert caught.value.permanent is True
    assert list(harness.ctx.output_dir.iterdir()) == []  # nothing half-made is uploaded
    return caught.value


def test_empty_file(make_ctx, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    error = refused(make_ctx, empty)
    assert str(error) == "input inputs/empty.mp4: the file is empty, expected a media file"


@pytest.mark.parametrize(
    "content", [b"hello, not a video\n" * 100, os.urandom(50_000)], ids=["text", "random"]
)
def test_not_media(make_ctx, tmp_path, content):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(content)
    error = refused(make_ctx, junk)
    assert str(error).startswith("input inputs/junk.mp4: not a media file batchfarm reads")


def test_truncated_without_its_index(make_ctx, tmp_path, clips):
    # An MP4 written without faststart keeps its index (moov) at the end: cut, it has none.
    data = clips["good"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    error = refused(make_ctx, cut)
    assert str(error).startswith("input inputs/cut.mp4: not a media file batchfarm reads")


def test_truncated_after_its_index_fails_verification(make_ctx, tmp_path, clips):
    # With the index first, the file opens and ffmpeg encodes what is there (exit 0): the
    # output is short, and verification says so.
    whole = tmp_path / "whole.mp4"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            clips["good"],
            *("-c", "copy"),
            *("-movflags", "+faststart"),
            whole,
        ],
        check=True,
    )
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    error = refused(make_ctx, cut)
    assert str(error).startswith("input inputs/cut.mp4: out.mp4: output failed verification:")
    assert "expected 2.000 s" in str(error) or "decode error" in str(error)


def test_audio_only_input(make_ctx, clips):
    error = refused(make_ctx, clips["sound"])
    assert str(error).startswith("transcode: input inputs/sound.mp4 has no video stream;")
    harness, meta = run_transcode(make_ctx, clips["sound"], {"preset": "aac"})
    assert meta["video_codec"] is None
    assert meta["audio_codec"] == "aac"
    assert meta["duration_s"] == pytest.approx(1.0, abs=0.1)
    assert [p.name for p in harness.ctx.output_dir.iterdir()] == ["out.m4a"]


def test_video_only_input(make_ctx, clips):
    _, meta = run_transcode(make_ctx, clips["silent"])
    assert (meta["video_codec"], meta["audio_codec"], meta["height"]) == ("h264", None, 120)
    error = refused(make_ctx, clips["silent"], {"preset": "aac"})
    assert "input inputs/silent.mp4 has no audio stream" in str(error)


def test_odd_width_and_height(make_ctx, tmp_path):
    odd = make_clip(tmp_path / "odd.mp4", seconds=1.0, width=321, height=241, pix_fmt="yuv444p")
    assert (probe_file(odd).video.width, probe_file(odd).video.height) == (321, 241)
    _, meta = run_transcode(make_ctx, odd, {"height": 120})
    assert (meta["width"], meta["height"]) == (160, 120)
    # A preset that keeps the input's height makes both sides even.
    keep = MediaSettings(presets={"same": {"height": 0}})
    _, meta = run_transcode(make_ctx, odd, {"preset": "same"}, media=keep)
    assert (meta["width"], meta["height"]) == (320, 240)


def test_variable_frame_rate(make_ctx, tmp_path):
    vfr = make_vfr_clip(tmp_path / "vfr.mp4", seconds=2.0)
    source = probe_file(vfr)
    harness, meta = run_transcode(make_ctx, vfr)
    assert meta["duration_s"] == pytest.approx(source.duration_s, abs=0.1)
    out = probe_file(harness.ctx.output_dir / "out.mp4")
    # Frames keep their uneven timing: as few frames as the input has, not a padded 25 fps.
    assert out.video.frames == source.video.frames


def test_rotated_phone_video(make_ctx, tmp_path):
    # Filmed upright: stored 320x240, shown 240x320 (rotated 90 degrees).
    phone = make_clip(tmp_path / "phone.mp4", seconds=1.0, rotation=90)
    assert probe_file(phone).video.display_size == (240, 320)
    harness, meta = run_transcode(make_ctx, phone, {"height": 160})
    # The output is upright as shown: portrait, aspect ratio kept.
    assert (meta["width"], meta["height"]) == (120, 160)
    assert probe_file(harness.ctx.output_dir / "out.mp4").video.rotation == 0


def test_resolution_above_the_limit(make_ctx, clips):
    media = MediaSettings(max_pixels=320 * 240 - 1)
    error = refused(make_ctx, clips["good"], media=media)
    assert str(error) == (
        "input inputs/good.mp4: 320x240 is 76800 pixels a frame, above [media] max_pixels = 76799"
    )


def test_duration_above_the_limit(make_ctx, clips):
    error = refused(make_ctx, clips["good"], media=MediaSettings(max_duration=1.5))
    assert str(error) == ("input inputs/good.mp4: 2.0 s long, above [media] max_duration = 1.5 s")


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def web(server):
    """A local HTTP server that records every request: a crafted file must cause none."""
    _Recorder.hits.clear()
    return server, _Recorder.hits


def playlist(path, segment: str):
    path.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:10.0,\n{segment}\n#EXT-X-ENDLIST\n"
    )
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".m3u8"])
@pytest.mark.parametrize("target", ["http", "file"])
def test_crafted_playlists_reach_nothing(make_ctx, tmp_path, web, suffix, target):
    url, hits = web
    segment = f"{url}/steal.ts" if target == "http" else "file:///etc/passwd"
    crafted = playlist(tmp_path / f"crafted{suffix}", segment)
    error = refused(make_ctx, crafted)
    assert str(error).startswith(f"input inputs/crafted{suffix}: not a media file batchfarm reads")
    harness = make_ctx("probe", inputs=[crafted])
    with pytest.raises(TaskError, match="not a media file batchfarm reads"):
        probe(harness.ctx)
    # Even handed straight to ffmpeg with the handler's input options, it reads nothing.
    out = tmp_path / "out.mp4"
    done = subprocess.run(
        [ffmpeg_exe(), "-nostdin", *SAFE_INPUT, "-i", crafted, "-c", "copy", out],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode != 0
    assert not out.exists()
    assert hits == []


def test_a_runaway_output_is_stopped_by_the_os(make_ctx, clips):
    # A file-size limit far below what the output needs: the kernel stops ffmpeg (SIGXFSZ).
    media = MediaSettings(output_bytes=4096)
    error = refused(make_ctx, clips["good"], media=media)
    assert str(error).endswith(
        "was stopped: it tried to write a file above its size limit (4096 bytes)"
    )


@pytest.mark.slow
def test_a_cpu_hog_is_stopped_by_the_os(make_ctx, tmp_path):
    # Upscaling with a slow preset: several CPU seconds, far above a 1 s limit.
    source = make_clip(tmp_path / "big.mp4", seconds=3.0, width=640, height=360)
    media = MediaSettings(cpu_time=1)
    error = refused(make_ctx, source, {"height": 1080, "preset": "slower"}, media=media)
    assert str(error).endswith("was stopped: it used its CPU time limit (1 s)")


def test_a_memory_hog_fails_its_task_only(make_ctx, clips):
    # Too little address space for ffmpeg to start its codecs: the task fails, not the worker.
    media = MediaSettings(memory_bytes=64 * 1024 * 1024)
    harness = make_ctx("transcode", params={"height": 120}, inputs=[clips["good"]], media=media)
    with pytest.raises(TaskError, match="exited with code"):
        transcode(harness.ctx)
    # The same worker goes on to the next task.
    _, meta = run_transcode(make_ctx, clips["good"])
    assert meta["height"] == 120


def test_audio_running_on_past_the_video(make_ctx, tmp_path):
    # Common in real files: the sound track is longer than the pictures.
    uneven = tmp_path / "uneven.mp4"
    argv = [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:duration=1"]
    argv += ["-f", "lavfi", "-i", "sine=duration=1.6", "-c:v", "libx264", "-c:a", "aac", uneven]
    subprocess.run(argv, check=True)
    facts = probe_file(uneven)
    assert facts.video.duration_s == pytest.approx(1.0)
    assert facts.duration_s == pytest.approx(1.6, abs=0.05)
    _, both = run_transcode(make_ctx, uneven)
    assert both["duration_s"] == pytest.approx(1.6, abs=0.1)
    mute = MediaSettings(presets={"mute": {"height": 120, "audio_codec": "none"}})
    _, pictures = run_transcode(make_ctx, uneven, {"preset": "mute"}, media=mute)
    assert (pictures["duration_s"], pictures["audio_codec"]) == (pytest.approx(1.0, abs=0.1), None)
    _, sound = run_transcode(make_ctx, uneven, {"preset": "aac"})
    assert (sound["duration_s"], sound["video_codec"]) == (pytest.approx(1.6, abs=0.1), None)
