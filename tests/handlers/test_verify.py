"""Output verification: a file that does not decode, lasts too long or too short, or has the
wrong streams fails with the reason."""

from __future__ import annotations

import os
import re
import subprocess

import av
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


@pytest.fixture(scope="module")
def encoded(clip):
    """An output as the transcode handler makes it: x264 veryfast (CABAC, B-frames, deblocking)."""
    out = clip.with_name("encoded.mp4")
    subprocess.run(
        [
            *(ffmpeg_exe(), "-v", "error", "-i", clip, "-c:v", "libx264", "-preset", "veryfast"),
            *("-crf", "23", "-threads", "1", "-c:a", "aac", "-movflags", "+faststart", out),
        ],
        check=True,
    )
    return out


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


@pytest.mark.parametrize(
    ("packet", "at", "reason"),
    [
        # Relative to the middle video packet, and where in it (a fraction of its size). The
        # first two end the slice early: the decoder conceals the rest and marks the frames
        # corrupt, which the check before 2026-12-03 (slice threads, no concealment) passed.
        (0, 1 / 16, r"the video frame at \d\.\d+ s is corrupt"),
        (2, 1 / 6, r"the video frame at \d\.\d+ s is corrupt"),
        # This one breaks the entropy decoding: the decoder stops with an error.
        (-4, 1 / 8, "Invalid data found"),
    ],
    ids=["concealed", "concealed-later", "stopped"],
)
def test_one_flipped_bit_in_a_middle_video_packet_is_a_decode_error(
    encoded, tmp_path, packet, at, reason
):
    # H.264 carries no checksum: a flip can also decode to another valid picture, which no
    # decode notices (about one flip in four in such small frames, fewer in larger ones).
    # These flips throw the entropy decoder off, as most do.
    with av.open(str(encoded)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    pos, size = packets[len(packets) // 2 + packet]
    data = bytearray(encoded.read_bytes())
    data[pos + int(size * at)] ^= 0x10
    damaged = tmp_path / "flipped.mp4"
    damaged.write_bytes(bytes(data))
    verify_output(encoded, label="out", duration_s=2.0)  # the same file undamaged passes
    with pytest.raises(
        TaskError, match="out: output failed verification: decode error: "
    ) as caught:
        verify_output(damaged, label="out", duration_s=2.0)
    assert re.search(reason, str(caught.value))


def test_the_rotation_of_a_rotated_output_is_reported(tmp_path):
    turned = make_clip(tmp_path / "turned.mp4", 1.0, 320, 240, audio=False, rotation=90)
    info = verify_output(turned, label="out", duration_s=1.0, height=240)
    assert info.video.rotation == 90
    assert info.video.display_size == (240, 320)


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
