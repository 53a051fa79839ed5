"""Segment-parallel encoding's handlers against the real ffmpeg: split, encode_segment, concat."""

from __future__ import annotations

from dataclasses import replace

import pytest

from batchfarm.actors.codec import MAX_BODY_BYTES, encode_body
from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers import segments
from batchfarm.actors.handlers.mediainfo import read_info
from batchfarm.actors.handlers.registry import check_params
from batchfarm.actors.handlers.segments import _check_joined, _Part, concat, encode_segment, split
from batchfarm.actors.messages import OutputRef, TaskBody
from tests.handlers.segmedia import (
    audio_alone,
    first_sound,
    make_other,
    make_source,
    tracks,
    video_packets,
)
from tests.manager.results_grid import completion

FPS = 25
FRAME = 1 / FPS


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """8 s, a keyframe every second, H.264 with B-frames and AAC audio."""
    return make_source(tmp_path_factory.mktemp("src") / "title.mp4", seconds=8.0, fps=str(FPS))


def run_split(make_ctx, source, seconds=3):
    harness = make_ctx("split", params={"seconds": seconds}, inputs=[source], keys=["in/title.mp4"])
    meta = split(harness.ctx)
    return harness, meta, sorted(harness.ctx.output_dir.iterdir())


def test_split_cuts_the_video_at_keyframes_without_re_encoding(make_ctx, source):
    harness, meta, outputs = run_split(make_ctx, source, seconds=3)
    names = [p.name for p in outputs]
    assert names == ["audio.flac", "seg-00000.mp4", "seg-00001.mp4", "seg-00002.mp4"]
    assert meta == {
        "segments": 3,
        "seconds": 3.0,
        "audio": True,
        "audio_offset_s": 0.0,
        "duration_s": pytest.approx(8.0),
    }
    segments = outputs[1:]
    # The very packets of the input, in order: copied, never encoded.
    assert [p for s in segments for p in video_packets(s)] == video_packets(source)
    # Each segment is video alone, starts on a keyframe and lasts about the asked 3 s.
    lengths = []
    for segment in segments:
        found = tracks(segment)
        assert set(found) == {"video"}
        assert found["video"].keyframes >= 1
        lengths.append(found["video"].frames)
    assert lengths == [3 * FPS, 3 * FPS, 2 * FPS]
    # The audio is whole, alone, lossless.
    audio = tracks(outputs[0])
    assert set(audio) == {"audio"}
    assert audio["audio"].codec == "flac"
    assert audio["audio"].duration == pytest.approx(8.0, abs=0.03)
    assert harness.progress[-1] == 1.0


def test_split_refuses_a_file_without_video_naming_it(make_ctx, tmp_path):
    tone = audio_alone(make_source(tmp_path / "tone.mp4", seconds=1.0), tmp_path / "tone.m4a")
    harness = make_ctx("split", inputs=[tone], keys=["in/tone.m4a"])
    with pytest.raises(TaskError, match=r"split: in/tone\.m4a: no video stream") as caught:
        split(harness.ctx)
    assert caught.value.permanent
    assert list(harness.ctx.output_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("handler", "params", "problem"),
    [
        ("split", {"seconds": 0}, r"seconds"),
        ("split", {"secs": 3}, r"secs"),
        ("concat", {"name": "out.mkv"}, r"name"),
        ("encode_segment", {"crf": 99}, r"crf"),
        ("encode_segment", {"preset": "aac"}, r"preset = \"aac\": expected a preset with video"),
    ],
)
def test_bad_params_are_refused_at_submit_time(handler, params, problem):
    with pytest.raises(TaskError, match=problem) as caught:
        check_params(handler, params)
    assert caught.value.permanent


def encode_all(make_ctx, parts, params):
    """Run encode_segment on each part, as the fan-out stage's tasks would; the outputs in order."""
    outputs = []
    for n, part in enumerate(parts):
        harness = make_ctx("encode_segment", params=params, inputs=[part], keys=[f"split/{n}"])
        encode_segment(harness.ctx)
        (out,) = harness.ctx.output_dir.iterdir()
        outputs.append(out)
    return outputs


