"""The ``probe`` handler: a media file's facts as the task's result, to plan a job with.

Facts come from PyAV (see :mod:`batchfarm.actors.handlers.mediainfo`); no ffmpeg runs.
They are the task's returned metadata (carried by its completion event) and also a JSON
file among its outputs, so ``results`` fetches them and a following stage can read them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.context import TaskContext
from batchfarm.actors.handlers.mediainfo import check_limits, read_info
from batchfarm.actors.handlers.params import Params


def probe(ctx: TaskContext) -> dict[str, Any]:
    """Facts of ``ctx.inputs[0]``, the task's result.

    Container, duration, bit rate, size; the first video stream (codec, width, height,
    display size, fps, rotation, pixel format, bit rate, frames) and audio stream (codec,
    sample rate, channels, bit rate), null when missing; ``has_video``, ``has_audio``; and
    ``within_limits`` (false, with ``limit_problem``, when a transcode would refuse it under
    ``[media]`` max_pixels or max_duration). The same facts are written to the output file
    ``name`` (param; default "probe.json"). A file that is not media fails the task
    permanently.
    """
    name = check_params(ctx.params)
    if len(ctx.inputs) != 1:
        raise TaskError(
            f"probe: the task has {len(ctx.inputs)} inputs, expected exactly 1", permanent=True
        )
    label = f"input {ctx.task.inputs[0] if ctx.task.inputs else ctx.inputs[0].name}"
    info = read_info(ctx.inputs[0], label, max_pixels=ctx.media.max_pixels)
    ctx.progress(1.0)
    facts = info.as_dict()
    facts["within_limits"], facts["limit_problem"] = True, None
    # A file over the limits still gets its facts: planning needs to know why it is refused.
    try:
        check_limits(info, ctx.media, label)
    except TaskError as exc:
        facts["within_limits"], facts["limit_problem"] = False, str(exc)
    text = json.dumps(facts, indent=2, sort_keys=True) + "\n"
    (ctx.output_dir / name).write_text(text, encoding="utf-8")
    return facts


def check_params(params: Mapping[str, Any]) -> str:
    """``probe``'s params, checked: the name of the JSON file it writes."""
    return Params("probe", params, ("name",)).file_name("name", "probe.json", suffix=".json")
