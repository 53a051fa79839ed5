"""What a media file holds, read with PyAV (FFmpeg's libraries in-process, no log parsing).

One open of the container and, for a video, one decoded frame (its display matrix gives the
rotation) cost a few milliseconds: far less than running ``ffmpeg -i`` and parsing its dump.
The file is opened like ffmpeg opens a task's input: local file protocol only, and only the
container formats in :data:`INPUT_FORMATS`, so a playlist dressed up as a video is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchfarm.actors.errors import TaskError
from batchfarm.actors.settings import MediaSettings

if TYPE_CHECKING:
    import av
    import av.container
    import av.stream

#: Input container formats (demuxer names) a task's input may be. Anything else, such as an
#: HLS playlist or a concat list that would make FFmpeg open other files or URLs, is refused.
INPUT_FORMATS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,flv,asf,ogg,mxf,wav,mp3,aac,flac"
)
#: Demuxer options that keep FFmpeg to the one local file it is given.
OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": INPUT_FORMATS}


@dataclass(frozen=True)
class VideoInfo:
    """The first video stream."""

    codec: str
    width: int
    height: int
    #: Average frames per second (None when the container does not say).
    fps: float | None
    #: Display rotation in degrees counter-clockwise (0, 90, 180 or 270).
    rotation: int
    pix_fmt: str | None
    bit_rate: int | None
    #: Frame count from the container's index, when it has one.
    frames: int | None
    #: The stream's own duration, when the container says (it may differ from the file's).
    duration_s: float | None = None

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height as shown, after the rotation."""
        if self.rotation % 180:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class AudioInfo:
    """The first audio stream."""

    codec: str
    sample_rate: int | None
    channels: int | None
    bit_rate: int | None
    #: The stream's own duration, when the container says.
    duration_s: float | None = None


