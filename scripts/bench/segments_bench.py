"""Segment-parallel benchmark: one long title three ways, on this machine, in one run.

Run through ``scripts/bench/segments``. One generated 1280x720 30 fps title (2 minutes by
default, a keyframe every 2 s, made once and cached in ``bench-results/clips/``) is encoded
to the same output three ways, the ways taking turns in each round:

- ``threads1``: one ffmpeg, the ``transcode`` handler's own command, ``-threads 1``;
- ``threads0``: the same command with ``-threads 0``: ffmpeg's own threading on every core;
- ``grid``: ``batchfarm manager`` and ``batchfarm node`` (2 pinned workers, embedded
  backends) running the three-stage segment-parallel job: ``split`` (cut at keyframes,
  no encode), ``encode_segment`` in ``fan_out`` mode (one task per segment and one for the
  audio, each verified by decoding it), ``concat`` in ``fan_in`` mode (joined without
  re-encoding). Timed from ``submit_job`` (which uploads the title) to the store saying the
  job succeeded; every task must have run once.

Every output is then verified (outside the timing): decoded in full without an error, its
duration within a frame of the title's, H.264 at the asked height and AAC, and its audio
ending within two frames of its video. Targets: grid at least as fast as ``threads0`` and at
least 1.8 times as fast as ``threads1``. The last line is one JSON object.

``--parts`` measures instead where the grid's CPU goes beside the encode: the three
handlers run one after the other in this process, without the grid (no queue, store or
worker), and the CPU seconds of each part are set against one ``-threads 1`` encode of the
whole title: the split, each segment's probe and encode, each output's verification (timed
by a second ``verify_output`` of the same file), the audio track, the join.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import psutil
from grid_procs import Grid, check_all_once
from grid_runs import grid_profile
from node_runs import RUN_TIMEOUT_S, BenchError, CpuMeter, warn_if_busy

from batchfarm.actors.backends import open_blobs
from batchfarm.actors.handlers import TaskContext
from batchfarm.actors.handlers.ffmpeg import find_ffmpeg
from batchfarm.actors.handlers.mediainfo import read_info
from batchfarm.actors.handlers.segments import concat, encode_segment, split
from batchfarm.actors.handlers.transcode import TranscodeOptions, transcode_argv
from batchfarm.actors.handlers.verify import verify_output
from batchfarm.actors.manager.spec import JobSpec, parse_spec
from batchfarm.actors.messages import TaskBody
from batchfarm.actors.settings import MediaSettings

SIDES = ("threads1", "threads0", "grid")
LABELS = {"threads1": "ffmpeg -threads 1", "threads0": "ffmpeg -threads 0", "grid": "grid"}
#: Speed ratios (the other side's wall time over the grid's) the grid must reach.
TARGETS = {"grid_vs_threads0": 1.0, "grid_vs_threads1": 1.8}
FPS = 30
KEYFRAME_S = 2
CORES = psutil.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="title length (120)")
    parser.add_argument("--segment", type=float, default=4.0, help="segment seconds (4)")
    parser.add_argument("--height", type=int, default=720, help="output height (720)")
    parser.add_argument("--speed", default="medium", help="x264 preset (medium, x264's default)")
    parser.add_argument("--crf", type=int, default=23)
    parser.add_argument("--rounds", type=int, default=1, help="turns of each side (1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a 12 s title")
    parser.add_argument(
        "--parts", action="store_true", help="CPU of each part, handlers run without the grid"
    )
    parser.add_argument("--results", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.segment, args.rounds = 12.0, 2.0, 1
    if args.rounds < 1 or args.seconds < 2 * args.segment:
        parser.error("expected --rounds >= 1 and a title of at least two segments")
    args.results = args.results.resolve()
    return args


def main() -> None:
    args = parse_args()
    try:
        figures = parts(args) if args.parts else bench(args)
    except BenchError as error:
        sys.exit(f"segments benchmark failed: {error}")
    print(json.dumps(figures))


def make_title(ffmpeg: str, seconds: float, cache: Path) -> Path:
    """The generated title (testsrc2, a sine tone), made once; a keyframe every 2 s."""
    cache.mkdir(parents=True, exist_ok=True)
    title = cache / f"title-1280x720-{FPS}fps-{seconds:g}s-gop{KEYFRAME_S}.mp4"
    if title.is_file():
        return title
    part = title.with_name(f"part-{title.name}")
    argv = [
        *(ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"),
        *("-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={FPS}:duration={seconds}"),
        *("-f", "lavfi", "-i", f"sine=frequency=330:sample_rate=48000:duration={seconds}"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
        *("-force_key_frames", f"expr:gte(t,n_forced*{KEYFRAME_S})"),
        *("-c:a", "aac", "-b:a", "128k", "-f", "mp4", str(part)),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"making {title} failed: {done.stderr[-2000:]}")
    part.rename(title)
    return title


def run_single(
    ffmpeg: str, title: Path, out: Path, options: TranscodeOptions, threads: int
) -> tuple[float, float, float]:
    """One ffmpeg, the handler's own command; (wall seconds, CPU busy %, its CPU seconds)."""
    argv = transcode_argv(ffmpeg, title, out, options, threads)
    meter = CpuMeter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=RUN_TIMEOUT_S)
    wall = time.perf_counter() - started
    busy, _ = meter.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchError(
            f"ffmpeg -threads {threads} exited {done.returncode}: {done.stderr[-2000:]}"
        )
    cpu_s = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, busy, cpu_s