def test_split_encode_and_join_play_as_the_input_did(make_ctx, source):
    _, _, parts = run_split(make_ctx, source, seconds=3)
    encoded = encode_all(make_ctx, parts, {"preset": "h264-480p", "height": 120})
    # The audio part came out as audio alone, each segment as video alone.
    assert [set(tracks(p)) for p in encoded] == [{"audio"}, {"video"}, {"video"}, {"video"}]

    harness = make_ctx("concat", inputs=encoded, keys=[f"encode/{n}/out.mp4" for n in range(4)])
    meta = concat(harness.ctx)
    out = harness.ctx.output_dir / "out.mp4"
    assert meta["segments"] == 3
    assert meta["audio"] is True
    assert (meta["width"], meta["height"]) == (160, 120)

    joined, original = tracks(out), tracks(source)  # decoding raises on any decode error
    video, audio = joined["video"], joined["audio"]
    assert video.frames == original["video"].frames == 8 * FPS
    # Its duration within one frame of the input's.
    assert abs(video.duration - original["video"].duration) <= FRAME
    assert abs(video.start - original["video"].start) <= FRAME
    # Audio in sync: it starts and ends where the video does (within a frame or two).
    assert abs(audio.start - video.start) <= FRAME
    assert abs(audio.end - video.end) <= 2 * FRAME
    assert abs(audio.duration - original["audio"].duration) <= FRAME
    # Fast start: the index (moov) comes before the media data (mdat).
    head = out.read_bytes()[:65536]
    assert 0 <= head.find(b"moov") < head.find(b"mdat")


@pytest.mark.parametrize(("offset", "container"), [(0.3, "mp4"), (0.3, "ts"), (-0.2, "mkv")])
def test_audio_that_starts_off_the_video_stays_in_sync(make_ctx, tmp_path, offset, container):
    """An input whose audio starts later (or earlier) than its video keeps that offset."""
    # The tone starts 0.5 s into the track: a moment to find again in the joined file.
    source = make_source(
        tmp_path / f"off.{container}", seconds=4.0, audio_offset=offset, tone_after=0.5
    )
    sound_at = first_sound(source)
    assert sound_at == pytest.approx(offset + 0.5, abs=0.03)  # as generated
    harness = make_ctx("split", params={"seconds": 2}, inputs=[source], keys=["in/off"])
    meta = split(harness.ctx)
    assert meta["audio_offset_s"] == pytest.approx(offset, abs=0.03)
    parts = sorted(harness.ctx.output_dir.iterdir())
    encoded = encode_all(
        make_ctx, parts, {"preset": "h264-480p", "height": 120, "speed": "ultrafast"}
    )
    harness = make_ctx("concat", inputs=encoded, keys=[f"e/{n}/out.mp4" for n in range(len(parts))])
    concat(harness.ctx)
    joined = harness.ctx.output_dir / "out.mp4"
    # The first sound comes at the same moment of the picture as in the input, to the sample.
    assert first_sound(joined) == pytest.approx(sound_at, abs=0.002)
    assert tracks(joined)["video"].frames == tracks(source)["video"].frames


@pytest.mark.parametrize(
    ("name", "video", "audio"),
    [("clip.webm", "libvpx-vp9", "libopus"), ("clip.avi", "mpeg4", "libmp3lame")],
)
def test_other_codecs_split_and_join_whole(make_ctx, tmp_path, name, video, audio):
    source = make_other(tmp_path / name, video, audio)
    harness = make_ctx("split", params={"seconds": 1}, inputs=[source], keys=[f"in/{name}"])
    split(harness.ctx)
    parts = sorted(harness.ctx.output_dir.iterdir())
    assert [p.suffix for p in parts] == [".flac", ".mp4", ".mp4", ".mp4"]
    encoded = encode_all(
        make_ctx, parts, {"preset": "h264-480p", "height": 120, "speed": "ultrafast"}
    )
    harness = make_ctx("concat", inputs=encoded, keys=[f"e/{n}/out.mp4" for n in range(4)])
    concat(harness.ctx)
    joined = tracks(harness.ctx.output_dir / "out.mp4")
    assert joined["video"].frames == tracks(source)["video"].frames == 75
    assert (joined["video"].codec, joined["audio"].codec) == ("h264", "aac")


