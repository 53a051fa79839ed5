"""Media for tests and benchmarks: generated clips, and what ffmpeg says about a file.

Clips come from ffmpeg's lavfi sources (``testsrc2`` pictures, a ``sine`` tone), encoded
with the ultrafast x264 preset, so a few seconds of video take a fraction of a second. The
ffmpeg is the one batchfarm itself would run (``[media] ffmpeg`` unset).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from batchfarm.actors.handlers.ffmpeg import Probe, find_ffmpeg, parse_probe
from batchfarm.actors.settings import MediaSettings


def ffmpeg_exe() -> str:
    """The ffmpeg batchfarm resolves with default settings."""
    return find_ffmpeg(MediaSettings())


def make_clip(  # noqa: PLR0917 - callers write make_clip(path, 1.0, 640, 360)
    path: Path | str,
    seconds: float = 2.0,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    audio: bool = True,
    video: bool = True,
) -> Path:
    """Write a test clip (H.264 video, AAC audio) to ``path`` and return the path.

    The container follows the file's suffix (.mp4, .mkv, ...). ``width`` and ``height`` must
    be even (4:2:0 H.264). ``audio=False`` or ``video=False`` leaves that stream out.
    """
    if not (audio or video):
        raise ValueError("make_clip: a clip needs audio, video or both")
    path = Path(path)
    argv = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    if video:
        source = f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}"
        argv += ["-f", "lavfi", "-i", source]
    if audio:
        argv += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    if video:
        argv += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-threads", "1"]
    if audio:
        argv += ["-c:a", "aac", "-b:a", "64k"]
    argv.append(str(path))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"making clip {path} failed ({done.returncode}): {done.stderr}")
    return path


def describe(path: Path | str) -> str:
    """ffmpeg's dump of a media file (stderr of ``ffmpeg -i``): its duration and streams."""
    done = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stderr


def probe_file(path: Path | str) -> Probe:
    """Duration, first video stream (codec, size) and first audio codec of a media file."""
    return parse_probe(describe(path))
