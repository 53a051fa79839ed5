"""The ``ladder`` handler: one rendition of an adaptive-bitrate ladder, keyframes aligned.

A ladder job is two ordinary stages: ``ladder`` with a range over its renditions (one task
per rendition, all running in parallel), then ``hls`` in ``fan_in`` mode, which packages
every rendition as HLS under one master playlist (:mod:`~batchfarm.actors.handlers.hls`):

.. code-block:: toml

    [[stages]]
    handler = "ladder"
    params = { segment_seconds = 4 }
    range = { param = "rendition", values = [
        { height = 720, video_bitrate = "2800k" },
        { height = 360, video_bitrate = "800k", name = "low" },
        "h264-480p",                             # or a preset by name
    ] }

    [[stages]]
    handler = "hls"
    mode = "fan_in"
    params = { segment_seconds = 4 }

Every rendition is encoded with a keyframe forced at each multiple of ``segment_seconds``, so
the HLS segments of all renditions start at the same instants and a player can switch
between them at any segment boundary.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.context import TaskContext
from batchfarm.actors.handlers.mediainfo import read_info
from batchfarm.actors.handlers.params import ParamError, Params, UnknownParamError
from batchfarm.actors.handlers.transcode import TranscodeOptions, resolve_options, run_transcode

#: ``ladder``'s own params; the rest (``speed``, ``crf``, ``audio_bitrate``) apply to every
#: rendition unless the rendition sets its own.
PARAMS = ("rendition", "segment_seconds", "speed", "crf", "audio_bitrate")
#: What a rendition table may set: ``transcode``'s params, and its name.
RENDITION_KEYS = ("preset", "height", "crf", "speed", "video_bitrate", "audio_bitrate", "name")
DEFAULT_SEGMENT_S = 4.0
SEGMENT_RANGE = (1.0, 60.0)
_SHARED = ("speed", "crf", "audio_bitrate")


def ladder(ctx: TaskContext) -> dict[str, Any]:
    """Encode ``ctx.inputs[0]`` as the rendition ``rendition``, to ``<name>.mp4``.

    ``rendition`` is a preset name or a table of ``transcode`` params (``preset``,
    ``height``, ``crf``, ``speed``, ``video_bitrate``, ``audio_bitrate``) with an optional
    ``name`` (default ``<height>p``: the rendition's folder in the HLS output). A keyframe
    is forced every ``segment_seconds`` (default 4). The output is verified like any
    transcode. Returns ``{"name", "width", "height", "duration_s", "bytes", "bit_rate"}``.
    """
    options, name, segment_s = ladder_options(ctx.params, ctx.media)
    if len(ctx.inputs) != 1:
        raise TaskError(
            f"ladder: the task has {len(ctx.inputs)} inputs, expected exactly 1", permanent=True
        )
    label = ctx.task.inputs[0] if ctx.task.inputs else ctx.inputs[0].name
    info = read_info(ctx.inputs[0], label, max_pixels=ctx.media.max_pixels)
    if name is None:
        # Named by its height: the asked one, or the input's when the rendition keeps it.
        height = options.height or (info.video.display_size[1] // 2 * 2 if info.video else 0)
        name = f"{height}p"
    keyframes = ("-force_key_frames", f"expr:gte(t,n_forced*{segment_s:g})")
    options = replace(options, extra=(*keyframes, *options.extra))
    work = ctx.scratch / f"{name}.mp4"
    out = run_transcode(ctx, ctx.inputs[0], work, options, label=f"input {label}", info=info)
    target = ctx.output_dir / work.name
    shutil.move(work, target)
    duration = out.duration_s or 0.0
    return {
        "name": name,
        "width": out.video.width if out.video else None,
        "height": out.video.height if out.video else None,
        "duration_s": out.duration_s,
        "bytes": target.stat().st_size,
        "bit_rate": round(target.stat().st_size * 8 / duration) if duration else None,
    }


def ladder_options(
    params: Mapping[str, Any], media: Any = None
) -> tuple[TranscodeOptions, str | None, float]:
    """Check ``ladder``'s params: the rendition's transcode options, its name, the segment.

    ``media`` None is the submit-time check (presets of the workers' config pass unseen).
    Errors name the field inside the rendition (``rendition.height``).
    """
    checked = Params("ladder", params, PARAMS)
    low, high = SEGMENT_RANGE
    segment_s = checked.number("segment_seconds", DEFAULT_SEGMENT_S, low, high)
    if "rendition" not in checked:
        raise checked.error("rendition", None, "a preset name or a table of transcode params")
    rendition = params["rendition"]
    if isinstance(rendition, str):
        rendition = {"preset": rendition}
    if not isinstance(rendition, Mapping):
        raise checked.error("rendition", rendition, "a preset name or a table of transcode params")
    table = {key: params[key] for key in _SHARED if key in params}
    table.update(rendition)
    name = table.pop("name", None)
    if name is not None:
        name = Params("ladder", {"rendition.name": name}, ["rendition.name"]).file_name(
            "rendition.name", ""
        )
    try:
        options, _ = resolve_options("ladder", table, media, allowed=RENDITION_KEYS[:-1])
    except UnknownParamError:
        unknown = sorted(f"rendition.{key}" for key in set(table) - set(RENDITION_KEYS))
        known = [f"rendition.{key}" for key in sorted(RENDITION_KEYS)]
        raise UnknownParamError("ladder", unknown, known) from None
    except ParamError as exc:
        raise ParamError("ladder", f"rendition.{exc.name}", exc.value, exc.expected) from None
    if options.video_codec is None:
        raise checked.error("rendition", rendition, "a rendition with video (an HLS ladder)")
    return options, name, segment_s


def check_params(params: Mapping[str, Any]) -> None:
    """Check ``ladder`` params as a job is submitted, without a task or ffmpeg."""
    ladder_options(params)