def test_concat_refuses_two_audio_tracks_and_segments_unlike_each_other(make_ctx, tmp_path):
    small = make_source(tmp_path / "small.mp4", seconds=1.0, size="160x120", audio=False)
    big = make_source(tmp_path / "big.mp4", seconds=1.0, size="320x240", audio=False)
    harness = make_ctx("concat", inputs=[small, big], keys=["e/0/out.mp4", "e/1/out.mp4"])
    with pytest.raises(TaskError, match=r"e/1/out\.mp4 is h264 320x240; expected h264 160x120"):
        concat(harness.ctx)

    with_audio = make_source(tmp_path / "tone.mp4", seconds=1.0)
    tracks_ = [audio_alone(with_audio, tmp_path / f"{n}.m4a") for n in "ab"]
    harness = make_ctx("concat", inputs=[small, *tracks_], keys=["e/0/o", "e/1/a", "e/2/b"])
    with pytest.raises(TaskError, match=r"e/1/a, e/2/b are each audio alone; expected at most"):
        concat(harness.ctx)
    harness = make_ctx("concat", inputs=tracks_[:1], keys=["e/0/a"])
    with pytest.raises(TaskError, match=r"none of the 1 inputs has video"):
        concat(harness.ctx)


def test_the_join_is_checked_packet_by_packet_against_its_segments(tmp_path):
    joined = make_source(tmp_path / "joined.mp4", seconds=2.0)
    track = audio_alone(joined, tmp_path / "track.m4a")
    info = read_info(joined)
    half = replace(info, duration_s=1.0, video=replace(info.video, frames=info.video.frames // 2))
    halves = [_Part(joined, "e/0", half), _Part(joined, "e/1", half)]
    audio = _Part(track, "e/a", read_info(track))
    assert _check_joined(joined, "out.mp4", halves, audio).video is not None
    # A frame missing, a segment lost, a track cut short: each named.
    short = replace(half, video=replace(half.video, frames=half.video.frames + 1))
    with pytest.raises(TaskError, match=r"out\.mp4 failed its check: 50 video frames, expected 51"):
        _check_joined(joined, "out.mp4", [halves[0], _Part(joined, "e/1", short)], audio)
    with pytest.raises(TaskError, match=r"video ends at 2\.000 s, expected 3\.000 s"):
        _check_joined(
            joined, "out.mp4", [*halves, _Part(joined, "e/2", replace(half, video=None))], None
        )
    longer = _Part(track, "e/a", replace(read_info(track), duration_s=3.0))
    with pytest.raises(TaskError, match=r"audio ends at 2\.0\d\d s, expected 3\.000 s"):
        _check_joined(joined, "out.mp4", halves, longer)


def test_split_refuses_more_segments_than_a_completion_can_list(make_ctx, source, monkeypatch):
    monkeypatch.setattr(segments, "MAX_SEGMENTS", 10)
    harness = make_ctx("split", params={"seconds": 0.5}, inputs=[source], keys=["in/title.mp4"])
    with pytest.raises(TaskError, match=r"8 s in segments of 0\.5 s makes 17 segments") as caught:
        split(harness.ctx)
    assert caught.value.permanent


def test_the_most_segments_fit_one_completion_event_with_the_longest_names():
    job, stage = "j" * 64, "s" * 64
    outputs = [
        OutputRef(f"jobs/{job}/{stage}/0/seg-{n:05d}.mp4", 10**12, "f" * 64)
        for n in range(segments.MAX_SEGMENTS)
    ]
    outputs.append(OutputRef(f"jobs/{job}/{stage}/0/audio.flac", 10**12, "f" * 64))
    body = TaskBody(job=job, stage=stage, part=0, handler="split")
    event = completion(body, outputs=outputs)
    assert len(encode_body(event)) <= MAX_BODY_BYTES
