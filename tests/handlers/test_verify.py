"""Output verification: a file that does not decode, lasts too long or too short, or has the
wrong streams fails with the reason."""

from __future__ import annotations

import os
import subprocess

import pytest

from batchfarm.actors.errors import TaskCancelled, TaskError
from batchfarm.actors.handlers.verify import verify_output
from tests.media import ffmpeg_exe, make_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify")
    plain = make_clip(folder / "plain.mp4", 2.0, 320, 240)
    fast = folder / "clip.mp4"  # index first: a damaged file still opens, then fails to decode
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", plain, "-c", "copy", "-movflags", "+faststart", fast],
        check=True,
    )
    return fast


def test_a_good_output_passes_and_returns_its_facts(clip):
    info = verify_output(
        clip, label="out", duration_s=2.0, video_codec="h264", height=240, audio_codec="aac"
    )
    assert (info.video.codec, info.video.height, info.audio.codec) == ("h264", 240, "aac")


@pytest.mark.parametrize(
    ("expect", "reason"),
    [
        ({"height": 120}, "video height 240, expected 120"),
        ({"video_codec": "hevc"}, "video codec h264, expected hevc"),
        ({"audio_codec": "opus"}, "audio codec aac, expected opus"),
        ({"want_audio": False}, "has an audio stream, expected none"),
        ({"duration_s": 3.0}, "decodes to 2.0"),
        ({"duration_s": 1.8}, "expected 1.800 s (within 0.100 s)"),
    ],
)
def test_a_mismatch_fails_with_the_reason(clip, expect, reason):
    with pytest.raises(TaskError) as caught:
        verify_output(clip, label="input a.mp4: out.mp4", **{"duration_s": 2.0, **expect})
    assert str(caught.value).startswith("input a.mp4: out.mp4: output failed verification: ")
    assert reason in str(caught.value)
    assert caught.value.permanent is True


def test_a_missing_stream_fails(tmp_path):
    silent = make_clip(tmp_path / "silent.mp4", 1.0, audio=False)
    with pytest.raises(TaskError, match="no audio stream, expected one"):
        verify_output(silent, label="out", duration_s=1.0, audio_codec="aac")


def test_damage_in_the_middle_is_a_decode_error(clip, tmp_path):
    data = bytearray(clip.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = os.urandom(4000)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    with pytest.raises(TaskError, match="out: output failed verification: decode error"):
        verify_output(damaged, label="out", duration_s=2.0)


def test_a_cut_file_is_too_short_or_does_not_decode(clip, tmp_path):
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(TaskError, match=r"decode error|decodes to 1\.\d+ s, expected 2\.000 s"):
        verify_output(cut, label="out", duration_s=2.0)


def test_a_stopped_task_stops_verifying(clip):
    calls = []

    def check_cancelled():
        calls.append(1)
        raise TaskCancelled("time_limit")

    with pytest.raises(TaskCancelled):
        verify_output(clip, label="out", duration_s=2.0, check_cancelled=check_cancelled)
    assert calls == [1]
