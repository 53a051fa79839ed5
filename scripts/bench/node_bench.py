"""Node benchmark: clips/s of one batchfarm node beside ``xargs -P2 ffmpeg``, in one run.

Run through ``scripts/bench/node``. The same generated clips (made once, cached in
``bench-results/clips/``) are transcoded two ways, the sides taking turns for ROUNDS rounds:

- xargs: ``xargs -P2`` runs the very ffmpeg command the ``transcode`` handler runs
  (``-threads 1``) on local files; timed over the whole xargs command. This is the physical
  limit of the machine.
- node: the clips go into a fresh embedded blob store and their tasks into the queue; then
  ``batchfarm node --until-empty`` runs with 2 pinned workers, fetching inputs from the store
  and storing outputs in it; timed from launching the node to seeing the last completion.

Every output of both sides is checked (an H.264 + AAC MP4 of the asked height and length),
every completion must be ok. CPU is the machine-wide busy share over each run. Then no-ops:
tasks/s through one node beside the embedded queue's own floor (two processes doing
receive(10) + delete_batch on as many messages). Figures are medians over the rounds; the
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from node_runs import (
    PARALLEL,
    BenchError,
    ClipSpec,
    Run,
    make_clips,
    run_node,
    run_noop_node,
    run_queue_floor,
    run_xargs,
    stats,
    warn_if_busy,
)

from batchfarm.actors.handlers.ffmpeg import find_ffmpeg
from batchfarm.actors.handlers.transcode import PRESETS, TranscodeOptions
from batchfarm.actors.messages import Completion
from batchfarm.actors.settings import MediaSettings

TARGET_NODE_VS_XARGS = 0.97
CORES = psutil.cpu_count() or 1


def _even(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value % 2 or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{text}: expected an even number from {low} to {high}"
            )
        return value

    return parse


def _at_least(low: float, kind: type = int) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text}: expected at least {low}")
        return value

    return parse


def _bitrate(text: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]{1,2}k", text) or not 16 <= int(text[:-1]) <= 512:
        raise argparse.ArgumentTypeError(f'{text}: expected a bitrate from "16k" to "512k"')
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    clips = parser.add_argument_group("input clips (generated once, then cached)")
    clips.add_argument("--clips", type=_at_least(1), default=8, help="how many (default 8)")
    clips.add_argument("--seconds", type=_at_least(1.0, float), default=20.0, help="length")
    clips.add_argument("--width", type=_even(16, 7680), default=1280)
    clips.add_argument("--height", type=_even(16, 4320), default=720)
    clips.add_argument("--fps", type=_at_least(1), default=30)
    target = parser.add_argument_group("transcode target (the handler's parameters)")
    target.add_argument("--to-height", type=_even(16, 4320), default=480)
    target.add_argument("--preset", choices=PRESETS, default="veryfast")
    target.add_argument("--crf", type=int, choices=range(52), default=23, metavar="0..51")
    target.add_argument("--audio-bitrate", type=_bitrate, default="128k")
    parser.add_argument("--rounds", type=_at_least(1), default=3, help="turns of each side")
    parser.add_argument(
        "--prefetch", type=int, choices=range(10), default=1, metavar="0..9",
        help="[node] prefetch of the transcoding node (default 1, the config default)",
    )  # fmt: skip
    parser.add_argument("--noop-tasks", type=_at_least(10), default=3000)
    parser.add_argument("--noop-prefetch", type=int, choices=range(10), default=9, metavar="0..9")
    parser.add_argument(
        "--results", type=Path, default=Path("bench-results"),
        help="folder for the clip cache and the runs' scratch (default bench-results)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    try:
        figures = bench(args)
    except BenchError as error:
        sys.exit(f"node benchmark failed: {error}")
    print(json.dumps(figures))


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement, print the progress and the table; return the figures."""
    started = time.monotonic()
    load = warn_if_busy()
    ffmpeg = find_ffmpeg(MediaSettings())
    spec = ClipSpec(args.clips, args.seconds, args.width, args.height, args.fps)
    options = TranscodeOptions(args.to_height, args.crf, args.preset, args.audio_bitrate)
    args.results.mkdir(parents=True, exist_ok=True)
    clips = make_clips(ffmpeg, spec, args.results / "clips")

    runs: dict[str, list[Run]] = {"node": [], "xargs": []}
    for round_ in range(args.rounds):
        for side in ("xargs", "node") if round_ % 2 == 0 else ("node", "xargs"):
            with tempfile.TemporaryDirectory(dir=args.results, prefix=f"{side}-") as work:
                if side == "xargs":
                    run = run_xargs(ffmpeg, clips, options, Path(work), spec.seconds)
                else:
                    run = run_node(ffmpeg, clips, options, Path(work), spec.seconds, args.prefetch)
            runs[side].append(run)
            print(f"round {round_ + 1}/{args.rounds} {side:<5} {_run_line(run)}", flush=True)

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(dir=args.results, prefix="floor-") as work:
        floor = run_queue_floor(args.noop_tasks, Path(work), ctx)
    with tempfile.TemporaryDirectory(dir=args.results, prefix="noop-") as work:
        noop = run_noop_node(args.noop_tasks, Path(work), args.noop_prefetch)
    figures = summarise(args, spec, options, runs, noop, floor)
    figures["load_at_start"] = round(load, 2)
    figures["took_s"] = round(time.monotonic() - started, 1)
    print_table(figures)
    return figures


