"""Autoscaling benchmark: a bursty day replayed under batchfarm's policy and a hand-made one.

Run through ``scripts/bench/autoscale``. First one real transcode task is timed on this
machine (a generated 60 s 1920x1080 clip to 720p with libx264 veryfast on one thread): the
day's tasks last that long on average (log-normal, sigma 0.25). Then the day: a
month-end spike of TASKS tasks in JOBS jobs submitted over BURST minutes, then idle, on
nodes of WORKERS workers that take 60 to 120 s to boot. It is replayed (``autoscale_sim``)
under:

- batchfarm: the autoscaler's real policy code (``batchfarm.actors.manager.autoscale``),
  looking every 15 s at the backlog, in-flight tasks and measured task time;
- target tracking: what a user sets up by hand on AWS, on the queue's visible messages per
  instance, with the target AWS's guide gives (acceptable latency / task time, per worker).

Both get the same limits and the same latency goal (``--target-drain``). Figures are medians
over SEEDS replays, with where the node-hours went (booting, busy with tasks, idle workers);
the last line is one JSON object. Target: at least 20 % fewer node-hours than target
tracking at an equal or better p95 job latency, and no task lost.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autoscale_sim import Job, Result, Sim, batchfarm_policy, target_tracking_policy

from batchfarm.actors.manager.autoscale import ScalingLimits

TARGET_SAVING = 0.20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000, help="tasks in the spike")
    parser.add_argument("--jobs", type=int, default=30, help="jobs they come in")
    parser.add_argument("--burst", type=float, default=10.0, help="minutes the spike arrives over")
    parser.add_argument("--workers", type=int, default=8, help="workers per node")
    parser.add_argument("--max-nodes", type=int, default=40, help="the class's maximum")
    parser.add_argument(
        "--target-drain",
        default="300,600,900",
        help="latency goals to replay, seconds, comma-separated (both policies get each)",
    )
    parser.add_argument("--hours", type=float, default=6.0, help="length of the day replayed")
    parser.add_argument(
        "--clip", type=float, default=60.0, help="seconds of the 1080p clip a task transcodes"
    )
    parser.add_argument("--seeds", type=int, default=5, help="replays per policy")
    parser.add_argument(
        "--task-s", type=float, default=0.0, help="mean task seconds (default: measure one)"
    )
    return parser.parse_args(argv)


def measure_task_s(cache: Path, clip_s: float) -> float:
    """Seconds one real transcode task takes on one core here: a 1080p clip to 720p."""
    # Imported here: with --task-s the replay needs neither ffmpeg nor the handlers.
    from node_runs import ClipSpec, make_clips

    from batchfarm.actors.handlers.ffmpeg import find_ffmpeg
    from batchfarm.actors.settings import MediaSettings

    ffmpeg = find_ffmpeg(MediaSettings())
    clip = make_clips(ffmpeg, ClipSpec(1, clip_s, 1920, 1080, 30), cache)[0]
    times = []
    for _ in range(1):
        start = time.perf_counter()
        subprocess.run(
            [
                *(ffmpeg, "-nostdin", "-v", "error", "-y", "-threads", "1", "-i", str(clip)),
                *("-vf", "scale=-2:720", "-c:v", "libx264", "-preset", "veryfast", "-threads", "1"),
                *("-c:a", "aac", "-b:a", "128k", "-f", "mp4", "/dev/null"),
            ],
            check=True,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_day(args: argparse.Namespace, task_s: float, seed: int) -> list[Job]:
    """The spike: JOBS jobs sharing TASKS tasks, submitted over BURST minutes from t=30 min."""
    rng = random.Random(seed)
    sigma = 0.25
    mu = math.log(task_s) - sigma**2 / 2  # so the mean is task_s
    jobs = []
    per_job = args.tasks // args.jobs
    for i in range(args.jobs):
        count = per_job + (1 if i < args.tasks % args.jobs else 0)
        submitted = 1800.0 + rng.uniform(0, args.burst * 60)
        durations = tuple(rng.lognormvariate(mu, sigma) for _ in range(count))
        jobs.append(Job(submitted, durations))
    return jobs


def replay(args: argparse.Namespace, task_s: float, goal_s: float) -> dict[str, list[Result]]:
    limits = ScalingLimits(
        min_nodes=0,
        max_nodes=args.max_nodes,
        workers_per_node=args.workers,
        target_drain_s=goal_s,
    )
    # AWS's guide: acceptable backlog per instance = acceptable latency / time per message,
    # times the messages an instance works on at once.
    target = goal_s / task_s * args.workers
    results: dict[str, list[Result]] = {"batchfarm": [], "target tracking": []}
    for seed in range(args.seeds):
        day = make_day(args, task_s, seed)
        # What the manager's store knows of this handler from earlier runs.
        history = make_day(args, task_s, seed + 1000)[0].durations
        sim = Sim(day, args.workers, seed, history)
        results["batchfarm"].append(sim.run(batchfarm_policy(limits), 15, args.hours * 3600))
        sim = Sim(day, args.workers, seed)
        tracking = target_tracking_policy(limits, target)
        results["target tracking"].append(sim.run(tracking, 60, args.hours * 3600))
    return results


def summary(runs: list[Result]) -> dict[str, float]:
    """Medians over the replays of node-hours, p50 and p95 job latency, losses, re-runs."""

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {
        "node_hours": round(statistics.median(r.node_hours for r in runs), 2),
        "p50_s": round(statistics.median(pct(r.latencies, 0.5) for r in runs), 1),
        "p95_s": round(statistics.median(pct(r.latencies, 0.95) for r in runs), 1),
        "lost": max(r.lost for r in runs),
        "reruns": round(statistics.median(r.reruns for r in runs), 1),
        "peak_nodes": max(r.peak_nodes for r in runs),
        "booting_hours": round(statistics.median(r.booting_hours for r in runs), 2),
        "busy_hours": round(statistics.median(r.busy_hours for r in runs), 2),
        "idle_hours": round(statistics.median(r.idle_hours for r in runs), 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache = Path(tempfile.gettempdir()) / "batchfarm-bench-clips"
    task_s = args.task_s or measure_task_s(cache, args.clip)
    print(
        f"day: {args.tasks} tasks of ~{task_s:.1f} s (measured: one {args.clip:g} s 1080p clip "
        f"to 720p, libx264 veryfast, 1 thread) in {args.jobs} jobs over {args.burst:g} min, "
        "then idle; "
        f"{args.hours:g} h; nodes of {args.workers} workers booting in 60-120 s; "
        f"max {args.max_nodes} nodes; latency goals {args.target_drain} s; {args.seeds} seeds"
    )
    goals = [float(g) for g in args.target_drain.split(",")]
    print(
        f"\n{'goal s':>7}  {'policy':<16}{'node-h':>9}{'p50 s':>9}{'p95 s':>9}"
        f"{'lost':>6}{'re-runs':>9}{'peak':>6}   node-h: {'boot':>5}{'busy':>6}{'idle':>6}"
    )
    per_goal = []
    for goal in goals:
        rows = {name: summary(runs) for name, runs in replay(args, task_s, goal).items()}
        for name, row in rows.items():
            print(
                f"{goal:>7.0f}  {name:<16}{row['node_hours']:>9.2f}{row['p50_s']:>9.0f}"
                f"{row['p95_s']:>9.0f}{row['lost']:>6.0f}{row['reruns']:>9.0f}"
                f"{row['peak_nodes']:>6.0f}           {row['booting_hours']:>5.2f}"
                f"{row['busy_hours']:>6.2f}{row['idle_hours']:>6.2f}"
            )
        ours, theirs = rows["batchfarm"], rows["target tracking"]
        # No policy can use fewer node-hours than the work itself (no boot, no idle second).
        floor = (
            statistics.median(
                sum(sum(job.durations) for job in make_day(args, task_s, seed))
                for seed in range(args.seeds)
            )
            / args.workers
            / 3600
        )
        best_saving = 1 - floor / theirs["node_hours"]
        saving = 1 - ours["node_hours"] / theirs["node_hours"]
        p95_ratio = ours["p95_s"] / theirs["p95_s"]
        met = saving >= TARGET_SAVING and p95_ratio <= 1.0 and ours["lost"] == 0
        per_goal.append(
            {
                "goal_s": goal,
                "policies": rows,
                "work_floor_node_hours": round(floor, 2),
                "best_possible_saving": round(best_saving, 3),
                "node_hours_saving": round(saving, 3),
                "p95_ratio": round(p95_ratio, 3),
                "target_met": met,
            }
        )
    print()
    for entry in per_goal:
        print(
            f"latency goal {entry['goal_s']:.0f} s: node-hours saved "
            f"{entry['node_hours_saving']:.1%} (target >= {TARGET_SAVING:.0%}; a policy with no "
            f"boot and no idle second would save {entry['best_possible_saving']:.1%}), p95 "
            f"batchfarm/target tracking {entry['p95_ratio']:.2f} (target <= 1.00) -> target "
            f"{'met' if entry['target_met'] else 'NOT met'}"
        )
    figures: dict[str, Any] = {
        "bench": "autoscale",
        "task_s": round(task_s, 2),
        "tasks": args.tasks,
        "seeds": args.seeds,
        "goals": per_goal,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
