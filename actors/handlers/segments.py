"""Segment-parallel encoding: ``split`` cuts one video at keyframes, ``concat`` joins it again.

A segment-parallel job is three ordinary stages, so ``status``, ``watch``, ``retry`` and the
ETA work for it as for any job:

1. ``split`` (one task per input): the video is cut at keyframes into segments of about
   ``seconds`` each without re-encoding (``seg-00000.mp4``, ...), and the audio track is
   stored whole, losslessly, in a file of its own (``audio.flac``), aligned to the video;
2. ``encode_segment`` in ``fan_out`` mode: one task per output of the split, so every
   worker of every node encodes a segment (and one of them the audio), each with
   ``transcode``'s presets and params and verified as it completes;
3. ``concat`` in ``fan_in`` mode: the encoded video segments joined in order by ffmpeg's
   concat demuxer without re-encoding, the audio muxed beside them, as one fast-start MP4.

Why the audio is one part of its own: an AAC encoder starts every stream with priming samples
(1,024 of them, marked to be skipped by an edit list) and pads its last frame. Audio encoded
per segment would carry that at each boundary: a gap or click every few seconds and audio
drifting against the video. Encoded once over the whole track it stays continuous, and its
one priming delay is kept by the MP4 edit list through the join. The split stores the track
as FLAC (lossless, so the one lossy encode is still the last), starting exactly where the
video starts: each segment's encode restarts its timestamps at 0, so an offset between the
input's audio and video (an audio track that starts late, say) would otherwise be lost. The
video is frame-exact: cuts fall on keyframes and an encode keeps every frame, so the joined
video lasts as long as the input's.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.context import TaskContext
from batchfarm.actors.handlers.ffmpeg import SAFE_INPUT, find_ffmpeg, is_permanent, limits_for
from batchfarm.actors.handlers.mediainfo import (
    INPUT_FORMATS,
    OPEN_OPTIONS,
    MediaInfo,
    check_limits,
    read_info,
)
from batchfarm.actors.handlers.params import Params, bad_param
from batchfarm.actors.handlers.transcode import (
    TranscodeOptions,
    resolve_options,
    run_transcode,
)
from batchfarm.actors.settings import MediaSettings

#: ``split``'s params, and the bounds of its segment length in seconds.
SPLIT_PARAMS = ("seconds",)
DEFAULT_SECONDS = 10.0
SECONDS_RANGE = (0.5, 3600.0)
#: Most segments a split may make: the completion event listing them (and the join's task
#: body) must stay within the queue's 256 KiB body limit.
MAX_SEGMENTS = 800
#: ``concat``'s params.
CONCAT_PARAMS = ("name",)
#: The split's video containers, by codec: MP4 and QuickTime keep the input's time base
#: (Matroska, the fallback for anything else, rounds every timestamp to a millisecond).
SEGMENT_FORMATS = {
    **dict.fromkeys(("h264", "hevc", "av1", "vp9", "mpeg4", "mpeg2video", "mpeg1video"), "mp4"),
    **dict.fromkeys(("prores", "dnxhd", "mjpeg", "qtrle", "dvvideo", "rawvideo", "png"), "mov"),
}
_SUFFIXES = {"mp4": ".mp4", "mov": ".mov", "matroska": ".mkv"}
#: The audio track, decoded and stored losslessly, starting where the video starts.
AUDIO_NAME = "audio.flac"
#: Start offsets between audio and video below this are left alone (seconds).
_OFFSET_S = 0.001
#: The join reads its list with the concat demuxer, and each listed file as a task input.
_CONCAT_INPUT = ("-protocol_whitelist", "file", "-format_whitelist", f"concat,{INPUT_FORMATS}")


def split(ctx: TaskContext) -> dict[str, Any]:
    """Cut ``ctx.inputs[0]`` at keyframes into segments of about ``seconds``, without encoding.

    Each cut falls on the first keyframe at or after a multiple of ``seconds`` (default 10),
    so a segment is longer where keyframes are sparse. Outputs ``seg-00000.mp4``, ... (the
    first video stream's packets, copied: ``.mov`` or ``.mkv`` for codecs MP4 does not take)
    and, if the input has audio, ``audio.flac``: its first audio stream decoded and stored
    losslessly, whole, starting where the video starts (padded with silence or trimmed by
    the offset between their starts in the input). Returns ``{"segments", "seconds",
    "audio", "audio_offset_s", "duration_s"}``. An input without video, or above the
    ``[media]`` limits, fails permanently.
    """
    seconds = split_params(ctx.params)
    source, label = _only_input(ctx, "split")
    info = read_info(source, label, max_pixels=ctx.media.max_pixels)
    check_limits(info, ctx.media, label)
    if info.video is None:
        raise TaskError(
            f"split: {label}: no video stream; expected a video to cut into segments",
            permanent=True,
        )
    if info.duration_s is not None and info.duration_s / seconds > MAX_SEGMENTS:
        count = int(info.duration_s // seconds) + 1
        raise TaskError(
            f"split: {label}: {info.duration_s:.0f} s in segments of {seconds:g} s makes"
            f" {count} segments; expected at most {MAX_SEGMENTS} (set a longer seconds)",
            permanent=True,
        )
    work = ctx.scratch / "split"
    work.mkdir()
    video_format = SEGMENT_FORMATS.get(info.video.codec, "matroska")
    pattern = f"seg-%05d{_SUFFIXES[video_format]}"
    argv = [
        find_ffmpeg(ctx.media),
        *("-nostdin", "-hide_banner", "-y", *SAFE_INPUT, "-i", str(source)),
        *("-map", "0:v:0", "-c", "copy", "-f", "segment", "-segment_time", f"{seconds:g}"),
        *("-segment_format", video_format, "-reset_timestamps", "1", str(work / pattern)),
    ]
    offset = 0.0
    if info.audio is not None:
        offset = _audio_offset(source)
        argv += ["-map", "0:a:0", *_align(offset), "-c:a", "flac", str(work / AUDIO_NAME)]
    ctx.run_tool(argv, permanent_if=is_permanent, limits=limits_for(ctx.media))
    segments = sorted(work.glob("seg-*"))
    if not segments:
        raise TaskError(f"split: {label}: ffmpeg wrote no segment", permanent=True)
    # Moved only once all are written: a failed run leaves no partial set of outputs.
    for path in sorted(work.iterdir()):
        shutil.move(path, ctx.output_dir / path.name)
    ctx.progress(1.0)
    return {
        "segments": len(segments),
        "seconds": seconds,
        "audio": info.audio is not None,
        "audio_offset_s": round(offset, 6),
        "duration_s": info.duration_s,
    }


def _audio_offset(source: Path) -> float:
    """Seconds the audio starts after the video (negative: before), as the container says."""
    with av.open(str(source), options=dict(OPEN_OPTIONS)) as container:
        starts = []
        for stream in (container.streams.video[0], container.streams.audio[0]):
            start, base = stream.start_time, stream.time_base
            starts.append(float(start * base) if start is not None and base else 0.0)
    return starts[1] - starts[0]


def _align(offset: float) -> list[str]:
    """The audio filter that makes the track start where the video does.

    Each video segment starts at 0, so the track must too: audio that starts late gets
    silence before it, audio that starts early loses what comes before the first frame.
    """
    if offset > _OFFSET_S:
        return ["-af", f"adelay=delays={offset * 1000:.3f}:all=1"]
    if offset < -_OFFSET_S:
        return ["-af", f"atrim=start={-offset:.6f},asetpts=PTS-STARTPTS"]
    return []


def encode_segment(ctx: TaskContext) -> dict[str, Any]:
    """Encode one part of a split: a video segment, or the audio track alone.

    Takes ``transcode``'s params (a preset and its overrides) and runs the same transcode,
    verified the same way (it decodes, and lasts as long as the part). A video segment is
    encoded as the preset says; the audio track, a part with no video, gets the preset's
    audio alone. Returns the output's ``duration_s``, ``bytes``, ``video_codec`` and
    ``audio_codec``.
    """
    options, name = _encode_options(ctx.params, ctx.media)
    source, label = _only_input(ctx, "encode_segment")
    info = read_info(source, label, max_pixels=ctx.media.max_pixels)
    if info.video is None:
        if options.audio_codec is None:
            raise TaskError(
                f"encode_segment: {label} is audio alone, and the preset drops audio;"
                " expected a preset with audio (the join needs the track)",
                permanent=True,
            )
        options = replace(options, video_codec=None)
    work = ctx.scratch / name
    out = run_transcode(ctx, source, work, options, label=f"input {label}", info=info)
    target = ctx.output_dir / name
    shutil.move(work, target)
    return {
        "duration_s": out.duration_s,
        "bytes": target.stat().st_size,
        "video_codec": out.video.codec if out.video else None,
        "audio_codec": out.audio.codec if out.audio else None,
    }


def check_encode_params(params: Mapping[str, Any]) -> None:
    """``encode_segment``'s params as a job is submitted: ``transcode``'s."""
    _encode_options(params, None)


def _encode_options(
    params: Mapping[str, Any], media: MediaSettings | None
) -> tuple[TranscodeOptions, str]:
    """``transcode``'s options for a part, refusing an audio-only preset: parts are video."""
    options, name = resolve_options("encode_segment", params, media)
    if options.video_codec is None:
        raise bad_param(
            "encode_segment",
            "preset",
            params.get("preset"),
            "a preset with video: the segments are video (the audio part is encoded with"
            " the preset's audio)",
        )
    return options, name


@dataclass(frozen=True)
class _Part:
    """One input of the join: its local file, its name in messages, and what it holds."""

    path: Path
    label: str
    info: MediaInfo


def concat(ctx: TaskContext) -> dict[str, Any]:
    """Join encoded segments (in input order) and an audio track into ``name``, no re-encode.

    Inputs with video are the segments, in order; an input with audio alone is the track
    muxed beside them (at most one). The segments must share codec and frame size. The
    output (fast-start MP4, default ``out.mp4``) is checked packet by packet: it holds every
    frame of the segments, its video lasts as long as they do together and its audio as long
    as the track. Returns ``{"segments", "duration_s", "width", "height", "audio", "bytes"}``.
    """
    name = concat_params(ctx.params)
    if not ctx.inputs:
        raise TaskError("concat: the task has no inputs, expected encoded segments", permanent=True)
    # Headers only (max_pixels=0: no frame decoded for the rotation, which the join keeps
    # as it is): each segment was decoded in full when its encode was verified.
    parts = [
        _Part(path, label, read_info(path, label, max_pixels=0)) for path, label in _labelled(ctx)
    ]
    videos = [part for part in parts if part.info.video is not None]
    audios = [part for part in parts if part.info.video is None and part.info.audio is not None]
    if not videos:
        raise TaskError(
            f"concat: none of the {len(parts)} inputs has video; expected the encoded"
            " segments of a video",
            permanent=True,
        )
    if len(audios) > 1:
        names = ", ".join(part.label for part in audios)
        raise TaskError(
            f"concat: {names} are each audio alone; expected at most one audio track",
            permanent=True,
        )
    _check_alike(videos)
    ctx.check_cancelled()
    listing = ctx.scratch / "segments.ffconcat"
    lines = ["ffconcat version 1.0"]
    for number, part in enumerate(videos):
        # Plain relative names: the concat demuxer's safe mode accepts nothing else.
        link = ctx.scratch / f"part-{number:05d}{part.path.suffix}"
        link.symlink_to(part.path.resolve())
        lines.append(f"file '{link.name}'")
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    work = ctx.scratch / name
    argv = [find_ffmpeg(ctx.media), "-nostdin", "-hide_banner", "-y"]
    argv += [*_CONCAT_INPUT, "-f", "concat", "-i", str(listing)]
    audio = audios[0] if audios else None
    if audio is not None:
        argv += [*SAFE_INPUT, "-i", str(audio.path), "-map", "0:v:0", "-map", "1:a:0"]
    else:
        argv += ["-map", "0:v:0", "-map", "0:a:0?"]
    argv += ["-c", "copy", "-movflags", "+faststart", "-f", "mp4", str(work)]
    ctx.run_tool(argv, permanent_if=is_permanent, limits=limits_for(ctx.media))
    out = _check_joined(work, name, videos, audio)
    target = ctx.output_dir / name
    shutil.move(work, target)
    ctx.progress(1.0)
    assert out.video is not None  # verified: it has video
    return {
        "segments": len(videos),
        "duration_s": out.duration_s,
        "width": out.video.width,
        "height": out.video.height,
        "audio": out.audio is not None,
        "bytes": target.stat().st_size,
    }


def _check_joined(path: Path, label: str, videos: list[_Part], audio: _Part | None) -> MediaInfo:
    """Check the joined file by its packets: every frame there, no gap, the audio whole.

    Each segment was decoded in full when its encode was verified, and the join copies their
    packets, so counting and timing the packets (a fraction of a second) checks the join;
    decoding the whole title again would add a serial tail of seconds per minute of video.
    """
    info = read_info(path, label, max_pixels=0)
    frames = [part.info.video.frames if part.info.video else None for part in videos]
    durations = [part.info.duration_s for part in videos]
    fps = videos[0].info.video.fps if videos[0].info.video else None
    tolerance = max(0.1, 2 / fps) if fps else 0.1
    with av.open(str(path), options=dict(OPEN_OPTIONS)) as container:
        streams = [*container.streams.video[:1], *container.streams.audio[:1]]
        # By position (video, then audio): a stream object is not to be read once closed.
        kinds = {stream.index: n for n, stream in enumerate(streams)}
        count = [0] * len(streams)
        ends = [0.0] * len(streams)
        for packet in container.demux(streams):
            if packet.pts is None or not packet.size or packet.time_base is None:
                continue
            at = kinds[packet.stream_index]
            count[at] += 1
            ends[at] = max(
                ends[at], float((packet.pts + (packet.duration or 0)) * packet.time_base)
            )
    problems = []
    want = sum(f or 0 for f in frames)
    if None not in frames and count[0] != want:
        problems.append(f"{count[0]} video frames, expected {want}")
    if None not in durations:
        expected = sum(d for d in durations if d is not None)
        if abs(ends[0] - expected) > tolerance:
            problems.append(f"video ends at {ends[0]:.3f} s, expected {expected:.3f} s")
    if audio is not None:
        track = audio.info.duration_s
        if len(streams) < 2:
            problems.append("no audio stream, expected the track")
        elif track is not None and abs(ends[1] - track) > tolerance:
            problems.append(f"audio ends at {ends[1]:.3f} s, expected {track:.3f} s")
    if problems:
        raise TaskError(f"concat: {label} failed its check: {'; '.join(problems)}", permanent=True)
    return info


def split_params(params: Mapping[str, Any]) -> float:
    """``split``'s params, checked: the segment length in seconds."""
    low, high = SECONDS_RANGE
    return Params("split", params, SPLIT_PARAMS).number("seconds", DEFAULT_SECONDS, low, high)


def concat_params(params: Mapping[str, Any]) -> str:
    """``concat``'s params, checked: the output's file name (``.mp4``)."""
    return Params("concat", params, CONCAT_PARAMS).file_name("name", "out.mp4", suffix=".mp4")


def _labelled(ctx: TaskContext) -> list[tuple[Path, str]]:
    """Each local input with its name for messages: its blob key, else its file name."""
    keys = list(ctx.task.inputs)
    if len(keys) != len(ctx.inputs):
        keys = [path.name for path in ctx.inputs]
    return list(zip(ctx.inputs, keys, strict=True))


def _only_input(ctx: TaskContext, handler: str) -> tuple[Path, str]:
    if len(ctx.inputs) != 1:
        raise TaskError(
            f"{handler}: the task has {len(ctx.inputs)} inputs, expected exactly 1",
            permanent=True,
        )
    return _labelled(ctx)[0]


def _check_alike(videos: list[_Part]) -> None:
    """Segments joined without re-encoding must share their codec and frame size."""
    first = videos[0]
    assert first.info.video is not None
    want = (first.info.video.codec, first.info.video.width, first.info.video.height)
    for part in videos[1:]:
        assert part.info.video is not None
        have = (part.info.video.codec, part.info.video.width, part.info.video.height)
        if have != want:
            raise TaskError(
                f"concat: {part.label} is {have[0]} {have[1]}x{have[2]}; expected {want[0]}"
                f" {want[1]}x{want[2]} like {first.label}: segments must be encoded alike",
                permanent=True,
            )
