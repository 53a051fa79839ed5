"""The ``transcode`` handler: one video to an H.264 + AAC MP4 of a given height, with ffmpeg.

Parameters are a structural allowlist checked before ffmpeg starts; none reaches ffmpeg as
free text. The input is opened only as a local file of a known container format.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.context import TaskContext
from batchfarm.actors.handlers.ffmpeg import SAFE_INPUT, find_ffmpeg, is_permanent, probe
from batchfarm.actors.handlers.params import Params

#: x264 presets a task may ask for ("placebo" is left out: it only burns CPU).
PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
PARAMS = ("height", "crf", "preset", "audio_bitrate", "name")
_BITRATE = re.compile(r"[1-9][0-9]{1,2}k")
_BITRATE_RANGE = (16, 512)


def transcode(ctx: TaskContext) -> dict[str, Any]:
    """Transcode ``ctx.inputs[0]`` to ``output_dir/<name>``: H.264 (libx264) and AAC in MP4.

    Params: ``height`` (even, 16 to 4320, default 720; the width keeps the aspect ratio),
    ``crf`` (0 to 51, default 23), ``preset`` (an x264 preset, default "veryfast"),
    ``audio_bitrate`` ("16k" to "512k", default "128k") and ``name`` (a plain file name ending
    in .mp4, default "out.mp4"). Returns ``{"height", "width", "duration_s", "bytes"}`` of the
    output. A bad parameter or an unreadable input fails the task permanently.
    """
    options, name = _options(ctx)
    if len(ctx.inputs) != 1:
        raise TaskError(
            f"transcode: the task has {len(ctx.inputs)} inputs, expected exactly 1",
            permanent=True,
        )
    ctx.check_cancelled()
    ffmpeg = find_ffmpeg(ctx.media)
    source = probe(ctx, ffmpeg, ctx.inputs[0])
    if source.video_codec is None:
        what = ctx.task.inputs[0] if ctx.task.inputs else ctx.inputs[0].name
        raise TaskError(f"transcode: input {what} has no video stream", permanent=True)

    work = ctx.scratch / name
    argv = transcode_argv(ffmpeg, ctx.inputs[0], work, options, ctx.threads)
    ctx.run_tool(
        argv, on_stdout_line=_progress_reader(ctx, source.duration_s), permanent_if=is_permanent
    )
    ctx.progress(1.0)
    out = probe(ctx, ffmpeg, work)
    # Written in scratch and moved at the end, so a failed run leaves no partial output.
    target = ctx.output_dir / name
    shutil.move(work, target)
    return {
        "height": out.height if out.height is not None else options.height,
        "width": out.width,
        "duration_s": out.duration_s,
        "bytes": target.stat().st_size,
    }


@dataclass(frozen=True)
class TranscodeOptions:
    """The output a transcode makes: its height and its encoders' settings.

    The handler builds one from checked task parameters; the fields are not checked again.
    """

    height: int = 720
    crf: int = 23
    preset: str = "veryfast"
    audio_bitrate: str = "128k"

    def encoder_args(self) -> list[str]:
        """The output options that select and tune the video and audio encoders."""
        return [
            *("-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf)),
            *("-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", self.audio_bitrate),
        ]


def transcode_argv(
    ffmpeg: str, source: Path, output: Path, options: TranscodeOptions, threads: int
) -> list[str]:
    """The ffmpeg command the ``transcode`` handler runs: ``source`` to the MP4 ``output``.

    ``threads`` limits decoding, filtering and encoding. Progress goes to stdout as
    ``-progress`` key=value lines. Benchmarks run this same command outside the grid.
    """
    count = str(threads)
    return [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-y",
        "-threads",
        count,
        "-filter_threads",
        count,
        *SAFE_INPUT,
        "-i",
        str(source),
        "-map",
        "0:v:0",
        "-map",
        "0:a:0?",
        "-vf",
        f"scale=-2:{options.height}",
        *options.encoder_args(),
        # As an output option it limits the encoder (x264 then also runs one lookahead thread).
        "-threads",
        count,
        "-movflags",
        "+faststart",
        "-progress",
        "pipe:1",
        "-nostats",
        "-f",
        "mp4",
        str(output),
    ]


def _options(ctx: TaskContext) -> tuple[TranscodeOptions, str]:
    """Check every parameter; return the output's options and its file name."""
    params = Params("transcode", ctx.params, PARAMS)
    height = params.integer("height", 720, 16, 4320)
    if height % 2:
        raise params.error("height", height, "an even integer from 16 to 4320")
    crf = params.integer("crf", 23, 0, 51)
    preset = params.choice("preset", "veryfast", PRESETS)
    low, high = _BITRATE_RANGE
    expected = f'a bitrate from "{low}k" to "{high}k"'
    bitrate = params.match("audio_bitrate", "128k", _BITRATE, expected)
    if not low <= int(bitrate[:-1]) <= high:
        raise params.error("audio_bitrate", bitrate, expected)
    name = params.file_name("name", "out.mp4", suffix=".mp4")
    return TranscodeOptions(height=height, crf=crf, preset=preset, audio_bitrate=bitrate), name


def _progress_reader(ctx: TaskContext, duration_s: float | None) -> Callable[[str], None]:
    """A stdout-line callback turning ffmpeg ``-progress`` lines into ``ctx.progress`` calls."""

    def on_line(line: str) -> None:
        key, _, value = line.partition("=")
        if key == "out_time_us" and duration_s and value.strip().lstrip("-").isdigit():
            ctx.progress(min(1.0, max(0.0, int(value) / 1e6 / duration_s)))
        elif key == "progress" and value.strip() == "end":
            ctx.progress(1.0)

    return on_line


@dataclass(frozen=True)
class _Submitted:
    """All that ``_options`` reads of a context: a task's params, before there is a task."""

    params: dict[str, Any]


def check_params(params: dict[str, Any]) -> None:
    """Check ``transcode`` params as a job is submitted, without a task or ffmpeg.

    Raises the permanent :class:`TaskError` the task itself would raise.
    """
    submitted: Any = _Submitted(params)  # duck-typed: _options reads only ``.params``
    _options(submitted)