def profile(run: Run) -> dict[str, Any]:
    """Where a node run's time went, from its completions: start-up, steps, gaps, the end.

    ``worker_idle_at_end_s`` sums, over workers, the time from a worker's last handler end to
    the end of the run: a pinned worker with no task left leaves its core unused.
    """
    by_worker: dict[int, list[Completion]] = {}
    for event in sorted(run.events, key=lambda e: e.started_at):
        by_worker.setdefault(event.worker, []).append(event)
    gaps = [
        later.started_at - earlier.finished_at
        for runs in by_worker.values()
        for earlier, later in itertools.pairwise(runs)
    ]
    first = {w: runs[0].started_at - run.launched for w, runs in by_worker.items()}
    ends = {w: runs[-1].finished_at for w, runs in by_worker.items()}
    end = run.launched + run.wall_s
    compute = sum(e.timings.compute_s for e in run.events)
    return {
        "start_to_first_task_s": round(min(first.values()), 3),
        "start_to_first_task_per_worker_s": {str(w): round(s, 3) for w, s in first.items()},
        "tasks_per_worker": {str(w): len(runs) for w, runs in by_worker.items()},
        "fetch_s": stats([e.timings.fetch_s for e in run.events]),
        "compute_s": stats([e.timings.compute_s for e in run.events]),
        "upload_s": stats([e.timings.upload_s for e in run.events]),
        "gap_between_tasks_s": stats(gaps),
        "worker_idle_at_end_s": round(sum(end - t for t in ends.values()), 3),
        "last_finished_to_seen_s": round(end - max(ends.values()), 3),
        "handler_busy_share": round(compute / (PARALLEL * run.wall_s), 4),
        "task_cpu_s_total": round(sum(e.cpu_s for e in run.events), 2),
    }


def _run_line(run: Run) -> str:
    line = (
        f"{run.items} clips in {run.wall_s:6.2f} s  {run.rate:.3f} clips/s"
        f"  CPU busy {run.cpu_percent:5.1f}% (steal {run.steal_percent:.1f}%)"
    )
    if run.events:
        p = profile(run)
        line += (
            f"  start-up {p['start_to_first_task_s']:.2f} s, gaps max "
            f"{p['gap_between_tasks_s'].get('max', 0):.2f} s, idle at end "
            f"{p['worker_idle_at_end_s']:.2f} s"
        )
    return line