def segment_spec(title: Path, options: TranscodeOptions, segment_s: float) -> JobSpec:
    """The three-stage segment-parallel job over ``title``, as the README writes it."""
    params = {"preset": f"h264-{options.height}p", "speed": options.preset, "crf": options.crf}
    params["height"] = options.height
    stages = [
        {"name": "split", "handler": "split", "params": {"seconds": segment_s}},
        {"name": "encode", "handler": "encode_segment", "mode": "fan_out", "params": params},
        {"name": "join", "handler": "concat", "mode": "fan_in"},
    ]
    tree = {"name": "segments-bench", "inputs": {"files": [title.name]}, "stages": stages}
    return parse_spec(tree, source="segments bench", base_dir=title.parent)


def run_grid(
    title: Path, out: Path, options: TranscodeOptions, segment_s: float, work: Path
) -> tuple[float, float, dict[str, Any]]:
    """The segment-parallel job through a fresh grid; (wall s, CPU busy %, profile)."""
    spec = segment_spec(title, options, segment_s)
    with Grid(work) as grid:
        grid.start()
        grid.warm_up()
        meter = CpuMeter()
        run = grid.run(spec, RUN_TIMEOUT_S)
        busy, _ = meter.read()
        store = grid.store
        encodes = len(store.tasks(run.job_id, stage="encode", limit=None))
        tasks = [
            *check_all_once(store, run.job_id, "split", 1),
            *check_all_once(store, run.job_id, "encode", encodes),
            *check_all_once(store, run.job_id, "join", 1),
        ]
        job = store.job(run.job_id)
        assert job is not None
        assert job.finished_at is not None
        blobs = open_blobs(grid.settings.storage)
        try:
            blobs.get_file(f"jobs/{run.job_id}/join/0/out.mp4", out)
        finally:
            blobs.close()
    profile = grid_profile(tasks, run.submitted_at, run.submit_s, run.wall_s, job.finished_at)
    by_stage = {name: [t for t in tasks if t.stage == name] for name in ("split", "encode", "join")}
    start = run.submitted_at
    profile["stages"] = {
        name: {
            "tasks": len(found),
            "from_s": round(min(t.started_at for t in found) - start, 2),
            "to_s": round(max(t.finished_at for t in found) - start, 2),
            "compute_s": round(sum(t.compute_s for t in found), 2),
            "cpu_s": round(sum(t.cpu_s for t in found), 2),
        }
        for name, found in by_stage.items()
    }
    profile["cpu_s"] = run.cpu_s
    return run.wall_s, busy, profile


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _context(handler: str, params: dict[str, Any], inputs: list[Path], root: Path) -> TaskContext:
    """A task context as a pinned worker gives it (one thread), folders under ``root``."""
    task = TaskBody(
        job="parts",
        stage=handler,
        part=0,
        handler=handler,
        inputs=[p.name for p in inputs],
        params=params,
    )
    return TaskContext(
        task=task,
        params=params,
        inputs=inputs,
        media=MediaSettings(),
        threads=1,
        progress=lambda _: None,
        cancelled=lambda: False,
        output_dir=root / "out",
        scratch=root / "tmp",
    )


def prepare(args: argparse.Namespace) -> tuple[float, str, TranscodeOptions, Path]:
    """What every way of running needs: the load at the start, ffmpeg, the options, the title."""
    load = warn_if_busy()
    ffmpeg = find_ffmpeg(MediaSettings())
    options = TranscodeOptions(height=args.height, crf=args.crf, preset=args.speed)
    args.results.mkdir(parents=True, exist_ok=True)
    return load, ffmpeg, options, make_title(ffmpeg, args.seconds, args.results / "clips")


