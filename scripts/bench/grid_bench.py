"""Grid benchmark: clips/s of the whole grid beside ``xargs -P2 ffmpeg`` and Celery + S3.

Run through ``scripts/bench/grid``. The same generated clips (made once, cached in
``bench-results/clips/``) are transcoded three ways, taking turns for ROUNDS rounds, for two
sets of clips: ``long`` (the node benchmark's 8 clips of 20 s: compute dominates) and
``short`` (40 clips of 2 s: per-task cost and I/O show):

- xargs: ``xargs -P2`` runs the very ffmpeg command the ``transcode`` handler runs
  (``-threads 1``) on local files: the physical limit of the machine;
- grid: ``batchfarm manager`` and ``batchfarm node`` (2 pinned workers, embedded backends)
  as real processes; one job with the clips as its input files, timed from ``submit_job``
  (which uploads them) to the store saying the job succeeded (``grid_runs.py``);
- celery: Celery with Redis, prefork -c 2, prefetch 1, late acks; clips and outputs in S3
  (a ``moto_server`` this benchmark starts), timed from the first upload to the last result
  (``peers_s3.py``).

Every output of every side is checked (an H.264 + AAC MP4 of the asked height and length).
Figures are medians over the rounds; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from grid_runs import run_grid
from node_runs import BenchError, ClipSpec, Run, make_clips, run_xargs, warn_if_busy
from peers_s3 import MotoServer, run_celery

from batchfarm.actors.handlers.ffmpeg import find_ffmpeg
from batchfarm.actors.handlers.transcode import PRESETS, TranscodeOptions
from batchfarm.actors.settings import MediaSettings

SIDES = ("xargs", "grid", "celery")
#: Per set: the least grid/xargs, and whether the grid must beat Celery.
TARGETS = {"long": (0.97, False), "short": (0.9, True)}
CORES = psutil.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sets = parser.add_argument_group("clip sets (generated once, then cached)")
    sets.add_argument("--long-clips", type=int, default=8, help="long set: clips (default 8)")
    sets.add_argument("--long-seconds", type=float, default=20.0, help="long set: length")
    sets.add_argument("--short-clips", type=int, default=40, help="short set: clips (default 40)")
    sets.add_argument("--short-seconds", type=float, default=2.0, help="short set: length")
    sets.add_argument("--sets", default="long,short", help="which sets to run (default both)")
    target = parser.add_argument_group("transcode target (the handler's parameters)")
    target.add_argument("--to-height", type=int, default=480)
    target.add_argument("--preset", choices=PRESETS, default="veryfast")
    target.add_argument("--crf", type=int, choices=range(52), default=23, metavar="0..51")
    target.add_argument("--audio-bitrate", default="128k")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each side (default 3)")
    parser.add_argument(
        "--backend",
        choices=("embedded", "aws"),
        default="embedded",
        help="aws: the grid on moto (sqs+s3) and PostgreSQL beside the embedded grid"
        " (grid_aws.py), instead of xargs and Celery",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        choices=range(10),
        default=1,
        metavar="0..9",
        help="[grid] node prefetch (default 1, the config default)",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="[grid] run the node's workers unpinned ([node] pin = false), as xargs runs",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round of 2 x 4 s and 6 x 1 s clips"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("bench-results"),
        help="folder for the clip cache and the runs' scratch (default bench-results)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
        args.long_clips, args.long_seconds = 2, 4.0
        args.short_clips, args.short_seconds = 6, 1.0
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not args.sets or any(s not in TARGETS for s in args.sets):
        parser.error(f"--sets {args.sets}: expected long and/or short")
    if args.rounds < 1 or min(args.long_clips, args.short_clips) < 1:
        parser.error("expected --rounds and clip counts of at least 1")
    args.results = args.results.resolve()  # worker commands run in other folders
    return args


def main() -> None:
    args = parse_args()
    try:
        if args.backend == "aws":
            from grid_aws import bench_aws  # only this mode needs boto3, moto and PostgreSQL

            figures = bench_aws(args)
        else:
            figures = bench(args)
    except BenchError as error:
        sys.exit(f"grid benchmark failed: {error}")
    print(json.dumps(figures))


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every set and side for every round; print the progress and the table."""
    started = time.monotonic()
    load = warn_if_busy()
    ffmpeg = find_ffmpeg(MediaSettings())
    options = TranscodeOptions(args.to_height, args.crf, args.preset, args.audio_bitrate)
    args.results.mkdir(parents=True, exist_ok=True)
    specs = {
        "long": ClipSpec(args.long_clips, args.long_seconds, 1280, 720, 30),
        "short": ClipSpec(args.short_clips, args.short_seconds, 1280, 720, 30),
    }
    sets: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(dir=args.results, prefix="s3-") as s3_work,
        MotoServer(Path(s3_work)) as s3,
    ):
        for name in args.sets:
            sets[name] = run_set(args, name, specs[name], ffmpeg, options, s3)
    figures = {
        "bench": "grid",
        "transcode": {
            "height": options.height,
            "preset": options.preset,
            "crf": options.crf,
            "audio_bitrate": options.audio_bitrate,
            "threads": 1,
        },
        "rounds": args.rounds,
        "workers": 2,
        "grid_prefetch": args.prefetch,
        "grid_pinned": args.pin,
        "grid_timed": "from submit_job (inputs uploaded) to the job succeeded in the store",
        "celery_timed": "from the first S3 upload to the last task result",
        "sets": sets,
        "targets_met": {name: s["targets_met"] for name, s in sets.items()},
        "load_at_start": round(load, 2),
        "took_s": round(time.monotonic() - started, 1),
    }
    print_table(figures)
    return figures


