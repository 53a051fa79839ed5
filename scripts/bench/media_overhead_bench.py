"""Per-task overhead of the transcode handler's probe + verify vs the encode itself.

One 2 s 1280x720 30 fps clip, transcoded to 480p (libx264 veryfast, CRF 23, AAC 128k) on one
thread, as the grid benchmark's short set does (``--seconds 4 --height 720 --speed medium``:
one segment of the segments benchmark). Side by side, median of --rounds runs:

- encode: the handler's ffmpeg command alone;
- probe+verify (PyAV): what the handler adds now: read_info of the input, then verify_output
  of the output (every packet decoded);
- verify, before: the verification as it was before it got cheaper (the output opened twice,
  decoded on FFmpeg's default slice threads with the deblocking filter), for comparison;
- probe x2 (ffmpeg -i): what it added before PyAV: ``ffmpeg -i`` of input and output, stderr
  parsed.

Run through ``scripts/bench/media_overhead``. Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
from node_runs import ClipSpec, make_clips

from batchfarm.actors.handlers.ffmpeg import SAFE_INPUT, find_ffmpeg
from batchfarm.actors.handlers.mediainfo import read_info
from batchfarm.actors.handlers.transcode import TranscodeOptions, transcode_argv
from batchfarm.actors.handlers.verify import verify_output
from batchfarm.actors.settings import MediaSettings


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds (this process and its children) of one call."""
    start, cpu = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - start, _cpu() - cpu


def verify_before(path: Path) -> float:
    """The output check as it was before: facts, then a second open decoding every packet.

    FFmpeg's default decoder threading (slice threads, which also turn its error concealment
    off) and the full reconstruction, deblocking included. Returns the decoded span.
    """
    read_info(path, "out.mp4")
    start: float | None = None
    end = 0.0
    with av.open(str(path)) as container:
        streams = [*container.streams.video[:1], *container.streams.audio[:1]]
        for stream in streams:
            stream.codec_context.options = {"err_detect": "explode"}
        for packet in container.demux(streams):
            for frame in packet.decode():
                if frame.pts is None or frame.time_base is None:
                    continue
                begin = float(frame.pts * frame.time_base)
                start = begin if start is None else min(start, begin)
                end = max(end, begin)
    return end - (start or 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--height", type=int, default=480, help="output height (480)")
    parser.add_argument("--speed", default="veryfast", help="x264 preset (veryfast)")
    args = parser.parse_args()
    ffmpeg = find_ffmpeg(MediaSettings())
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        clip = make_clips(ffmpeg, ClipSpec(1, args.seconds, 1280, 720, 30), work)[0]
        out = work / "out.mp4"
        options = TranscodeOptions(
            height=args.height, crf=23, preset=args.speed, audio_bitrate="128k"
        )
        info = read_info(clip)
        argv = transcode_argv(
            ffmpeg, clip, out, options, 1, input_format="mov", max_pixels=33_177_600
        )

        def encode() -> None:
            subprocess.run(argv, capture_output=True, check=True)

        def pyav() -> None:
            read_info(clip, "in.mp4")
            verify_output(
                out,
                label="out.mp4",
                duration_s=info.duration_s,
                video_codec="h264",
                height=args.height,
                audio_codec="aac",
            )

        def probe_only() -> None:
            read_info(clip, "in.mp4")

        def verify_only() -> None:
            verify_output(out, label="out.mp4", duration_s=info.duration_s, height=args.height)

        def old_verify() -> None:
            verify_before(out)

        def old_probes() -> None:
            for path in (clip, out):
                subprocess.run(
                    [ffmpeg, "-nostdin", "-hide_banner", *SAFE_INPUT, "-i", str(path)],
                    capture_output=True,
                    check=False,
                )

        encode()  # warm caches; also makes the output the checks read
        sides = {
            "encode": encode,
            "probe+verify (PyAV)": pyav,
            "  probe input (PyAV)": probe_only,
            "  verify output (PyAV)": verify_only,
            "  verify, before": old_verify,
            "probe x2 (ffmpeg -i)": old_probes,
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, fn in sides.items():
                times[name].append(timed(fn))
    medians = {name: statistics.median(w for w, _ in values) for name, values in times.items()}
    cpus = {name: statistics.median(c for _, c in values) for name, values in times.items()}
    base, base_cpu = medians["encode"], cpus["encode"]
    print(f"{'side':<26}{'wall s':>8}{'vs encode':>11}{'CPU s':>8}{'vs encode':>11}")
    for name, value in medians.items():
        cpu = cpus[name]
        print(f"{name:<26}{value:>8.3f}{value / base:>11.1%}{cpu:>8.3f}{cpu / base_cpu:>11.1%}")
    print(
        json.dumps(
            {
                "clip": f"{args.seconds:g}s 1280x720 30fps -> {args.height}p x264 {args.speed},"
                " 1 thread",
                "rounds": args.rounds,
                "encode_s": round(base, 4),
                "pyav_probe_verify_s": round(medians["probe+verify (PyAV)"], 4),
                "pyav_probe_s": round(medians["  probe input (PyAV)"], 4),
                "pyav_verify_s": round(medians["  verify output (PyAV)"], 4),
                "pyav_verify_before_s": round(medians["  verify, before"], 4),
                "pyav_verify_cpu_s": round(cpus["  verify output (PyAV)"], 4),
                "pyav_verify_before_cpu_s": round(cpus["  verify, before"], 4),
                "ffmpeg_probes_s": round(medians["probe x2 (ffmpeg -i)"], 4),
                "pyav_overhead_ratio": round(medians["probe+verify (PyAV)"] / base, 4),
                "ffmpeg_probe_overhead_ratio": round(medians["probe x2 (ffmpeg -i)"] / base, 4),
                "pyav_overhead_cpu_ratio": round(cpus["probe+verify (PyAV)"] / base_cpu, 4),
                "ffmpeg_probe_overhead_cpu_ratio": round(
                    cpus["probe x2 (ffmpeg -i)"] / base_cpu, 4
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
