"""The ``transcode`` handler: one input to a verified MP4, from a preset and checked params.

The output is H.264, HEVC or AV1 with AAC, or AAC alone (.m4a).

Parameters are a structural allowlist checked before ffmpeg starts; none reaches ffmpeg as
free text. The input is read with PyAV first (facts and limits), then opened by ffmpeg only
as a local file of the container format PyAV found; the output is decoded in full and
checked against what was asked.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.context import TaskContext
from batchfarm.actors.handlers.ffmpeg import (
    SAFE_INPUT,
    find_ffmpeg,
    has_encoder,
    is_permanent,
    limits_for,
)
from batchfarm.actors.handlers.mediainfo import MediaInfo, check_limits, read_info
from batchfarm.actors.handlers.params import Params
from batchfarm.actors.handlers.presets import (
    BUILTIN,
    DEFAULT_SPEED,
    ENCODERS,
    check_options,
    preset_names,
    preset_table,
)
from batchfarm.actors.handlers.verify import verify_output
from batchfarm.actors.settings import MediaSettings
from batchfarm.actors.settings.model import SPEEDS, PresetSettings

#: x264 presets a task may ask for as ``preset`` ("placebo" is left out: it only burns CPU).
PRESETS = SPEEDS
#: The preset a task gets when it names none, or names only an x264 speed.
DEFAULT_PRESET = "h264-720p"
PARAMS = (
    "preset",
    "height",
    "crf",
    "speed",
    "video_bitrate",
    "audio_bitrate",
    "name",
    "options",
)
_BITRATE = re.compile(r"[1-9][0-9]{1,2}k")
_BITRATE_RANGE = (16, 512)
_VIDEO_BITRATE = re.compile(r"[1-9][0-9]{1,5}k")
_PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def transcode(ctx: TaskContext) -> dict[str, Any]:
    """Transcode ``ctx.inputs[0]`` to ``output_dir/<name>`` and verify the output.

    Params: ``preset`` (a named preset such as "h264-720p", "hevc-1080p", "av1-480p", "aac"
    or one from ``[media.presets]``; or an x264 speed such as "veryfast", meaning H.264 at
    that speed), ``height``, ``crf``, ``speed``, ``video_bitrate`` and ``audio_bitrate``
    (each overriding the preset), ``name`` (a plain file name ending in .mp4, or .m4a for
    audio only) and ``options`` (allowlisted ffmpeg output options as a list of strings).
    Returns the verified output's ``height``, ``width``, ``duration_s``, ``bytes``,
    ``video_codec`` and ``audio_codec``. A bad parameter, an unreadable or over-limit input,
    or an output that fails verification fails the task permanently.
    """
    options, name = resolve_options("transcode", ctx.params, ctx.media)
    if len(ctx.inputs) != 1:
        raise TaskError(
            f"transcode: the task has {len(ctx.inputs)} inputs, expected exactly 1",
            permanent=True,
        )
    ctx.check_cancelled()
    label = ctx.task.inputs[0] if ctx.task.inputs else ctx.inputs[0].name
    # Written in scratch and moved at the end, so a failed run leaves no partial output.
    work = ctx.scratch / name
    out = run_transcode(ctx, ctx.inputs[0], work, options, label=f"input {label}")
    target = ctx.output_dir / name
    shutil.move(work, target)
    return {
        "height": out.video.height if out.video else None,
        "width": out.video.width if out.video else None,
        "duration_s": out.duration_s,
        "bytes": target.stat().st_size,
        "video_codec": out.video.codec if out.video else None,
        "audio_codec": out.audio.codec if out.audio else None,
    }


@dataclass(frozen=True)
class TranscodeOptions:
    """The output a transcode makes. Built from checked parameters; not checked again.

    ``preset`` is the encoder's speed preset (x264/x265 name, SVT-AV1 number); ``height``
    None keeps the input's (rounded down to even); ``video_codec`` None makes audio only,
    ``audio_codec`` None drops the audio; ``extra`` are allowlisted output options.
    """

    height: int | None = 720
    crf: int = 23
    preset: str = "veryfast"
    audio_bitrate: str = "128k"
    video_codec: str | None = "h264"
    audio_codec: str | None = "aac"
    video_bitrate: str | None = None
    extra: tuple[str, ...] = ()

    @classmethod
    def from_preset(cls, preset: PresetSettings, extra: tuple[str, ...] = ()) -> TranscodeOptions:
        """The options of a named preset."""
        codec = None if preset.video_codec == "none" else preset.video_codec
        return cls(
            height=preset.height or None,
            crf=preset.crf,
            preset=preset.speed or DEFAULT_SPEED[codec or "h264"],
            audio_bitrate=preset.audio_bitrate,
            video_codec=codec,
            audio_codec=None if preset.audio_codec == "none" else preset.audio_codec,
            video_bitrate=preset.video_bitrate or None,
            extra=extra,
        )

    def encoder_args(self, threads: int | None = None) -> list[str]:
        """The output options that select and tune the video and audio encoders.

        ``threads`` also limits the encoders that keep thread pools of their own (x265's
        pools, SVT-AV1's level of parallelism), which ``-threads`` alone does not.
        """
        args: list[str] = []
        if self.video_codec is None:
            args.append("-vn")
        else:
            args += ["-c:v", ENCODERS[self.video_codec], "-preset", self.preset]
            args += ["-crf", str(self.crf), "-pix_fmt", "yuv420p"]
            if self.video_codec == "hevc":
                # hvc1 is the tag Apple players need; x265 otherwise logs every frame's stats.
                x265 = "log-level=error" + (f":pools={threads}" if threads else "")
                args += ["-tag:v", "hvc1", "-x265-params", x265]
            if self.video_codec == "av1" and threads:
                args += ["-svtav1-params", f"lp={threads}"]
            if self.video_bitrate:
                cap = int(self.video_bitrate[:-1])
                args += ["-maxrate", self.video_bitrate, "-bufsize", f"{2 * cap}k"]
        if self.audio_codec is None:
            args.append("-an")
        else:
            args += ["-c:a", self.audio_codec, "-b:a", self.audio_bitrate]
        return [*args, *self.extra]

    def scale_filter(self) -> str:
        """The video filter: to ``height`` keeping the aspect ratio, else the input's, even.

        4:2:0 needs even sides. Rotation is applied before it (ffmpeg autorotates).
        """
        if self.height is None:
            return "scale=trunc(iw/2)*2:trunc(ih/2)*2"
        return f"scale=-2:{self.height}"


def transcode_argv(
    ffmpeg: str,
    source: Path,
    output: Path,
    options: TranscodeOptions,
    threads: int,
    *,
    start_s: float | None = None,
    duration_s: float | None = None,
    input_format: str | None = None,
    max_pixels: int | None = None,
    max_duration_s: float | None = None,
) -> list[str]:
    """The ffmpeg command the ``transcode`` handler runs: ``source`` to the MP4 ``output``.

    ``threads`` limits decoding, filtering and encoding. ``start_s`` / ``duration_s`` cut a
    segment (input seek, then exact cut on re-encode). ``input_format`` pins the demuxer
    (from the probe); ``max_pixels`` is the decoders' frame-size limit; ``max_duration_s``
    cuts an output that would run longer than that (a container may understate its length,
    not the packets it holds) when no ``duration_s`` is given. Progress goes to
    stdout as ``-progress`` key=value lines. Benchmarks run this same command outside the grid.
    """
    count = str(threads)
    head = [ffmpeg, "-nostdin", "-hide_banner", "-y", "-threads", count]
    head += ["-filter_threads", count, *SAFE_INPUT]
    if max_pixels is not None:
        head += ["-max_pixels", str(max_pixels)]
    if input_format is not None:
        head += ["-f", input_format]
    if start_s:
        head += ["-ss", f"{start_s:.6f}"]
    head += ["-i", str(source)]
    maps: list[str] = []
    if options.video_codec is not None:
        maps += ["-map", "0:v:0", "-vf", options.scale_filter()]
    if options.audio_codec is not None:
        maps += ["-map", "0:a:0" if options.video_codec is None else "0:a:0?"]
    cut = duration_s if duration_s is not None else max_duration_s
    tail = [] if cut is None else ["-t", f"{cut:.6f}"]
    return [
        *head,
        *maps,
        *options.encoder_args(threads),
        # As an output option it limits the encoder (x264 then also runs one lookahead thread).
        *("-threads", count),
        *tail,
        *("-movflags", "+faststart"),
        *("-progress", "pipe:1", "-nostats"),
        *("-f", "mp4", str(output)),
    ]


def run_transcode(
    ctx: TaskContext,
    source: Path,
    output: Path,
    options: TranscodeOptions,
    *,
    label: str,
    start_s: float | None = None,
    duration_s: float | None = None,
    info: MediaInfo | None = None,
) -> MediaInfo:
    """Probe ``source`` (unless ``info`` is given), transcode it to ``output``, verify it.

    ``label`` names the input in errors ("input raw/a.mp4"). ffmpeg runs hardened (local file
    of the probed format only, pixel limit) under the ``[media]`` OS limits, reporting its
    progress to ``ctx.progress``. The output is decoded in full and must last as long as the
    input (or the segment ``start_s`` + ``duration_s``) and have the streams asked for.
    Returns the output's facts.
    """
    media = ctx.media
    if info is None:
        info = read_info(source, label, max_pixels=media.max_pixels)
    check_limits(info, media, label)
    _check_streams(info, options, label)
    ffmpeg = find_ffmpeg(media)
    if options.video_codec is not None and not has_encoder(ffmpeg, ENCODERS[options.video_codec]):
        raise TaskError(
            f"transcode: this ffmpeg ({ffmpeg}) has no {ENCODERS[options.video_codec]} encoder"
            f" for {options.video_codec}",
            permanent=True,
        )
    expected = _expected_duration(info, options, start_s, duration_s)
    argv = transcode_argv(
        ffmpeg,
        source,
        output,
        options,
        ctx.threads,
        start_s=start_s,
        duration_s=duration_s,
        input_format=info.container.split(",")[0],
        max_pixels=media.max_pixels,
        max_duration_s=media.max_duration,
    )
    ctx.run_tool(
        argv,
        on_stdout_line=progress_reader(ctx.progress, expected),
        permanent_if=is_permanent,
        limits=limits_for(media),
    )
    ctx.progress(1.0)
    height = options.height
    if options.video_codec is not None and height is None and info.video is not None:
        height = info.video.display_size[1] // 2 * 2
    return verify_output(
        output,
        label=f"{label}: {output.name}",
        duration_s=expected,
        video_codec=options.video_codec,
        height=height if options.video_codec is not None else None,
        audio_codec=options.audio_codec if info.has_audio else None,
        want_video=options.video_codec is not None,
        want_audio=options.audio_codec is not None and info.has_audio,
        check_cancelled=ctx.check_cancelled,
    )


def _check_streams(info: MediaInfo, options: TranscodeOptions, label: str) -> None:
    if options.video_codec is not None and info.video is None:
        raise TaskError(
            f"transcode: {label} has no video stream; expected video for a"
            f" {options.video_codec} output (an audio-only preset such as aac takes audio)",
            permanent=True,
        )
    if options.video_codec is None and info.audio is None:
        raise TaskError(
            f"transcode: {label} has no audio stream; expected audio for an audio-only output",
            permanent=True,
        )


def _expected_duration(
    info: MediaInfo, options: TranscodeOptions, start_s: float | None, duration_s: float | None
) -> float | None:
    """How long the output must last: the segment asked for, or what is left of the input.

    An output that keeps one stream of two lasts as long as that stream: a file's audio
    often runs on past its video.
    """
    total = info.duration_s
    kept = None
    if options.video_codec is None and info.audio is not None:
        kept = info.audio.duration_s
    elif (options.audio_codec is None or info.audio is None) and info.video is not None:
        kept = info.video.duration_s
    total = kept if kept is not None else total
    start = start_s or 0.0
    if duration_s is not None:
        return duration_s if total is None else max(0.0, min(duration_s, total - start))
    return None if total is None else max(0.0, total - start)


def resolve_options(
    handler: str,
    params: Mapping[str, Any],
    media: MediaSettings | None,
    allowed: Collection[str] = PARAMS,
) -> tuple[TranscodeOptions, str]:
    """Check every parameter; return the output's options and its file name.

    ``media`` None is the submit-time check: the workers' ``[media.presets]`` are not known
    there, so a well-formed preset name that is not built in passes (the worker checks it)
    and its overrides are checked against the widest ranges (it may be an AV1 preset).
    """
    checked = Params(handler, params, allowed)
    table = _preset(checked, media)
    overrides = _overrides(checked, table.get("video_codec", "h264") if table else "any")
    extra = check_options(handler, params["options"]) if "options" in checked else ()
    if table is None:  # a worker's own preset, checked at submit time: nothing more to know
        return TranscodeOptions(extra=extra), _output_name(checked, audio_only=None)
    try:
        preset = PresetSettings(**{**table, **overrides})
    except ValueError as exc:
        raise checked.error("preset", params.get("preset", DEFAULT_PRESET), str(exc)) from None
    options = TranscodeOptions.from_preset(preset, extra)
    return options, _output_name(checked, audio_only=options.video_codec is None)


def _overrides(checked: Params, codec: str) -> dict[str, Any]:
    """The task's own values over its preset's, each checked (``codec`` "any": unknown)."""
    out: dict[str, Any] = {}
    if "height" in checked:
        height = checked.integer("height", 720, 16, 4320)
        if height % 2:
            raise checked.error("height", height, "an even integer from 16 to 4320")
        out["height"] = height
    if "crf" in checked:
        out["crf"] = checked.integer("crf", 23, 0, 63 if codec in ("av1", "any") else 51)
    if "speed" in checked:
        speeds = [*SPEEDS] if codec != "av1" else []
        speeds += [str(n) for n in range(14)] if codec in ("av1", "any") else []
        out["speed"] = checked.choice("speed", "", speeds)
    if "audio_bitrate" in checked:
        low, high = _BITRATE_RANGE
        expected = f'a bitrate from "{low}k" to "{high}k"'
        bitrate = checked.match("audio_bitrate", "128k", _BITRATE, expected)
        if not low <= int(bitrate[:-1]) <= high:
            raise checked.error("audio_bitrate", bitrate, expected)
        out["audio_bitrate"] = bitrate
    if "video_bitrate" in checked:
        expected = 'a bit rate from "10k" to "999999k"'
        out["video_bitrate"] = checked.match("video_bitrate", "", _VIDEO_BITRATE, expected)
    return out


def _output_name(checked: Params, audio_only: bool | None) -> str:
    """Param ``name``: an .mp4, or for audio only (or not yet known) an .m4a or .mp4."""
    if audio_only is False:
        return checked.file_name("name", "out.mp4", suffix=".mp4")
    name = checked.file_name("name", "out.m4a" if audio_only else "out.mp4")
    if not name.endswith((".m4a", ".mp4")) or name in (".m4a", ".mp4"):
        raise checked.error("name", name, "a plain file name ending in .m4a or .mp4")
    return name


def _preset(checked: Params, media: MediaSettings | None) -> dict[str, Any] | None:
    """The table of the preset the task names (an x264 speed means H.264 at 720p).

    None at submit time (``media`` None) for a name that may be a worker's own preset.
    """
    value = checked.params.get("preset", DEFAULT_PRESET)
    if isinstance(value, str) and value in SPEEDS:
        return {**BUILTIN[DEFAULT_PRESET], "speed": value}
    names = preset_names(media or MediaSettings())
    expected = f"one of the presets {', '.join(names)}, or an x264 speed: {', '.join(SPEEDS)}"
    if not isinstance(value, str) or not _PRESET_NAME.fullmatch(value):
        raise checked.error("preset", value, expected)
    table = preset_table(value, media or MediaSettings())
    if table is None:
        if media is None:
            return None
        raise checked.error("preset", value, expected)
    return table


def progress_reader(
    report: Callable[[float], None], duration_s: float | None
) -> Callable[[str], None]:
    """A stdout-line callback turning ffmpeg ``-progress`` lines into ``report(fraction)``.

    ``out_time_us`` over the expected duration; ``progress=end`` is 1.
    """

    def on_line(line: str) -> None:
        key, _, value = line.partition("=")
        if key == "out_time_us" and duration_s and value.strip().lstrip("-").isdigit():
            report(min(1.0, max(0.0, int(value) / 1e6 / duration_s)))
        elif key == "progress" and value.strip() == "end":
            report(1.0)

    return on_line


def check_params(params: dict[str, Any]) -> None:
    """Check ``transcode`` params as a job is submitted, without a task or ffmpeg.

    Raises the permanent :class:`TaskError` the task itself would raise.
    """
    resolve_options("transcode", params, None)
