"""The ``thumbnail`` handler: one frame at a time or percentage, or a sprite sheet of N frames.

The input is probed first (PyAV) for its duration, so a time past the end is an error naming
it rather than an empty output. ffmpeg seeks on the input (fast), scales to the asked width
(keeping the aspect ratio, rotation applied) and, for a sheet, takes N frames evenly spread
with the ``fps`` filter and lays them out with ``tile``. The image is decoded back to check
it before the task is done.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.context import TaskContext
from batchfarm.actors.handlers.ffmpeg import SAFE_INPUT, find_ffmpeg, is_permanent, limits_for
from batchfarm.actors.handlers.mediainfo import MediaInfo, check_limits, read_info
from batchfarm.actors.handlers.params import Params

PARAMS = ("at", "count", "columns", "width", "format", "name")
#: ``at`` as a percentage of the duration: "50%", "12.5%".
_PERCENT = re.compile(r"(100|[0-9]{1,2})(\.[0-9]{1,3})?%")
_SUFFIX = {"jpeg": ".jpg", "png": ".png"}
#: Most frames a sprite sheet may hold.
MAX_COUNT = 400
#: How far before the end a time at or past it is moved, in frames: the last frame starts
#: one frame before the end.
_END_FRAMES = 1


@dataclass(frozen=True)
class ThumbnailOptions:
    """A checked thumbnail request: where (seconds or percent), how many, how big, as what."""

    at_s: float | None
    at_percent: float | None
    count: int
    columns: int
    width: int
    format: str
    name: str


def thumbnail(ctx: TaskContext) -> dict[str, Any]:
    """Write a frame (``count`` 1) or a sprite sheet (``count`` > 1) of ``ctx.inputs[0]``.

    Params: ``at`` (seconds, a number, or a percentage such as "50%"; default "10%"; for a
    sheet, ignored: frames are spread over the whole input), ``count`` (1 to 400, default 1),
    ``columns`` (of the sheet; default the square root of count, rounded up), ``width``
    (of one frame, 16 to 3840, default 320; the height keeps the aspect ratio), ``format``
    ("jpeg" or "png") and ``name`` (default "thumb.jpg" / "sprite.jpg", or .png). Returns
    ``{"name", "width", "height", "bytes", "times_s"}``; times are where frames were taken.
    """
    options = check_params(ctx.params)
    if len(ctx.inputs) != 1:
        raise TaskError(
            f"thumbnail: the task has {len(ctx.inputs)} inputs, expected exactly 1",
            permanent=True,
        )
    label = f"input {ctx.task.inputs[0] if ctx.task.inputs else ctx.inputs[0].name}"
    info = read_info(ctx.inputs[0], label, max_pixels=ctx.media.max_pixels)
    check_limits(info, ctx.media, label)
    if info.video is None:
        raise TaskError(f"thumbnail: {label} has no video stream", permanent=True)
    ffmpeg = find_ffmpeg(ctx.media)
    work = ctx.scratch / options.name
    head = [ffmpeg, "-nostdin", "-hide_banner", "-y", "-threads", str(ctx.threads), *SAFE_INPUT]
    head += ["-max_pixels", str(ctx.media.max_pixels), "-f", info.container.split(",")[0]]
    scale = f"scale={options.width}:-2" + (":out_range=pc" if options.format == "jpeg" else "")
    if options.count == 1:
        at = _seconds(options, info, label)
        times = [at]
        argv = [*head, "-ss", f"{at:.6f}", "-i", str(ctx.inputs[0]), "-vf", scale]
    else:
        duration = _duration(info, label)
        rate = Fraction(options.count / duration).limit_denominator(1_000_000)
        times = [round(i * duration / options.count, 3) for i in range(options.count)]
        rows = math.ceil(options.count / options.columns)
        graph = f"fps={rate.numerator}/{rate.denominator},{scale},tile={options.columns}x{rows}"
        argv = [*head, "-i", str(ctx.inputs[0]), "-vf", graph]
    argv += ["-map", "0:v:0", "-an", "-frames:v", "1", "-update", "1"]
    argv += ["-f", "image2", "-c:v", "mjpeg" if options.format == "jpeg" else "png", str(work)]
    ctx.run_tool(argv, permanent_if=is_permanent, limits=limits_for(ctx.media))
    width, height = _check_image(work, options, label)
    ctx.progress(1.0)
    target = ctx.output_dir / options.name
    shutil.move(work, target)
    return {
        "name": options.name,
        "width": width,
        "height": height,
        "bytes": target.stat().st_size,
        "times_s": times,
    }


def check_params(params: Mapping[str, Any]) -> ThumbnailOptions:
    """``thumbnail``'s params, checked; raises the task's permanent TaskError."""
    checked = Params("thumbnail", params, PARAMS)
    at_s = at_percent = None
    raw = params.get("at", "10%")
    if isinstance(raw, str):
        at_percent = float(checked.match("at", "10%", _PERCENT, _AT_EXPECTED)[:-1])
        if at_percent > 100:
            raise checked.error("at", raw, _AT_EXPECTED)
    else:
        at_s = checked.number("at", 0.0, 0.0, 7 * 86400.0)
    count = checked.integer("count", 1, 1, MAX_COUNT)
    columns = checked.integer("columns", math.ceil(math.sqrt(count)), 1, count)
    width = checked.integer("width", 320, 16, 3840)
    fmt = checked.choice("format", "jpeg", tuple(_SUFFIX))
    stem = "thumb" if count == 1 else "sprite"
    name = checked.file_name("name", stem + _SUFFIX[fmt], suffix=_SUFFIX[fmt])
    return ThumbnailOptions(at_s, at_percent, count, columns, width, fmt, name)


_AT_EXPECTED = 'seconds (a number >= 0) or a percentage from "0%" to "100%"'


def _duration(info: MediaInfo, label: str) -> float:
    if not info.duration_s:
        raise TaskError(f"thumbnail: {label} has no known duration", permanent=True)
    return info.duration_s


def _seconds(options: ThumbnailOptions, info: MediaInfo, label: str) -> float:
    """Where to take the one frame: within the input, the last frame at the latest."""
    duration = _duration(info, label)
    frame = 1 / info.video.fps if info.video is not None and info.video.fps else 0.04
    last = max(0.0, duration - _END_FRAMES * frame)
    if options.at_s is not None:
        if options.at_s > duration:
            raise TaskError(
                f"thumbnail: param at = {options.at_s:g}: past the end of {label}"
                f" ({duration:.3f} s long)",
                permanent=True,
            )
        return round(min(options.at_s, last), 6)
    assert options.at_percent is not None
    return round(min(duration * options.at_percent / 100, last), 6)


def _check_image(path: Path, options: ThumbnailOptions, label: str) -> tuple[int, int]:
    """Decode the written image; return its size. A missing or bad one fails the task."""
    # Imported here: only media tasks need PyAV, and a worker starts faster without it.
    import av  # noqa: PLC0415

    problem = f"thumbnail: {label}: no image was written"
    if path.is_file() and path.stat().st_size > 0:
        try:
            with av.open(str(path)) as image:
                frame = next(image.decode(video=0))
        except (av.FFmpegError, StopIteration) as exc:
            problem = f"thumbnail: {label}: the image does not decode ({exc})"
        else:
            wide = options.width * (options.columns if options.count > 1 else 1)
            if frame.width == wide:
                return frame.width, frame.height
            problem = f"thumbnail: {label}: image is {frame.width} wide, expected {wide}"
    raise TaskError(problem, permanent=True)
