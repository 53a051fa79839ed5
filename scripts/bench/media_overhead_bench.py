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

With ``--damage N``, also the cheaper ways to verify that were considered, side by side with
the handler's: for each, the CPU seconds of checking the undamaged output (median of
--rounds) and how many of N damaged copies it catches. Each copy has one bit flipped at a
random byte of a random video packet (seeded: ``--seed``, the same copies for every way).
The ways: the handler's decode (``verify_output``), the same with one more decoder option
(``skip_idct=all``, ``flags2=fast``, ``skip_frame=nonref``), and reading the packets alone
without decoding them (what ``concat`` checks its join with).

Run through ``scripts/bench/media_overhead``. Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import av
from node_runs import ClipSpec, make_clips

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers import verify
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


#: The verification ways --damage compares: extra video decoder options over the handler's
#: (None: read the packets without decoding them).
WAYS: dict[str, dict[str, str] | None] = {
    "handler's decode": {},
    "+ skip_idct=all": {"skip_idct": "all"},
    "+ flags2=fast": {"flags2": "fast"},
    "+ skip_frame=nonref": {"skip_frame": "nonref"},
    "packets only": None,
}


def check_way(path: Path, extra: dict[str, str] | None, duration_s: float | None) -> bool:
    """Whether verifying ``path`` the given way passes it."""
    try:
        if extra is None:
            packets_only(path, duration_s)
        else:
            options = {**verify.VIDEO_DECODE_OPTIONS, **extra}
            with mock.patch.object(verify, "VIDEO_DECODE_OPTIONS", options):
                verify_output(path, label="out.mp4", duration_s=duration_s)
    except TaskError:
        return False
    return True


def packets_only(path: Path, duration_s: float | None) -> None:
    """Headers and every packet's timing, nothing decoded: the span must match."""
    read_info(path, "out.mp4", max_pixels=0)
    end = 0.0
    try:
        with av.open(str(path)) as container:
            for packet in container.demux():
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    except av.FFmpegError as exc:
        raise TaskError(f"out.mp4: {exc}") from exc
    if duration_s is not None and abs(end - duration_s) > verify.MIN_TOLERANCE_S:
        raise TaskError(f"out.mp4: ends at {end:.3f} s")


def flipped_copies(out: Path, count: int, seed: int, folder: Path) -> list[Path]:
    """``count`` copies of ``out``, each with one bit flipped in a random video packet."""
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        packets = [(p.pos, p.size) for p in container.demux(video) if p.size and p.pos is not None]
    data = out.read_bytes()
    rng = random.Random(seed)
    copies = []
    for number in range(count):
        pos, size = rng.choice(packets)
        damaged = bytearray(data)
        damaged[pos + rng.randrange(size)] ^= 1 << rng.randrange(8)
        copy = folder / f"flipped-{number:03d}.mp4"
        copy.write_bytes(bytes(damaged))
        copies.append(copy)
    return copies


def detection(
    out: Path, duration_s: float | None, *, count: int, seed: int, rounds: int, folder: Path
) -> dict[str, dict[str, float | int | bool]]:
    """Per way: CPU s to verify the good output, whether it passes, damaged copies caught."""
    copies = flipped_copies(out, count, seed, folder)
    cpus: dict[str, list[float]] = {name: [] for name in WAYS}
    for _ in range(rounds):  # the ways take turns, so a change in load hits them alike
        for name, extra in WAYS.items():
            cpus[name].append(timed(functools.partial(check_way, out, extra, duration_s))[1])
    figures: dict[str, dict[str, float | int | bool]] = {}
    for name, extra in WAYS.items():
        caught = sum(not check_way(copy, extra, duration_s) for copy in copies)
        figures[name] = {
            "cpu_s": round(statistics.median(cpus[name]), 4),
            "good_passes": check_way(out, extra, duration_s),
            "caught": caught,
            "of": count,
        }
    return figures


def print_detection(figures: dict[str, dict[str, float | int | bool]], what: str) -> None:
    """The --damage table."""
    base = float(figures["handler's decode"]["cpu_s"])
    print(f"\nverification ways, {what}")
    print(f"{'way':<24}{'CPU s':>8}{'vs now':>8}{'good passes':>13}{'damaged caught':>16}")
    for name, f in figures.items():
        print(
            f"{name:<24}{f['cpu_s']:>8.3f}{float(f['cpu_s']) / base:>8.0%}"
            f"{'yes' if f['good_passes'] else 'NO':>13}{f['caught']:>10} of {f['of']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--height", type=int, default=480, help="output height (480)")
    parser.add_argument("--speed", default="veryfast", help="x264 preset (veryfast)")
    parser.add_argument("--damage", type=int, default=0, help="damaged copies to check (0)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the damage (1)")
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
        ways = (
            detection(
                out,
                info.duration_s,
                count=args.damage,
                seed=args.seed,
                rounds=args.rounds,
                folder=work,
            )
            if args.damage
            else {}
        )
    medians = {name: statistics.median(w for w, _ in values) for name, values in times.items()}
    cpus = {name: statistics.median(c for _, c in values) for name, values in times.items()}
    base, base_cpu = medians["encode"], cpus["encode"]
    print(f"{'side':<26}{'wall s':>8}{'vs encode':>11}{'CPU s':>8}{'vs encode':>11}")
    for name, value in medians.items():
        cpu = cpus[name]
        print(f"{name:<26}{value:>8.3f}{value / base:>11.1%}{cpu:>8.3f}{cpu / base_cpu:>11.1%}")
    what = f"{args.seconds:g} s 720p -> {args.height}p x264 {args.speed}, seed {args.seed}"
    if ways:
        print_detection(ways, what)
    print(
        json.dumps(
            {
                "verification_ways": ways,
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