def parts(args: argparse.Namespace) -> dict[str, Any]:
    """Where the segment-parallel job's CPU goes, part by part, against one whole encode."""
    started = time.monotonic()
    load, ffmpeg, options, title = prepare(args)
    spec = segment_spec(title, options, args.segment)
    params = [dict(stage.params) for stage in spec.stages]
    cpu: dict[str, float] = dict.fromkeys(
        ("split", "probe+encode", "verify", "audio", "audio verify", "join"), 0.0
    )
    with tempfile.TemporaryDirectory(dir=args.results, prefix="parts-") as scratch:
        work = Path(scratch)
        print("whole title, ffmpeg -threads 1 ...", flush=True)
        _, _, whole = run_single(ffmpeg, title, work / "whole.mp4", options, 1)
        at = _cpu()
        ctx = _context("split", params[0], [title], work / "split")
        split(ctx)
        cpu["split"] = _cpu() - at
        pieces = sorted(ctx.output_dir.iterdir())
        print(f"{len(pieces)} parts ...", flush=True)
        encoded = []
        for number, piece in enumerate(pieces):
            ctx = _context("encode_segment", params[1], [piece], work / f"encode-{number}")
            at = _cpu()
            encode_segment(ctx)
            spent = _cpu() - at
            out = next(ctx.output_dir.iterdir())
            encoded.append(out)
            duration = read_info(piece).duration_s
            at = _cpu()
            verify_output(out, label=out.name, duration_s=duration)
            check = _cpu() - at
            audio = piece.name.endswith(".flac")
            cpu["audio" if audio else "probe+encode"] += spent - check
            cpu["audio verify" if audio else "verify"] += check
        ctx = _context("concat", {}, encoded, work / "join")
        at = _cpu()
        concat(ctx)
        cpu["join"] = _cpu() - at
    total = sum(cpu.values())
    print(
        f"\n{args.seconds:g} s title -> {args.height}p {args.speed}, {args.segment:g} s"
        f" segments ({len(pieces) - 1} and the audio), handlers run without the grid"
    )
    print(f"{'part':<28}{'CPU s':>8}{'of whole':>10}")
    for name, value in [*cpu.items(), ("all parts", total), ("whole, -threads 1", whole)]:
        print(f"{name:<28}{value:>8.2f}{value / whole:>10.1%}")
    print(f"\ntook {time.monotonic() - started:.0f} s (load average {load:.2f} at the start)")
    return {
        "bench": "segments-parts",
        "seconds": args.seconds,
        "segment_s": args.segment,
        "parts": len(pieces),
        "cpu_s": {name: round(value, 2) for name, value in cpu.items()},
        "all_parts_cpu_s": round(total, 2),
        "whole_threads1_cpu_s": round(whole, 2),
        "parts_vs_whole": round(total / whole, 3),
        "load_at_start": round(load, 2),
    }


def check_output(path: Path, title: Path, height: int) -> dict[str, Any]:
    """Verify an output against the title: decodes, lasts as long, streams, A/V in sync."""
    frame = 1 / FPS
    source = read_info(title, "title")
    info = verify_output(
        path,
        label=path.name,
        duration_s=source.duration_s,
        tolerance_s=frame,
        video_codec="h264",
        height=height,
        audio_codec="aac",
    )
    ends = _stream_ends(path)
    sync = abs(ends["audio"] - ends["video"])
    if sync > 2 * frame:
        raise BenchError(
            f"{path.name}: audio ends {sync:.3f} s from the video, expected <= 2 frames"
        )
    return {
        "ok": True,
        "duration_s": info.duration_s,
        "frames": _frames(path),
        "audio_video_end_diff_s": round(sync, 4),
    }


