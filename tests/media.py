"""Media for tests and benchmarks: generated clips, and what ffmpeg says about a file.

Clips come from ffmpeg's lavfi sources (``testsrc2`` pictures, a ``sine`` tone), encoded
with the ultrafast x264 preset, so a few seconds of video take a fraction of a second. The
ffmpeg is the one batchfarm itself would run (``[media] ffmpeg`` unset).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from batchfarm.actors.handlers.ffmpeg import find_ffmpeg
from batchfarm.actors.handlers.mediainfo import MediaInfo, read_info
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
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
) -> Path:
    """Write a test clip (H.264 video, AAC audio) to ``path`` and return the path.

    The container follows the file's suffix (.mp4, .mkv, ...). ``width`` and ``height`` must
    be even for 4:2:0 H.264; ``pix_fmt="yuv444p"`` allows odd ones. ``audio=False`` or
    ``video=False`` leaves that stream out. ``rotation`` (degrees counter-clockwise) sets
    the display matrix, as a phone filming upright does.
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
        if width % 2 or height % 2:
            # testsrc2 rounds its size to even: scale to the odd size asked for.
            argv += ["-vf", f"scale={width}:{height}"]
        argv += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix_fmt, "-threads", "1"]
    if audio:
        argv += ["-c:a", "aac", "-b:a", "64k"]
    target = path.with_name(f"unrotated-{path.name}") if video and rotation else path
    argv.append(str(target))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"making clip {path} failed ({done.returncode}): {done.stderr}")
    if target != path:
        # Set on a stream copy: when encoding, ffmpeg would turn the pixels instead.
        remux = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
        remux += ["-display_rotation", str(rotation), "-i", str(target), "-c", "copy", str(path)]
        done = subprocess.run(remux, capture_output=True, text=True, check=False)
        target.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"rotating clip {path} failed ({done.returncode}): {done.stderr}")
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


def probe_file(path: Path | str) -> MediaInfo:
    """Duration, first video stream and first audio stream of a media file (read with PyAV)."""
    return read_info(Path(path))


def make_vfr_clip(
    path: Path | str, seconds: float = 2.0, width: int = 320, height: int = 240
) -> Path:
    """A variable-frame-rate MP4: frames alternately 1/25 s and 3/25 s apart (no audio)."""
    path = Path(path)
    source = f"testsrc2=size={width}x{height}:rate=25:duration={seconds}"
    argv = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    argv += ["-f", "lavfi", "-i", source]
    # Drop every 2nd and 3rd of each 4 frames and keep the timestamps: uneven gaps.
    argv += ["-vf", "select='not(between(mod(n,4),1,2))'", "-fps_mode", "vfr"]
    argv += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"making clip {path} failed ({done.returncode}): {done.stderr}")
    return path
