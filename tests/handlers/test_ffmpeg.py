"""Which ffmpeg runs, how many threads it gets, and reading its stream dump."""

from __future__ import annotations

import os
from pathlib import Path

import imageio_ffmpeg
import pytest

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.ffmpeg import find_ffmpeg, is_permanent, parse_probe, threads_for
from batchfarm.actors.settings import MediaSettings


def executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def empty_path(tmp_path, monkeypatch):
    """PATH holds only an empty folder; imageio-ffmpeg is not steered by its variable."""
    folder = tmp_path / "empty-bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv("IMAGEIO_FFMPEG_EXE", raising=False)
    return folder


def test_explicit_path_wins(tmp_path, monkeypatch):
    mine = executable(tmp_path / "my-ffmpeg")
    on_path = tmp_path / "bin"
    on_path.mkdir()
    executable(on_path / "ffmpeg")
    monkeypatch.setenv("PATH", str(on_path))
    assert find_ffmpeg(MediaSettings(ffmpeg=str(mine))) == str(mine)


def test_explicit_path_missing_is_a_permanent_error_naming_the_setting(tmp_path):
    missing = tmp_path / "nope" / "ffmpeg"
    with pytest.raises(TaskError) as caught:
        find_ffmpeg(MediaSettings(ffmpeg=str(missing)))
    assert str(caught.value) == (
        f"[media] ffmpeg = {str(missing)!r}: no such file;"
        ' expected the path of an executable ffmpeg, or "" to find one'
    )
    assert caught.value.permanent is True


def test_explicit_path_not_executable(tmp_path):
    plain = tmp_path / "ffmpeg"
    plain.write_text("not a program")
    with pytest.raises(TaskError, match=r"\[media\] ffmpeg = .*: not executable") as caught:
        find_ffmpeg(MediaSettings(ffmpeg=str(plain)))
    assert caught.value.permanent is True
    with pytest.raises(TaskError, match="no such file"):
        find_ffmpeg(MediaSettings(ffmpeg=str(tmp_path)))


def test_ffmpeg_on_path_comes_next(empty_path):
    script = executable(empty_path / "ffmpeg")
    assert find_ffmpeg(MediaSettings()) == str(script)


def test_imageio_ffmpeg_is_the_fallback(empty_path):
    found = find_ffmpeg(MediaSettings())
    assert found == imageio_ffmpeg.get_ffmpeg_exe()
    assert os.access(found, os.X_OK)


@pytest.mark.parametrize(
    ("threads", "pinned", "workers", "cores", "expected"),
    [
        ("auto", True, 4, 4, 1),
        ("auto", True, 1, 16, 1),
        ("auto", False, 3, 8, 2),
        ("auto", False, 1, 8, 8),
        ("auto", False, 4, 2, 1),
        (4, True, 2, 2, 4),
        (2, False, 8, 64, 2),
    ],
)
def test_threads_for(threads, pinned, workers, cores, expected):
    media = MediaSettings(threads=threads)
    assert threads_for(media, pinned=pinned, workers=workers, cores=cores) == expected


def test_threads_for_refuses_nonsense():
    with pytest.raises(ValueError, match="workers = 0"):
        threads_for(MediaSettings(), pinned=False, workers=0, cores=2)


DUMP = """\
Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'clip.mp4':
  Metadata:
    encoder         : Lavf63.1.102
  Duration: 01:02:03.50, start: 0.000000, bitrate: 778 kb/s
  Stream #0:0[0x1](und): Video: h264 (Constrained Baseline) (avc1 / 0x31637661), \
yuv420p(tv, bt709, progressive), 1920x1080 [SAR 1:1 DAR 16:9], 697 kb/s, 25 fps (default)
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, mono, fltp, 69 kb/s
At least one output file must be specified"""


def test_parse_probe_reads_duration_and_streams():
    probe = parse_probe(DUMP)
    assert probe.duration_s == pytest.approx(3723.5)
    assert (probe.video_codec, probe.width, probe.height) == ("h264", 1920, 1080)
    assert probe.audio_codec == "aac"


def test_parse_probe_without_duration_or_streams():
    probe = parse_probe(
        "Input #0, wav, from 'x':\n  Duration: N/A, start: 0\n"
        "  Stream #0:0: Audio: pcm_s16le, 44100 Hz, mono, s16, 705 kb/s"
    )
    assert probe.duration_s is None
    assert probe.video_codec is None
    assert probe.width is None
    assert probe.audio_codec == "pcm_s16le"


def test_is_permanent_knows_bad_input_from_bad_luck():
    assert is_permanent("in.mp4: Invalid data found when processing input")
    assert is_permanent("[mov,mp4 @ 0x1] moov atom not found\nin.mp4: Invalid data")
    assert not is_permanent("out.mp4: No space left on device")
    assert not is_permanent("Killed")