def run_set(  # noqa: PLR0917 - one call site
    args: argparse.Namespace,
    name: str,
    spec: ClipSpec,
    ffmpeg: str,
    options: TranscodeOptions,
    s3: MotoServer,
) -> dict[str, Any]:
    """Every round of one clip set, the sides taking turns; the set's figures."""
    clips = make_clips(ffmpeg, spec, args.results / "clips")
    runs: dict[str, list[Run]] = {side: [] for side in SIDES}
    extras: dict[str, list[dict[str, Any]]] = {"grid": [], "celery": []}
    for round_ in range(args.rounds):
        shift = round_ % len(SIDES)
        for side in [*SIDES[shift:], *SIDES[:shift]]:
            with tempfile.TemporaryDirectory(dir=args.results, prefix=f"{side}-") as work:
                if side == "xargs":
                    run = run_xargs(ffmpeg, clips, options, Path(work), spec.seconds)
                elif side == "grid":
                    run, extra = run_grid(
                        ffmpeg, clips, options, Path(work), spec.seconds, args.prefetch, args.pin
                    )
                    extras[side].append(extra)
                else:
                    run, cpu_s = run_celery(ffmpeg, clips, options, Path(work), spec.seconds, s3)
                    extras[side].append(cpu_s)
            runs[side].append(run)
            print(
                f"{name} round {round_ + 1}/{args.rounds} {side:<6} {run.items} clips in"
                f" {run.wall_s:6.2f} s  {run.rate:.3f} clips/s  CPU busy {run.cpu_percent:5.1f}%"
                f" (steal {run.steal_percent:.1f}%)",
                flush=True,
            )
    return summarise_set(name, spec, runs, extras["grid"], extras["celery"])