@dataclass(frozen=True)
class MediaInfo:
    """Container and first video and audio stream facts of one media file."""

    #: The demuxer's name, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm".
    container: str
    duration_s: float | None
    bit_rate: int | None
    size_bytes: int
    video: VideoInfo | None
    audio: AudioInfo | None

    @property
    def has_video(self) -> bool:
        """True when the file has a video stream."""
        return self.video is not None

    @property
    def has_audio(self) -> bool:
        """True when the file has an audio stream."""
        return self.audio is not None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able facts: what the ``probe`` handler returns."""
        out = asdict(self)
        out["has_video"] = self.has_video
        out["has_audio"] = self.has_audio
        if self.video is not None:
            out["video"]["display_width"], out["video"]["display_height"] = self.video.display_size
        return out


def read_info(path: Path, label: str | None = None, *, max_pixels: int = 2**25) -> MediaInfo:
    """Read the facts of the local media file ``path``.

    ``label`` names the file in errors (the task's input key); default its file name. The
    first video frame is decoded (for its rotation) only if it has at most ``max_pixels``
    pixels: a huge frame is refused by :func:`check_limits` before anything decodes it. An
    empty file, a file that is not media (or is a format not on the whitelist, such as a
    playlist), or one whose header is cut off raises a permanent :class:`TaskError`.
    """
    name = label or path.name
    container, size = open_media(path, name)
    # Imported here: only media tasks need PyAV, and a worker starts faster without it.
    import av  # noqa: PLC0415

    with container:
        try:
            return media_facts(container, size, max_pixels=max_pixels)
        except av.FFmpegError as exc:
            raise _not_media(name, exc) from exc


def open_media(path: Path, label: str) -> tuple[av.container.InputContainer, int]:
    """Open the local media file ``path`` as ffmpeg opens a task's input; return it and its size.

    Local file protocol and the :data:`INPUT_FORMATS` demuxers only. The caller closes the
    container. An unreadable or empty file, or one that is not media of those formats (its
    header cut off, say), raises a permanent :class:`TaskError` naming ``label``.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise TaskError(f"{label}: cannot read it ({exc.strerror})", permanent=True) from exc
    if size == 0:
        raise TaskError(f"{label}: the file is empty, expected a media file", permanent=True)
    import av  # noqa: PLC0415

    try:
        return av.open(str(path), options=dict(OPEN_OPTIONS)), size
    except av.FFmpegError as exc:
        raise _not_media(label, exc) from exc


def _not_media(label: str, exc: av.FFmpegError) -> TaskError:
    return TaskError(
        f"{label}: not a media file batchfarm reads ({_reason(exc)}); expected audio or"
        f" video in one of: {INPUT_FORMATS}",
        permanent=True,
    )


def check_limits(info: MediaInfo, media: MediaSettings, label: str) -> None:
    """Refuse an input above ``[media] max_pixels`` or ``max_duration`` (permanently)."""
    if info.video is not None:
        pixels = info.video.width * info.video.height
        if pixels > media.max_pixels:
            raise TaskError(
                f"{label}: {info.video.width}x{info.video.height} is {pixels} pixels a frame,"
                f" above [media] max_pixels = {media.max_pixels}",
                permanent=True,
            )
    if info.duration_s is not None and info.duration_s > media.max_duration:
        raise TaskError(
            f"{label}: {info.duration_s:.1f} s long, above [media] max_duration ="
            f" {media.max_duration:g} s",
            permanent=True,
        )
    if info.video is None and info.audio is None:
        raise TaskError(f"{label}: has neither video nor audio", permanent=True)


def media_facts(container: av.container.InputContainer, size: int, *, max_pixels: int) -> MediaInfo:
    """The facts of an open container of ``size`` bytes, from its headers.

    The display rotation needs the first video frame: it is decoded only if a frame has at
    most ``max_pixels`` pixels, else the rotation reads 0 (``max_pixels=0``: never decode,
    for a caller that decodes the frames itself and reads the rotation there).
    """
    video = audio = None
    if container.streams.video:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate: Fraction | None = stream.average_rate or stream.guessed_rate
        video = VideoInfo(
            codec=ctx.codec.canonical_name,
            width=ctx.width,
            height=ctx.height,
            fps=round(float(rate), 3) if rate else None,
            rotation=(
                _rotation(container, stream.index) if ctx.width * ctx.height <= max_pixels else 0
            ),
            pix_fmt=ctx.pix_fmt,
            bit_rate=stream.bit_rate or None,
            frames=stream.frames or None,
            duration_s=_stream_duration(stream),
        )
    if container.streams.audio:
        sound = container.streams.audio[0]
        audio = AudioInfo(
            codec=sound.codec_context.codec.canonical_name,
            sample_rate=sound.sample_rate or None,
            channels=sound.channels or None,
            bit_rate=sound.bit_rate or None,
            duration_s=_stream_duration(sound),
        )
    duration = container.duration / 1e6 if container.duration is not None else None
    return MediaInfo(
        container=container.format.name,
        duration_s=round(duration, 6) if duration is not None else None,
        bit_rate=container.bit_rate or None,
        size_bytes=size,
        video=video,
        audio=audio,
    )


def _stream_duration(stream: av.stream.Stream) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return round(float(stream.duration * stream.time_base), 6)


def _rotation(container: av.container.InputContainer, index: int) -> int:
    """The display rotation of video stream ``index``, from its first decoded frame.

    PyAV exposes the display matrix on frames, not streams. A file whose first frame will
    not decode says 0 here; the transcode itself then fails with ffmpeg's own error.
    """
    import av  # noqa: PLC0415

    try:
        frame = next(container.decode(video=index))
    except (av.FFmpegError, StopIteration):
        return 0
    # FFmpeg reports counter-clockwise degrees in -180..180.
    return round(frame.rotation) % 360


def _reason(exc: av.FFmpegError) -> str:
    # PyAV's message ends with the path: the label already names the file.
    return str(exc.strerror or exc).rstrip(".")
