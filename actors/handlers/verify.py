"""Check a media output before its task is done: it decodes, lasts, and has the streams asked.

Every packet of the first video and audio stream is decoded with PyAV, with FFmpeg's error
detection set to fail on damage rather than conceal it. A failed check is a permanent
:class:`TaskError` naming the output and the reason: the same input and parameters would
make the same output again.

What the decode checks, and what it skips (measured in ``scripts/bench/media_overhead``):

- Every slice of every frame is entropy-decoded and reconstructed, so a damaged bitstream
  either stops the decoder (``err_detect=explode``) or makes it conceal the damage, which
  marks the frames that show it corrupt: both fail the check.
- The in-loop deblocking filter is skipped (``skip_loop_filter=all``): it smooths block
  edges of frames already decoded and reads no bits, so it finds no damage; it is about a
  fifth of an H.264 decode on this machine (0.375 -> 0.303 CPU s for 4 s of 720p medium).
- The decoder runs on one thread. FFmpeg's slice threads turn its error concealment off
  (damage that ends a slice early then passes unnoticed), and with frame threads some
  concealed frames come out unmarked: both let damaged outputs through.
- The file is opened once: the facts (streams, codecs, sizes) come from its headers, the
  rotation from the first frame of the full decode.

Cheaper ways were measured against this one (``media_overhead --damage``: 100 copies of an
output, each with one bit flipped in a random video packet) and none keeps its detection for
less: FFmpeg's H.264 decoder has no entropy-decode-only mode (neither ``skip_idct=all`` nor
``flags2=fast`` saves anything measurable), skipping non-reference frames (``skip_frame``)
leaves their damage unseen and fails good outputs (the decoded span comes out short), and
reading the packets without decoding them catches none of the flips. Concealment, which
marks the corrupt frames this check finds, needs the reconstruction anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.mediainfo import MediaInfo, media_facts, open_media

if TYPE_CHECKING:
    import av
    import av.container

#: The smallest duration tolerance, in seconds: containers round durations, and AAC frames
#: (1024 samples, 23 ms at 44.1 kHz) rarely end exactly where the video does.
MIN_TOLERANCE_S = 0.1
#: Packets decoded between cancellation checks.
CANCEL_EVERY = 200
#: Tolerance in frames of the output's frame rate, when that is more than MIN_TOLERANCE_S.
TOLERANCE_FRAMES = 2
#: Decoder options: fail on damage instead of concealing it (FFmpeg's default conceals).
DECODE_OPTIONS = {"err_detect": "explode"}
#: Video decoders also skip the deblocking filter: reconstruction only, no bits read.
VIDEO_DECODE_OPTIONS = {**DECODE_OPTIONS, "skip_loop_filter": "all"}


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
    # Imported here: only media tasks need PyAV, and a worker starts faster without it.
    import av  # noqa: PLC0415

    container, size = open_media(path, label)
    with container:
        try:
            # Rotation (max_pixels=0): read from the first frame the full decode gives.
            info = media_facts(container, size, max_pixels=0)
        except av.FFmpegError as exc:
            raise _failed(label, f"unreadable headers: {exc.strerror or exc}") from exc
        _check_streams(
            info,
            label,
            video_codec=video_codec,
            height=height,
            audio_codec=audio_codec,
            want_video=want_video,
            want_audio=want_audio,
        )
        decoded, rotation = _decode_all(container, label, check_cancelled)
    if info.video is not None and rotation is not None:
        info = replace(info, video=replace(info.video, rotation=rotation))
    if duration_s is not None:
        fps = info.video.fps if info.video is not None and info.video.fps else None
        tolerance = tolerance_s
        if tolerance is None:
            tolerance = max(MIN_TOLERANCE_S, TOLERANCE_FRAMES / fps if fps else 0.0)
        if abs(decoded - duration_s) > tolerance:
            raise _failed(
                label,
                f"decodes to {decoded:.3f} s, expected {duration_s:.3f} s"
                f" (within {tolerance:.3f} s)",
            )
    return info


def _check_streams(
    info: MediaInfo,
    label: str,
    *,
    video_codec: str | None,
    height: int | None,
    audio_codec: str | None,
    want_video: bool | None,
    want_audio: bool | None,
) -> None:
    """The streams, codecs and height the headers say, against what was asked."""
    if want_video is None:
        want_video = True if video_codec or height else None
    if want_audio is None:
        want_audio = True if audio_codec else None
    for kind, want, have in (
        ("video", want_video, info.has_video),
        ("audio", want_audio, info.has_audio),
    ):
        if want is True and not have:
            raise _failed(label, f"no {kind} stream, expected one")
        if want is False and have:
            article = "an" if kind == "audio" else "a"
            raise _failed(label, f"has {article} {kind} stream, expected none")
    if info.video is not None:
        if video_codec and info.video.codec != video_codec:
            raise _failed(label, f"video codec {info.video.codec}, expected {video_codec}")
        if height and info.video.height != height:
            raise _failed(label, f"video height {info.video.height}, expected {height}")
    if info.audio is not None and audio_codec and info.audio.codec != audio_codec:
        raise _failed(label, f"audio codec {info.audio.codec}, expected {audio_codec}")


def _failed(label: str, reason: str) -> TaskError:
    return TaskError(f"{label}: output failed verification: {reason}", permanent=True)


def _decode_all(
    container: av.container.InputContainer,
    label: str,
    check_cancelled: Callable[[], None] | None,
) -> tuple[float, int | None]:
    """Decode every packet of the first video and audio streams.

    Returns the decoded span and the video's display rotation (None without video frames).
    The span runs from the earliest frame start to the latest frame end over both streams,
    so a cut-off stream shows up as a short span.
    """
    import av  # noqa: PLC0415

    start: float | None = None
    end = 0.0
    rotation: int | None = None
    streams = [*container.streams.video[:1], *container.streams.audio[:1]]
    for stream in streams:
        ctx = stream.codec_context
        ctx.options = dict(VIDEO_DECODE_OPTIONS if stream.type == "video" else DECODE_OPTIONS)
        # One thread: FFmpeg's decoder threads weaken the check (see the module's docstring).
        ctx.thread_count = 1
    try:
        for count, packet in enumerate(container.demux(streams)):
            if check_cancelled is not None and count % CANCEL_EVERY == 0:
                check_cancelled()
            for frame in packet.decode():
                if not isinstance(frame, av.VideoFrame | av.AudioFrame):
                    continue
                if frame.pts is None or frame.time_base is None:
                    continue
                begin = float(frame.pts * frame.time_base)
                if frame.is_corrupt:
                    # The decoder met damage and concealed it (in this frame or in one it
                    # predicts from): the bitstream is not what the encoder wrote.
                    kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
                    raise _failed(
                        label,
                        f"decode error: the {kind} frame at {begin:.3f} s is corrupt"
                        " (damaged data the decoder concealed)",
                    )
                if rotation is None and isinstance(frame, av.VideoFrame):
                    # FFmpeg reports counter-clockwise degrees in -180..180.
                    rotation = round(frame.rotation) % 360
                length = _frame_length(frame, packet)
                start = begin if start is None else min(start, begin)
                end = max(end, begin + length)
    except av.FFmpegError as exc:
        raise _failed(label, f"decode error: {exc.strerror or exc}") from exc
    return end - (start or 0.0), rotation


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
