"""The ``hls`` handler: renditions packaged as HLS under one master playlist (a fan-in stage).

Each input (a rendition from ``ladder``, named ``<name>.mp4``) is cut into MPEG-TS segments
by ffmpeg's HLS muxer without re-encoding, into ``<name>/index.m3u8`` and
``<name>/seg-00000.ts``, ... Then ``master.m3u8`` lists every rendition with the attributes
a player picks by (RFC 8216 section 4.3.4.2): ``BANDWIDTH`` (the peak segment bit rate, as
measured), ``AVERAGE-BANDWIDTH``, ``RESOLUTION``, ``FRAME-RATE`` and ``CODECS`` (read from
the streams' own configuration records, so ``avc1.64001f`` names the real profile and level).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import av

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.context import TaskContext
from batchfarm.actors.handlers.ffmpeg import SAFE_INPUT, find_ffmpeg, is_permanent, limits_for
from batchfarm.actors.handlers.mediainfo import OPEN_OPTIONS, MediaInfo, read_info
from batchfarm.actors.handlers.params import FILE_NAME, Params

PARAMS = ("segment_seconds", "name")
DEFAULT_SEGMENT_S = 4.0
SEGMENT_RANGE = (1.0, 60.0)
_EXTINF = re.compile(r"#EXTINF:([0-9.]+),")


@dataclass(frozen=True)
class Variant:
    """One packaged rendition: where its playlist is and what the master says of it."""

    name: str
    bandwidth: int
    average_bandwidth: int
    width: int
    height: int
    frame_rate: float | None
    codecs: str
    segments: int

    def stream_inf(self) -> str:
        """Its ``#EXT-X-STREAM-INF`` line."""
        attributes = [
            f"BANDWIDTH={self.bandwidth}",
            f"AVERAGE-BANDWIDTH={self.average_bandwidth}",
            f"RESOLUTION={self.width}x{self.height}",
        ]
        if self.frame_rate:
            attributes.append(f"FRAME-RATE={self.frame_rate:.3f}")
        attributes.append(f'CODECS="{self.codecs}"')
        return "#EXT-X-STREAM-INF:" + ",".join(attributes)


def hls(ctx: TaskContext) -> dict[str, Any]:
    """Package every input rendition as HLS and write the master playlist ``name``.

    Params: ``segment_seconds`` (1 to 60, default 4: the ladder's keyframe interval) and
    ``name`` (default ``master.m3u8``). Inputs are renditions with video, each named by its
    key's file stem (``.../720p.mp4`` is ``720p``); two with one name are refused. Returns
    ``{"renditions": [...], "master"}``.
    """
    segment_s, master = hls_params(ctx.params)
    if not ctx.inputs:
        raise TaskError("hls: the task has no inputs, expected renditions", permanent=True)
    keys = list(ctx.task.inputs) if len(ctx.task.inputs) == len(ctx.inputs) else []
    seen: dict[str, str] = {}
    variants: list[Variant] = []
    ffmpeg = find_ffmpeg(ctx.media)
    for number, path in enumerate(ctx.inputs):
        label = keys[number] if keys else path.name
        # Named by the input's own name (its key's), not by the worker's local copy.
        name = PurePosixPath(label).stem
        if not FILE_NAME.fullmatch(name) or name == Path(master).stem:
            raise TaskError(f"hls: {label}: {name!r} cannot name a rendition", permanent=True)
        if name in seen:
            raise TaskError(
                f"hls: {label} and {seen[name]} are both rendition {name!r}; expected one"
                " name per rendition (set the ladder's rendition names)",
                permanent=True,
            )
        seen[name] = label
        info = read_info(path, label, max_pixels=ctx.media.max_pixels)
        if info.video is None:
            raise TaskError(f"hls: {label} has no video; expected a rendition", permanent=True)
        ctx.check_cancelled()
        folder = ctx.scratch / "hls" / name
        folder.mkdir(parents=True)
        ctx.run_tool(
            _package_argv(ffmpeg, path, folder, segment_s),
            permanent_if=is_permanent,
            limits=limits_for(ctx.media),
        )
        variants.append(_variant(name, folder, path, info))
        ctx.progress((number + 1) / len(ctx.inputs))
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for variant in variants:
        lines += [variant.stream_inf(), f"{variant.name}/index.m3u8"]
    (ctx.scratch / "hls" / master).write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Moved only once all are written: a failed run leaves no partial package.
    for path in sorted((ctx.scratch / "hls").iterdir()):
        shutil.move(path, ctx.output_dir / path.name)
    return {
        "master": master,
        "renditions": [
            {
                "name": v.name,
                "bandwidth": v.bandwidth,
                "resolution": f"{v.width}x{v.height}",
                "codecs": v.codecs,
                "segments": v.segments,
            }
            for v in variants
        ],
    }