def _stream_ends(path: Path) -> dict[str, float]:
    ends: dict[str, float] = {}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.pts is None or packet.time_base is None:
                continue
            end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            kind = packet.stream.type
            ends[kind] = max(ends.get(kind, 0.0), end)
    return ends


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every side once per round, taking turns; then verify, print the table, return figures."""
    started = time.monotonic()
    load, ffmpeg, options, title = prepare(args)
    walls: dict[str, list[float]] = {side: [] for side in SIDES}
    busy: dict[str, list[float]] = {side: [] for side in SIDES}
    used: dict[str, list[float]] = {side: [] for side in SIDES}
    checks: dict[str, Any] = {}
    profile: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=args.results, prefix="segments-") as scratch:
        work = Path(scratch)
        for round_ in range(args.rounds):
            order = SIDES if round_ % 2 == 0 else tuple(reversed(SIDES))
            for side in order:
                out = work / f"{side}-{round_}.mp4"
                print(f"round {round_ + 1}: {LABELS[side]} ...", flush=True)
                if side == "grid":
                    wall, cpu, profile = run_grid(
                        title, out, options, args.segment, work / f"grid-{round_}"
                    )
                    used[side].append(sum(s["cpu_s"] for s in profile["stages"].values()))
                else:
                    threads = 1 if side == "threads1" else 0
                    wall, cpu, cpu_s = run_single(ffmpeg, title, out, options, threads)
                    used[side].append(cpu_s)
                walls[side].append(wall)
                busy[side].append(cpu)
                print(f"  {wall:.2f} s, CPU busy {cpu:.1f} %", flush=True)
                if round_ == 0:
                    checks[side] = check_output(out, title, args.height)
    wall = {side: round(statistics.median(walls[side]), 2) for side in SIDES}
    ratios = {
        "grid_vs_threads0": round(wall["threads0"] / wall["grid"], 3),
        "grid_vs_threads1": round(wall["threads1"] / wall["grid"], 3),
        "threads0_vs_threads1": round(wall["threads1"] / wall["threads0"], 3),
    }
    cpu_s = {side: round(statistics.median(used[side]), 1) for side in SIDES}
    # The grid's CPU per title over one ffmpeg's: its ceiling on 2 cores is 2 / this.
    cpu_ratio = round(cpu_s["grid"] / cpu_s["threads1"], 3)
    figures = {
        "bench": "segments",
        "title": {
            "seconds": args.seconds,
            "size": "1280x720",
            "fps": FPS,
            "keyframe_s": KEYFRAME_S,
        },
        "encode": {
            "height": args.height,
            "speed": args.speed,
            "crf": args.crf,
            "audio": "aac 128k",
        },
        "segment_s": args.segment,
        "rounds": args.rounds,
        "workers": 2,
        "wall_s": wall,
        "wall_s_per_round": walls,
        "realtime_x": {side: round(args.seconds / wall[side], 2) for side in SIDES},
        "cpu_busy_percent": {side: round(statistics.median(busy[side]), 1) for side in SIDES},
        # ffmpeg's own CPU time; the grid's is its tasks' (each worker's process and the tools
        # it ran, ffmpeg and verification included, while a task ran).
        "cpu_s": cpu_s,
        "cpu_grid_vs_threads1": cpu_ratio,
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": all(ratios[k] >= v for k, v in TARGETS.items()),
        "verified": checks,
        "grid_profile": profile,
        "load_at_start": round(load, 2),
        "took_s": round(time.monotonic() - started, 1),
    }
    print_table(figures)
    return figures


def print_table(f: dict[str, Any]) -> None:
    e, t = f["encode"], f["title"]
    print()
    print(
        f"{t['seconds']:g} s {t['size']} {t['fps']} fps title -> {e['height']}p libx264"
        f" {e['speed']} crf {e['crf']}, {e['audio']}; grid: 2 pinned workers, {f['segment_s']:g} s"
        f" segments; median of {f['rounds']} round(s)"
    )
    print(f"{'':<26}" + "".join(f"{LABELS[s]:>20}" for s in SIDES))
    for key, label, fmt in (
        ("wall_s", "wall s", ".2f"),
        ("realtime_x", "x real time", ".2f"),
        ("cpu_busy_percent", f"CPU busy, % of {CORES} cores", ".1f"),
        ("cpu_s", "CPU seconds", ".1f"),
    ):
        print(f"{label:<26}" + "".join(f"{f[key][s]:>20{fmt}}" for s in SIDES))
    checks = f["verified"]
    print(
        f"{'verified':<26}"
        + "".join(
            f"{'ok' if checks[s]['ok'] else 'FAILED':>14} {checks[s]['frames']:>5}" for s in SIDES
        )
    )
    r = f["ratios"]
    print(
        f"speed, grid vs -threads 0: {r['grid_vs_threads0']:.3f}x (target >= 1.0); grid vs"
        f" -threads 1: {r['grid_vs_threads1']:.3f}x (target >= 1.8); -threads 0 vs -threads 1:"
        f" {r['threads0_vs_threads1']:.3f}x; targets {'met' if f['targets_met'] else 'NOT met'}"
    )
    print(
        f"the grid's tasks use {f['cpu_grid_vs_threads1']:.3f}x the CPU of one ffmpeg (each"
        " segment's output is decoded in full to verify it): on 2 cores at best"
        f" {2 / f['cpu_grid_vs_threads1']:.2f}x -threads 1"
    )
    p = f["grid_profile"]
    stages = ", ".join(
        f"{name} {s['tasks']} task(s) {s['from_s']:.1f}-{s['to_s']:.1f} s ({s['cpu_s']:.1f} CPU s)"
        for name, s in p["stages"].items()
    )
    print(
        f"grid run: submit (upload) {p['submit_upload_s']:.2f} s; {stages}; idle at end"
        f" {p['worker_idle_at_end_s']:.2f} s; handlers busy {p['handler_busy_share']:.1%};"
        f" CPU s {p['cpu_s']}"
    )
    print(f"\ntook {f['took_s']:.0f} s (load average {f['load_at_start']:.2f} at the start)")


if __name__ == "__main__":
    main()
