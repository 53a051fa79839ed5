"""Which ffmpeg runs, its encoders, how many threads it gets, and its OS limits."""

from __future__ import annotations

import os
from pathlib import Path

import imageio_ffmpeg
import pytest

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.ffmpeg import (
    encoders,
    find_ffmpeg,
    has_encoder,
    is_permanent,
    limits_for,
    threads_for,
)
from batchfarm.actors.handlers.tool import Limits
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


def test_encoders_are_listed_from_the_build():
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    # imageio-ffmpeg's build has these (tests/media.py relies on them too).
    for name in ("libx264", "libx265", "libsvtav1", "aac", "mjpeg", "png"):
        assert has_encoder(ffmpeg, name), name
    assert not has_encoder(ffmpeg, "libnonesuch")
    assert encoders(ffmpeg) is encoders(ffmpeg)  # listed once per binary


def test_an_ffmpeg_without_av1_has_no_av1(tmp_path):
    fake = tmp_path / "ffmpeg"
    fake.write_text(
        "#!/bin/sh\necho 'Encoders:'\necho ' ------'\n"
        "echo ' V....D libx264              libx264 H.264'\n"
        "echo ' A....D aac                  AAC (Advanced Audio Coding)'\n"
    )
    fake.chmod(0o755)
    assert encoders(str(fake)) == {"libx264", "aac"}
    assert not has_encoder(str(fake), "libsvtav1")


def test_limits_come_from_media_settings():
    media = MediaSettings(cpu_time=60, memory_bytes=2**30, output_bytes=0)
    assert limits_for(media) == Limits(cpu_s=60, memory_bytes=2**30, output_bytes=None)


def test_is_permanent_knows_bad_input_from_bad_luck():
    assert is_permanent("in.mp4: Invalid data found when processing input")
    assert is_permanent("[mov,mp4 @ 0x1] moov atom not found\nin.mp4: Invalid data")
    assert not is_permanent("out.mp4: No space left on device")
    assert not is_permanent("Killed")