def hls_params(params: Mapping[str, Any]) -> tuple[float, str]:
    """``hls``'s params, checked: the segment length and the master playlist's name."""
    checked = Params("hls", params, PARAMS)
    low, high = SEGMENT_RANGE
    segment_s = checked.number("segment_seconds", DEFAULT_SEGMENT_S, low, high)
    return segment_s, checked.file_name("name", "master.m3u8", suffix=".m3u8")


def _package_argv(ffmpeg: str, source: Path, folder: Path, segment_s: float) -> list[str]:
    """The command that cuts ``source`` into ``folder`` as a VOD media playlist, no re-encoding."""
    return [
        ffmpeg,
        *("-nostdin", "-hide_banner", "-y", *SAFE_INPUT, "-i", str(source)),
        *("-map", "0:v:0", "-map", "0:a:0?", "-c", "copy"),
        *("-f", "hls", "-hls_time", f"{segment_s:g}", "-hls_playlist_type", "vod"),
        *("-hls_segment_type", "mpegts", "-hls_flags", "independent_segments"),
        *("-hls_segment_filename", str(folder / "seg-%05d.ts"), str(folder / "index.m3u8")),
    ]


def _variant(name: str, folder: Path, source: Path, info: MediaInfo) -> Variant:
    """Measure a packaged rendition: peak and average bit rate over its segments."""
    playlist = (folder / "index.m3u8").read_text(encoding="utf-8")
    durations = [float(d) for d in _EXTINF.findall(playlist)]
    segments = sorted(folder.glob("seg-*.ts"))
    if not durations or len(durations) != len(segments):
        raise TaskError(
            f"hls: rendition {name}: the playlist lists {len(durations)} segments, the folder"
            f" holds {len(segments)}",
            permanent=True,
        )
    assert info.video is not None
    # The playlist must cover the rendition: a cut-off package would play short.
    fps = info.video.fps
    tolerance = max(0.1, 2 / fps) if fps else 0.1
    if info.duration_s is not None and abs(sum(durations) - info.duration_s) > tolerance:
        raise TaskError(
            f"hls: rendition {name}: its segments last {sum(durations):.3f} s, expected"
            f" {info.duration_s:.3f} s",
            permanent=True,
        )
    sizes = [path.stat().st_size for path in segments]
    rates = [size * 8 / d for size, d in zip(sizes, durations, strict=True) if d > 0]
    return Variant(
        name=name,
        bandwidth=round(max(rates)),
        average_bandwidth=round(sum(sizes) * 8 / sum(durations)),
        width=info.video.width,
        height=info.video.height,
        frame_rate=info.video.fps,
        codecs=codecs(source),
        segments=len(segments),
    )


def codecs(path: Path) -> str:
    """The RFC 6381 ``CODECS`` value of a file's first video and audio streams.

    H.264 is ``avc1.PPCCLL`` from its avcC record (profile, constraint flags, level), HEVC
    ``hvc1.…`` from its hvcC record, AAC ``mp4a.40.<object type>`` from its AudioSpecificConfig.
    """
    parts: list[str] = []
    with av.open(str(path), options=dict(OPEN_OPTIONS)) as container:
        for stream in (*container.streams.video[:1], *container.streams.audio[:1]):
            ctx = stream.codec_context
            parts.append(_codec_string(ctx.name, bytes(ctx.extradata or b""), path))
    return ",".join(parts)


def _codec_string(codec: str, record: bytes, path: Path) -> str:
    if codec == "h264" and len(record) >= 4 and record[0] == 1:
        return f"avc1.{record[1]:02x}{record[2]:02x}{record[3]:02x}"
    if codec == "hevc" and len(record) >= 13 and record[0] == 1:
        return _hvc1(record)
    if codec == "aac" and record:
        object_type = record[0] >> 3
        return f"mp4a.40.{object_type}"
    raise TaskError(
        f"hls: {path.name}: cannot name codec {codec} for CODECS; expected H.264, HEVC or AAC",
        permanent=True,
    )


def _hvc1(record: bytes) -> str:
    """``hvc1.<profile>.<compat>.<tier><level>.<constraints>`` (ISO/IEC 14496-15 annex E)."""
    space = "ABC"[(record[1] >> 6) - 1] if record[1] >> 6 else ""
    tier = "H" if record[1] & 0x20 else "L"
    profile = record[1] & 0x1F
    compat = int.from_bytes(record[2:6], "big")
    reversed_compat = int(f"{compat:032b}"[::-1], 2)
    constraints = [f"{b:X}" for b in record[6:12]]
    while constraints and constraints[-1] == "0":
        constraints.pop()
    tail = "." + ".".join(constraints) if constraints else ""
    return f"hvc1.{space}{profile}.{reversed_compat:X}.{tier}{record[12]}{tail}"
