"""Named transcode presets, and the allowlist of extra ffmpeg output options a task may add.

Presets are built in (:data:`BUILTIN`) or come from ``[media.presets.NAME]`` in the config.

A preset is a :class:`~batchfarm.actors.settings.model.PresetSettings`: codec, height, CRF,
encoder speed, bit-rate cap and audio. Extra options are ``[flag, value]`` pairs, each flag
from :data:`OPTIONS` and each value checked by its own rule: never a shell string, never an
option that names a file, a protocol or a filter graph.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.ffmpeg import has_encoder
from batchfarm.actors.handlers.params import bad_param
from batchfarm.actors.settings import MediaSettings
from batchfarm.actors.settings.model import PresetSettings

#: The ffmpeg encoder for each video codec a preset may name.
ENCODERS = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1"}
#: Encoder speed when a preset gives none (x264/x265 names; SVT-AV1 numbers, 13 fastest).
DEFAULT_SPEED = {"h264": "veryfast", "hevc": "veryfast", "av1": "8"}
#: CRF when a preset gives none: about the same quality for each codec.
DEFAULT_CRF = {"h264": 23, "hevc": 28, "av1": 35}

_HEIGHTS = (1080, 720, 480)
#: The built-in presets; ``[media.presets.NAME]`` adds to them or replaces one by name.
BUILTIN: dict[str, dict[str, Any]] = {
    **{
        f"{codec}-{height}p": {"video_codec": codec, "height": height, "crf": DEFAULT_CRF[codec]}
        for codec in ENCODERS
        for height in _HEIGHTS
    },
    "aac": {"video_codec": "none", "audio_codec": "aac", "audio_bitrate": "128k"},
}


def preset_table(name: str, media: MediaSettings) -> dict[str, Any] | None:
    """The table of preset ``name`` (config first, then built in), or None if there is none."""
    table = media.presets.get(name)
    if table is None:
        table = BUILTIN.get(name)
    return dict(table) if table is not None else None


def preset_names(media: MediaSettings) -> list[str]:
    """Every preset name: built in and from the config, sorted."""
    return sorted({*BUILTIN, *media.presets})


def available_presets(media: MediaSettings, ffmpeg: str) -> dict[str, PresetSettings]:
    """The presets this ffmpeg can run (AV1 ones only if it has an AV1 encoder)."""
    out: dict[str, PresetSettings] = {}
    for name in preset_names(media):
        table = preset_table(name, media)
        assert table is not None
        preset = PresetSettings(**table)
        if preset.video_codec == "none" or has_encoder(ffmpeg, ENCODERS[preset.video_codec]):
            out[name] = preset
    return out


# -- extra output options ------------------------------------------------------------------

_BITRATE = re.compile(r"[1-9][0-9]{0,5}k")
_LEVEL = re.compile(r"[1-6](\.[0-3])?")
_RATE = re.compile(r"[1-9][0-9]{0,2}(/[1-9][0-9]{0,3}|\.[0-9]{1,3})?")
#: A keyframe every N seconds: what segment-parallel encoding and HLS need.
_KEYFRAMES = re.compile(r"expr:gte\(t,n_forced\*[0-9]{1,3}(\.[0-9]{1,3})?\)")


def _integer(low: int, high: int) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        ok = re.fullmatch(r"-?[0-9]{1,7}", value) is not None and low <= int(value) <= high
        return None if ok else f"an integer from {low} to {high}"

    return check


def _pattern(pattern: re.Pattern[str], expected: str) -> Callable[[str], str | None]:
    return lambda value: None if pattern.fullmatch(value) else expected


def _choice(*choices: str) -> Callable[[str], str | None]:
    return lambda value: None if value in choices else "one of " + ", ".join(choices)


#: Output options a task may add, each with the check of its value (None when it is good,
#: else what was expected).
OPTIONS: dict[str, Callable[[str], str | None]] = {
    "-g": _integer(1, 1000),
    "-keyint_min": _integer(1, 1000),
    "-bf": _integer(0, 16),
    "-sc_threshold": _integer(0, 100),
    "-refs": _integer(1, 16),
    "-force_key_frames": _pattern(_KEYFRAMES, 'a keyframe rule "expr:gte(t,n_forced*SECONDS)"'),
    "-maxrate": _pattern(_BITRATE, 'a bit rate such as "3000k"'),
    "-minrate": _pattern(_BITRATE, 'a bit rate such as "3000k"'),
    "-bufsize": _pattern(_BITRATE, 'a bit rate such as "6000k"'),
    "-profile:v": _choice("baseline", "main", "high", "main10"),
    "-level:v": _pattern(_LEVEL, 'a level such as "4.1"'),
    "-tune": _choice("film", "animation", "grain", "stillimage", "fastdecode", "zerolatency"),
    "-pix_fmt": _choice("yuv420p", "yuv420p10le"),
    "-r": _pattern(_RATE, 'a frame rate such as "30", "29.97" or "30000/1001"'),
    "-fps_mode": _choice("cfr", "vfr", "passthrough"),
    "-ac": _integer(1, 8),
    "-ar": _choice("22050", "24000", "32000", "44100", "48000"),
}


def check_options(handler: str, value: object) -> tuple[str, ...]:
    """Param ``options``: a list of ``flag, value`` strings, each flag allowlisted.

    Returns them as a tuple for the ffmpeg command line; raises a permanent
    :class:`TaskError` naming the option and what was expected.
    """
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise _bad(handler, value, 'a list of ffmpeg output options, e.g. ["-g", "48"]')
    items = list(value)
    if not all(isinstance(item, str) for item in items) or len(items) % 2:
        raise _bad(handler, value, "an even-length list of strings: flag, value, flag, value")
    out: list[str] = []
    seen: set[str] = set()
    for flag, item in zip(items[::2], items[1::2], strict=True):
        check = OPTIONS.get(flag)
        if check is None:
            raise _bad(handler, flag, "a flag from " + ", ".join(sorted(OPTIONS)), "options: flag")
        if flag in seen:
            raise _bad(handler, flag, "each flag once", "options: flag")
        seen.add(flag)
        problem = check(item)
        if problem is not None:
            raise _bad(handler, item, problem, f"options: {flag}")
        out += [flag, item]
    return tuple(out)


def _bad(handler: str, value: object, expected: str, what: str = "options") -> TaskError:
    return bad_param(handler, what, value, expected)
