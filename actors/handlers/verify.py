"""Check a media output before its task is done: it decodes, lasts, and has the streams asked.

Every packet of the first video and audio stream is decoded with PyAV, with FFmpeg's error
detection set to fail on damage rather than conceal it. A failed check is a permanent
:class:`TaskError` naming the output and the reason: the same input and parameters would
make the same output again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.mediainfo import MediaInfo, read_info

if TYPE_CHECKING:
    import av

#: The smallest duration tolerance, in seconds: containers round durations, and AAC frames
#: (1024 samples, 23 ms at 44.1 kHz) rarely end exactly where the video does.
MIN_TOLERANCE_S = 0.1
#: Packets decoded between cancellation checks.
CANCEL_EVERY = 200
#: Tolerance in frames of the output's frame rate, when that is more than MIN_TOLERANCE_S.
TOLERANCE_FRAMES = 2


def verify_output(
    path: Path,
    *,
    label: str,
    duration_s: float | None,
    tolerance_s: float | None = None,
    video_codec: str | None = None,
    height: int | None = None,
    audio_codec: str | None = None,
    want_video: bool | None = None,
    want_audio: bool | None = None,
    check_cancelled: Callable[[], None] | None = None,
) -> MediaInfo:
    """Decode ``path`` fully and check it against what was asked; return its facts.

    ``duration_s`` is the input's duration (or the asked segment's), None to skip that check;
    the decoded duration must be within ``tolerance_s`` of it (default: the larger of
    :data:`MIN_TOLERANCE_S` and :data:`TOLERANCE_FRAMES` frames). ``video_codec``, ``height``
    and ``audio_codec`` are checked when given (an audio codec implies an audio stream);
    ``want_video`` / ``want_audio`` say whether that stream must (True) or must not (False)
    be there. Raises a permanent :class:`TaskError` "<label>: output failed verification:
    <reason>". ``check_cancelled`` (``TaskContext.check_cancelled``) is called as decoding
    goes, so a stopped task does not decode a long output to its end.
    """
    info = read_info(path, label)

    def fail(reason: str) -> TaskError:
        return _failed(label, reason)

    if want_video is None:
        want_video = True if video_codec or height else None
    if want_audio is None:
        want_audio = True if audio_codec else None
    for kind, want, have in (
        ("video", want_video, info.has_video),
        ("audio", want_audio, info.has_audio),
    ):
        if want is True and not have:
            raise fail(f"no {kind} stream, expected one")
        if want is False and have:
            raise fail(
                f"has an {kind} stream, expected none"
                if kind == "audio"
                else f"has a {kind} stream, expected none"
            )
    if info.video is not None:
        if video_codec and info.video.codec != video_codec:
            raise fail(f"video codec {info.video.codec}, expected {video_codec}")
        if height and info.video.height != height:
            raise fail(f"video height {info.video.height}, expected {height}")
    if info.audio is not None and audio_codec and info.audio.codec != audio_codec:
        raise fail(f"audio codec {info.audio.codec}, expected {audio_codec}")
    decoded = _decode_all(path, label, check_cancelled)
    if duration_s is not None:
        fps = info.video.fps if info.video is not None and info.video.fps else None
        tolerance = tolerance_s
        if tolerance is None:
            tolerance = max(MIN_TOLERANCE_S, TOLERANCE_FRAMES / fps if fps else 0.0)
        if abs(decoded - duration_s) > tolerance:
            raise fail(
                f"decodes to {decoded:.3f} s, expected {duration_s:.3f} s"
                f" (within {tolerance:.3f} s)"
            )
    return info


def _failed(label: str, reason: str) -> TaskError:
    return TaskError(f"{label}: output failed verification: {reason}", permanent=True)


def _decode_all(path: Path, label: str, check_cancelled: Callable[[], None] | None) -> float:
    """Decode every packet of the first video and audio streams; return the decoded span.

    The span runs from the earliest frame start to the latest frame end over both streams,
    so a cut-off stream shows up as a short span.
    """
    # Imported here: only media tasks need PyAV, and a worker starts faster without it.
    import av  # noqa: PLC0415

    start: float | None = None
    end = 0.0
    try:
        with av.open(str(path)) as container:
            streams = [*container.streams.video[:1], *container.streams.audio[:1]]
            for stream in streams:
                # Fail on damage instead of concealing it (FFmpeg's default is to conceal).
                stream.codec_context.options = {"err_detect": "explode"}
            for count, packet in enumerate(container.demux(streams)):
                if check_cancelled is not None and count % CANCEL_EVERY == 0:
                    check_cancelled()
                for frame in packet.decode():
                    if not isinstance(frame, av.VideoFrame | av.AudioFrame):
                        continue
                    if frame.pts is None or frame.time_base is None:
                        continue
                    begin = float(frame.pts * frame.time_base)
                    length = _frame_length(frame, packet)
                    start = begin if start is None else min(start, begin)
                    end = max(end, begin + length)
    except av.FFmpegError as exc:
        raise _failed(label, f"decode error: {exc.strerror or exc}") from exc
    return end - (start or 0.0)


def _frame_length(frame: av.VideoFrame | av.AudioFrame, packet: av.Packet[Any]) -> float:
    """How long a decoded frame lasts, in seconds."""
    import av  # noqa: PLC0415

    if isinstance(frame, av.AudioFrame):
        return frame.samples / frame.sample_rate if frame.sample_rate else 0.0
    if frame.duration and frame.time_base is not None:
        return float(frame.duration * frame.time_base)
    if packet.duration and packet.time_base is not None:
        return float(packet.duration * packet.time_base)
    return 0.0