def summarise(  # noqa: PLR0917 - one call site
    args: argparse.Namespace,
    spec: ClipSpec,
    options: TranscodeOptions,
    runs: dict[str, list[Run]],
    noop: Run,
    floor: Run,
) -> dict[str, Any]:
    """The JSON figures: medians, ratios, the median node run's profile, every round."""
    median = {
        side: {
            "clips_per_s": statistics.median(r.rate for r in side_runs),
            "wall_s": statistics.median(r.wall_s for r in side_runs),
            "cpu_busy_percent": statistics.median(r.cpu_percent for r in side_runs),
            "cpu_steal_percent": statistics.median(r.steal_percent for r in side_runs),
            # Core-seconds the machine spent busy: the same clips cost each side this much.
            "busy_core_s": statistics.median(
                r.cpu_percent / 100 * CORES * r.wall_s for r in side_runs
            ),
        }
        for side, side_runs in runs.items()
    }
    ratio = median["node"]["clips_per_s"] / median["xargs"]["clips_per_s"]
    # The sides' rounds are paired (they ran back to back): a steadier view of the ratio.
    paired = [n.rate / x.rate for n, x in zip(runs["node"], runs["xargs"], strict=True)]
    node_runs = sorted(runs["node"], key=lambda r: r.wall_s)
    return {
        "bench": "node",
        "clips": {
            "count": spec.count,
            "seconds": spec.seconds,
            "size": f"{spec.width}x{spec.height}",
            "fps": spec.fps,
        },
        "transcode": {
            "height": options.height,
            "preset": options.preset,
            "crf": options.crf,
            "audio_bitrate": options.audio_bitrate,
            "threads": 1,
        },
        "rounds": args.rounds,
        "workers": PARALLEL,
        "prefetch": args.prefetch,
        "clips_per_s": {s: round(m["clips_per_s"], 4) for s, m in median.items()},
        "wall_s": {s: round(m["wall_s"], 2) for s, m in median.items()},
        "cpu_busy_percent": {s: round(m["cpu_busy_percent"], 1) for s, m in median.items()},
        "cpu_steal_percent": {s: round(m["cpu_steal_percent"], 1) for s, m in median.items()},
        "busy_core_s": {s: round(m["busy_core_s"], 1) for s, m in median.items()},
        "node_timed": "from launching the node to seeing the last completion event",
        "noop": {
            "tasks": noop.items,
            "prefetch": args.noop_prefetch,
            "node_tasks_per_s": round(noop.rate, 1),
            "queue_floor_msgs_per_s": round(floor.rate, 1),
            "node_cpu_busy_percent": round(noop.cpu_percent, 1),
        },
        "ratios": {
            "node/xargs": round(ratio, 3),
            "node/xargs_per_round": [round(r, 3) for r in paired],
            "node/xargs_per_round_median": round(statistics.median(paired), 3),
            "noop_node/queue_floor": round(noop.rate / floor.rate, 3),
        },
        "targets_met": {"node/xargs": ratio >= TARGET_NODE_VS_XARGS},
        "node_profile": profile(node_runs[len(node_runs) // 2]),
        "per_round": {
            side: [
                {
                    "wall_s": round(r.wall_s, 2),
                    "cpu_busy_percent": round(r.cpu_percent, 1),
                    "cpu_steal_percent": round(r.steal_percent, 1),
                }
                for r in side_runs
            ]
            for side, side_runs in runs.items()
        },
    }


def print_table(f: dict[str, Any]) -> None:
    clips, target = f["clips"], f["transcode"]
    print()
    print(
        f"{clips['count']} clips of {clips['seconds']:g} s, {clips['size']} {clips['fps']} fps,"
        f" -> {target['height']}p libx264 {target['preset']} crf {target['crf']},"
        f" aac {target['audio_bitrate']}, -threads 1; median of {f['rounds']} rounds"
    )
    print(f"{'':<28}{'node':>10}{'xargs -P2':>12}")
    for key, label, fmt in (
        ("clips_per_s", "clips/s", ".3f"),
        ("wall_s", "wall s", ".2f"),
        ("cpu_busy_percent", f"CPU busy, % of {CORES} cores", ".1f"),
        ("cpu_steal_percent", "CPU stolen by the host, %", ".1f"),
        ("busy_core_s", "busy core-seconds", ".1f"),
    ):
        print(f"{label:<28}{f[key]['node']:>10{fmt}}{f[key]['xargs']:>12{fmt}}")
    met = "met" if f["targets_met"]["node/xargs"] else "NOT met"
    ratios = f["ratios"]
    print(
        f"node/xargs {ratios['node/xargs']:.3f} (target >= {TARGET_NODE_VS_XARGS}): {met};"
        f" per round {ratios['node/xargs_per_round']}, their median"
        f" {ratios['node/xargs_per_round_median']:.3f}"
    )
    p = f["node_profile"]
    print(
        f"median node run: launch to first handler start {p['start_to_first_task_s']:.2f} s;"
        f" per task fetch {p['fetch_s']['median']:.3f} s, compute {p['compute_s']['median']:.2f}"
        f" s, upload {p['upload_s']['median']:.3f} s; gaps between a worker's tasks median"
        f" {p['gap_between_tasks_s'].get('median', 0):.3f} s, max"
        f" {p['gap_between_tasks_s'].get('max', 0):.3f} s; workers idle at the end"
        f" {p['worker_idle_at_end_s']:.2f} s in all; last handler end to event seen"
        f" {p['last_finished_to_seen_s']:.3f} s; handlers busy {p['handler_busy_share']:.1%}"
    )
    n = f["noop"]
    print(
        f"no-op, {n['tasks']:,} tasks: node {n['node_tasks_per_s']:,.0f} tasks/s ({PARALLEL}"
        f" workers, prefetch {n['prefetch']}); queue floor {n['queue_floor_msgs_per_s']:,.0f}"
        f" msgs/s (receive(10)+delete_batch, {PARALLEL} procs);"
        f" node/floor {f['ratios']['noop_node/queue_floor']:.3f}"
    )
    print(f"took {f['took_s']:.0f} s (load average {f['load_at_start']:.2f} at the start)")


if __name__ == "__main__":
    main()