def summarise_set(
    name: str,
    spec: ClipSpec,
    runs: dict[str, list[Run]],
    profiles: list[dict[str, Any]],
    celery_cpu: list[dict[str, float]],
) -> dict[str, Any]:
    """One set's figures: medians, ratios (also per round), targets, the median grid run."""
    rate = {side: statistics.median(r.rate for r in rs) for side, rs in runs.items()}
    paired = {
        f"{a}/{b}": [round(x.rate / y.rate, 3) for x, y in zip(runs[a], runs[b], strict=True)]
        for a, b in (("grid", "xargs"), ("grid", "celery"), ("celery", "xargs"))
    }
    ratios = {
        "grid/xargs": round(rate["grid"] / rate["xargs"], 3),
        "grid/celery": round(rate["grid"] / rate["celery"], 3),
        "celery/xargs": round(rate["celery"] / rate["xargs"], 3),
    }
    least, beat_celery = TARGETS[name]
    met = ratios["grid/xargs"] >= least and (not beat_celery or ratios["grid/celery"] > 1)
    order = sorted(range(len(profiles)), key=lambda i: runs["grid"][i].wall_s)
    return {
        "clips": {
            "count": spec.count,
            "seconds": spec.seconds,
            "size": f"{spec.width}x{spec.height}",
            "fps": spec.fps,
        },
        "clips_per_s": {s: round(r, 4) for s, r in rate.items()},
        "wall_s": {s: round(statistics.median(r.wall_s for r in rs), 2) for s, rs in runs.items()},
        "cpu_busy_percent": {
            s: round(statistics.median(r.cpu_percent for r in rs), 1) for s, rs in runs.items()
        },
        "cpu_steal_percent": {
            s: round(statistics.median(r.steal_percent for r in rs), 1) for s, rs in runs.items()
        },
        "busy_core_s": {
            s: round(statistics.median(r.cpu_percent / 100 * CORES * r.wall_s for r in rs), 1)
            for s, rs in runs.items()
        },
        "ratios": ratios,
        "ratios_per_round": paired,
        "ratios_per_round_median": {k: round(statistics.median(v), 3) for k, v in paired.items()},
        "target": f"grid/xargs >= {least}" + (" and grid > celery" if beat_celery else ""),
        "targets_met": met,
        "celery_cpu_s": {
            k: round(statistics.median(c[k] for c in celery_cpu), 2) for k in celery_cpu[0]
        },
        "grid_profile": profiles[order[len(order) // 2]],
    }


def print_table(f: dict[str, Any]) -> None:
    t = f["transcode"]
    print()
    print(
        f"-> {t['height']}p libx264 {t['preset']} crf {t['crf']}, aac {t['audio_bitrate']},"
        f" -threads 1; 2 workers each (the grid's {'pinned' if f['grid_pinned'] else 'unpinned'},"
        f" prefetch {f['grid_prefetch']}); median of {f['rounds']} rounds"
    )
    for name, s in f["sets"].items():
        c = s["clips"]
        print(f"\n{name}: {c['count']} clips of {c['seconds']:g} s, {c['size']} {c['fps']} fps")
        print(f"{'':<28}{'grid':>10}{'xargs -P2':>12}{'celery+S3':>12}")
        for key, label, fmt in (
            ("clips_per_s", "clips/s", ".3f"),
            ("wall_s", "wall s", ".2f"),
            ("cpu_busy_percent", f"CPU busy, % of {CORES} cores", ".1f"),
            ("busy_core_s", "busy core-seconds", ".1f"),
        ):
            row = "".join(
                f"{s[key][side]:>{w}{fmt}}"
                for side, w in (("grid", 10), ("xargs", 12), ("celery", 12))
            )
            print(f"{label:<28}{row}")
        r, per = s["ratios"], s["ratios_per_round"]
        print(
            f"grid/xargs {r['grid/xargs']:.3f} (per round {per['grid/xargs']}), grid/celery"
            f" {r['grid/celery']:.3f} (per round {per['grid/celery']}), celery/xargs"
            f" {r['celery/xargs']:.3f}; target {s['target']}:"
            f" {'met' if s['targets_met'] else 'NOT met'}"
        )
        p = s["grid_profile"]
        print(
            f"median grid run: submit (upload) {p['submit_upload_s']:.2f} s, submit to first"
            f" handler start {p['submit_to_first_start_s']:.2f} s; per task fetch"
            f" {p['fetch_s']['median']:.3f} s, compute {p['compute_s']['median']:.2f} s, upload"
            f" {p['upload_s']['median']:.3f} s; gaps median"
            f" {p['gap_between_tasks_s'].get('median', 0):.3f} s, max"
            f" {p['gap_between_tasks_s'].get('max', 0):.3f} s; idle at end"
            f" {p['worker_idle_at_end_s']:.2f} s; last finish to job done"
            f" {p['last_finish_to_job_done_s']:.3f} s; handlers busy {p['handler_busy_share']:.1%};"
            f" CPU s {p['cpu_s']}"
        )
        print(f"celery CPU s (median run): {s['celery_cpu_s']}")
    print(f"\ntook {f['took_s']:.0f} s (load average {f['load_at_start']:.2f} at the start)")


if __name__ == "__main__":
    main()
