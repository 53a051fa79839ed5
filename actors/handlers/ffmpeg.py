"""ffmpeg for media handlers: which binary, its encoders, its threads and its limits.

ffmpeg runs as a subprocess (killable, limited by the OS); what a file holds is read with
PyAV (:mod:`batchfarm.actors.handlers.mediainfo`), never parsed from ffmpeg's log.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.mediainfo import INPUT_FORMATS
from batchfarm.actors.handlers.tool import Limits
from batchfarm.actors.settings import MediaSettings

#: Input options that keep ffmpeg to the one local file it is given: no network protocol
#: (pipe is for -progress), and only the container formats a task's input may be.
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

_EXPECTED = 'expected the path of an executable ffmpeg, or "" to find one'
#: How long listing an ffmpeg's encoders may take, in seconds.
_LIST_TIMEOUT_S = 30


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


def has_encoder(ffmpeg: str, name: str) -> bool:
    """True when this ffmpeg build has the encoder ``name`` (e.g. "libsvtav1")."""
    return name in encoders(ffmpeg)


@functools.cache
def encoders(ffmpeg: str) -> frozenset[str]:
    """The encoder names of an ffmpeg build, from ``ffmpeg -encoders``; asked once per path."""
    try:
        done = subprocess.run(
            [ffmpeg, "-nostdin", "-hide_banner", "-encoders"],
            capture_output=True,
            text=True,
            check=False,
            timeout=_LIST_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TaskError(f"{ffmpeg} -encoders failed: {exc}") from exc
    names = set()
    listing = done.stdout.split("------", 1)[-1]
    for line in listing.splitlines():
        # " V....D libx264    libx264 H.264 ...": flags, then the name.
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6:
            names.add(parts[1])
    return frozenset(names)


def limits_for(media: MediaSettings) -> Limits:
    """The OS limits on one ffmpeg, from ``[media] cpu_time``, ``memory_bytes``, ``output_bytes``.

    0 means no limit. ffmpeg's own ``-fs`` is only a soft cap checked between packets; these
    are enforced by the kernel.
    """
    return Limits(
        cpu_s=media.cpu_time or None,
        memory_bytes=media.memory_bytes or None,
        output_bytes=media.output_bytes or None,
    )
