"""ffmpeg for media handlers: which binary, how many threads, and what a file holds.

There may be no ffprobe (the ffmpeg that imageio-ffmpeg ships comes alone), so a file is
probed with ``ffmpeg -i <file>`` and no output, and the stream dump on stderr is parsed.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from batchfarm.actors.errors import TaskError
from batchfarm.actors.settings import MediaSettings

if TYPE_CHECKING:
    from batchfarm.actors.handlers.context import TaskContext

#: Input container formats ffmpeg may open (demuxer names). Anything else, such as a playlist
#: or concat list dressed up as a video that would make ffmpeg read other files, is refused.
INPUT_FORMATS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,flv,asf,ogg,mxf,wav,mp3,aac,flac"
)
#: Input options that keep ffmpeg to the one local file it is given.
SAFE_INPUT = ("-protocol_whitelist", "file,pipe", "-format_whitelist", INPUT_FORMATS)

#: stderr phrases of failures no retry can fix: the input, or a parameter, is bad.
PERMANENT_MARKERS = (
    "Invalid data found when processing input",
    "moov atom not found",
    "does not contain any stream",
    "Invalid argument",
    "not on whitelist",
    "Unsafe file name",
    "Invalid frame dimensions",
    "Stream map '0:v:0' matches no streams",
)

# The last line of `ffmpeg -i <file>` given no output: the probe itself went well.
_EXPECTED = 'expected the path of an executable ffmpeg, or "" to find one'
_NO_OUTPUT = "At least one output file must be specified"
_DURATION = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\d+:\d+\S*: Video: (\w+).*?, (\d+)x(\d+)[ ,\n]")
_AUDIO = re.compile(r"Stream #\d+:\d+\S*: Audio: (\w+)")


def find_ffmpeg(media: MediaSettings) -> str:
    """The ffmpeg to run: ``[media] ffmpeg`` if set, else ffmpeg on PATH, else imageio-ffmpeg's.

    A configured path that is missing or not executable is a permanent :class:`TaskError`
    naming ``[media] ffmpeg`` and the path: it is not silently replaced by another ffmpeg.
    """
    if media.ffmpeg:
        path = Path(media.ffmpeg)
        if not path.is_file():
            raise TaskError(
                f"[media] ffmpeg = {media.ffmpeg!r}: no such file; {_EXPECTED}", permanent=True
            )
        if not os.access(path, os.X_OK):
            raise TaskError(
                f"[media] ffmpeg = {media.ffmpeg!r}: not executable; {_EXPECTED}", permanent=True
            )
        return str(path)
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        # Imported here: only media tasks need it, and only when there is no system ffmpeg.
        import imageio_ffmpeg  # type: ignore[import-untyped]  # noqa: PLC0415

        exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise TaskError(
            f'[media] ffmpeg = "": no ffmpeg on PATH and none from imageio-ffmpeg ({exc});'
            " expected [media] ffmpeg to name one",
            permanent=True,
        ) from exc
    return exe


def threads_for(media: MediaSettings, pinned: bool, workers: int, cores: int) -> int:
    """Threads each ffmpeg may use, from ``[media] threads``.

    "auto" means one for a pinned worker (its core is its own), else an even share of the
    cores; a number is used as it is.
    """
    if workers < 1 or cores < 1:
        raise ValueError(f"workers = {workers}, cores = {cores}: expected at least 1 of each")
    if media.threads == "auto":
        return 1 if pinned else max(1, cores // workers)
    return media.threads


def is_permanent(stderr_tail: str) -> bool:
    """True when ffmpeg's stderr says the input or the parameters are bad, not the machine."""
    return any(marker in stderr_tail for marker in PERMANENT_MARKERS)


@dataclass(frozen=True)
class Probe:
    """What ``ffmpeg -i`` says about a file (None where it says nothing)."""

    duration_s: float | None
    video_codec: str | None
    width: int | None
    height: int | None
    audio_codec: str | None


def parse_probe(stderr: str) -> Probe:
    """Read duration and the first video and audio streams from ffmpeg's input dump."""
    duration = _DURATION.search(stderr)
    video = _VIDEO.search(stderr + "\n")
    audio = _AUDIO.search(stderr)
    return Probe(
        duration_s=(
            int(duration[1]) * 3600 + int(duration[2]) * 60 + float(duration[3])
            if duration
            else None
        ),
        video_codec=video[1] if video else None,
        width=int(video[2]) if video else None,
        height=int(video[3]) if video else None,
        audio_codec=audio[1] if audio else None,
    )


def probe(ctx: TaskContext, ffmpeg: str, path: Path) -> Probe:
    """Probe a local media file with ``ffmpeg -i``; a file ffmpeg cannot read raises.

    ffmpeg given no output exits with code 1 after its dump; that one case is a success.
    Only the last lines of stderr are kept, so a file with a very long metadata dump may probe
    without a duration.
    """
    argv = [ffmpeg, "-nostdin", "-hide_banner", *SAFE_INPUT, "-i", str(path)]
    try:
        result = ctx.run_tool(argv, permanent_if=is_permanent)
    except TaskError as exc:
        lines = exc.stderr_tail.strip().splitlines()
        if not lines or lines[-1].strip() != _NO_OUTPUT:
            raise
        return parse_probe(exc.stderr_tail)
    return parse_probe(result.stderr_tail)
