"""Overhead benchmark: no-op tasks end to end through batchfarm and four peers, in one run.

Run through ``scripts/bench/overhead``. TASKS no-op tasks are submitted, run and their
completion recorded, by each system with 2 worker processes, the systems taking turns for
ROUNDS rounds (fresh processes and state each time):

- batchfarm: ``batchfarm manager`` and ``batchfarm node`` (2 pinned workers, embedded
  backends) as real processes; one job of TASKS ``noop`` parts is submitted in this process
  with ``submit_job`` and timed until the store says the job succeeded (the manager has
  recorded every completion);
- Celery, Dramatiq and RQ on Redis, Huey on SQLite (``peers_run.py`` says how each is set
  up): timed from the first enqueue until every task's result is stored.

Every system first runs a few warm-up tasks (so all its workers are up); then every task
must have succeeded exactly once (batchfarm: each task succeeded in the store with one
recorded run; the peers: each task's stored result). Then the profile of where batchfarm's
time goes (``overhead_profile.py``). Figures are medians over the rounds; the last line is
one JSON object.
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

from grid_procs import Grid, check_all_once, noop_spec
from node_runs import RUN_TIMEOUT_S, BenchError, warn_if_busy
from overhead_profile import run_phases
from peers_run import CONFIGS, PEERS, PeerRun, run_peer

SYSTEMS = ("batchfarm", *PEERS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per run")
    parser.add_argument("--rounds", type=int, default=1, help="turns of each system")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, from {','.join(SYSTEMS)} (default: all)",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=9,
        choices=range(10),
        metavar="0..9",
        help="[batchfarm] node prefetch (default 9: no-ops run fastest)",
    )
    parser.add_argument(
        "--celery-prefetch", type=int, default=4, help="[celery] prefetch multiplier (default 4)"
    )
    parser.add_argument("--dramatiq-threads", type=int, default=8, help="[dramatiq] per process")
    parser.add_argument(
        "--huey-fsync",
        choices=("default", "on", "off"),
        default="off",
        help="[huey] SQLite synchronous: off (its fastest; Redis keeps no per-task fsync"
        " either), on, or SQLite's default",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip batchfarm's profile")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 500 tasks, 1 round, profile on 500"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("bench-results"),
        help="folder for the runs' scratch (default bench-results)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.rounds = 500, 1
    args.results = args.results.resolve()  # worker commands run in other folders
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown or "batchfarm" not in args.systems:
        parser.error(f"--systems {unknown or args.systems}: expected batchfarm and any of {PEERS}")
    if args.tasks < 10 or args.rounds < 1:
        parser.error("expected --tasks >= 10 and --rounds >= 1")
    return args


def main() -> None:
    args = parse_args()
    try:
        figures = bench(args)
    except BenchError as error:
        sys.exit(f"overhead benchmark failed: {error}")
    print(json.dumps(figures))


def run_batchfarm(count: int, work: Path, prefetch: int) -> tuple[PeerRun, dict[str, Any]]:
    """One timed batchfarm run: the figures as a PeerRun, and what the store shows of it."""
    with Grid(work, prefetch=prefetch) as grid:
        grid.start()
        grid.warm_up()
        client_before = time.process_time()
        run = grid.run(noop_spec(count), RUN_TIMEOUT_S)
        client = time.process_time() - client_before
        tasks = check_all_once(grid.store, run.job_id, "noop", count)
        job = grid.store.job(run.job_id)
    assert job is not None
    assert job.finished_at is not None
    first_start = min(t.started_at for t in tasks)
    last_finish = max(t.finished_at for t in tasks)
    recorded = sorted(t.updated_at for t in tasks)
    lags = sorted(t.updated_at - t.finished_at for t in tasks)
    shape = {
        "submit_s": round(run.submit_s, 3),
        "submit_to_first_start_s": round(first_start - run.submitted_at, 3),
        # Handlers' own span: a task's completion is sent (and its message deleted) later.
        "handler_span_s": round(last_finish - first_start, 3),
        "record_span_s": round(recorded[-1] - recorded[0], 3),
        "recorded_per_s": round(count / (recorded[-1] - recorded[0]), 1),
        "last_finish_to_job_done_s": round(job.finished_at - last_finish, 3),
        "record_lag_s": {
            "median": round(statistics.median(lags), 3),
            "max": round(lags[-1], 3),
        },
    }
    cpu = {**run.cpu_s, "client": round(client, 2)}
    return PeerRun(count, run.wall_s, run.submit_s, cpu), shape


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every system for every round, then the profile; print the table."""
    started = time.monotonic()
    load = warn_if_busy()
    args.results.mkdir(parents=True, exist_ok=True)
    options = {
        "celery_prefetch": args.celery_prefetch,
        "dramatiq_threads": args.dramatiq_threads,
        "huey_fsync": args.huey_fsync,
    }
    runs: dict[str, list[PeerRun]] = {s: [] for s in args.systems}
    shapes: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        shift = round_ % len(args.systems)
        for system in [*args.systems[shift:], *args.systems[:shift]]:
            with tempfile.TemporaryDirectory(dir=args.results, prefix=f"{system}-") as work:
                if system == "batchfarm":
                    run, shape = run_batchfarm(args.tasks, Path(work), args.prefetch)
                    shapes.append(shape)
                else:
                    run = run_peer(system, args.tasks, Path(work), options)
            runs[system].append(run)
            print(
                f"round {round_ + 1}/{args.rounds} {system:<10} {run.tasks:,} tasks in"
                f" {run.wall_s:7.2f} s  {run.rate:7,.0f} tasks/s  (enqueue {run.submit_s:.2f} s;"
                f" CPU s {run.cpu_s})",
                flush=True,
            )
    profile = None
    if not args.no_profile:
        with tempfile.TemporaryDirectory(dir=args.results, prefix="profile-") as work:
            profile = run_phases(args.tasks, Path(work), args.prefetch)
    figures = summarise(args, runs, shapes, profile)
    figures["load_at_start"] = round(load, 2)
    figures["took_s"] = round(time.monotonic() - started, 1)
    print_table(figures)
    return figures


def summarise(
    args: argparse.Namespace,
    runs: dict[str, list[PeerRun]],
    shapes: list[dict[str, Any]],
    profile: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON figures: median rates, every ratio, CPU per task, batchfarm's shape."""
    rate = {s: statistics.median(r.rate for r in rs) for s, rs in runs.items()}
    peers = [s for s in args.systems if s != "batchfarm"]
    fastest = max(peers, key=lambda s: rate[s]) if peers else None
    cpu_ms = {
        s: {
            part: round(
                1000 * statistics.median(r.cpu_s.get(part, 0.0) for r in rs) / args.tasks, 3
            )
            for part in rs[0].cpu_s
        }
        for s, rs in runs.items()
    }
    ratios = {f"batchfarm/{s}": round(rate["batchfarm"] / rate[s], 3) for s in peers}
    median_shape = sorted(shapes, key=lambda s: s["record_span_s"])[len(shapes) // 2]
    return {
        "bench": "overhead",
        "tasks": args.tasks,
        "rounds": args.rounds,
        "workers": 2,
        "config": {
            "batchfarm": f"manager + node of 2 pinned workers, prefetch {args.prefetch},"
            " embedded queue, blob store and SQLite store",
            **{
                p: CONFIGS[p].format(
                    celery_prefetch=args.celery_prefetch, huey_fsync=args.huey_fsync
                )
                for p in peers
            },
        },
        "tasks_per_s": {s: round(r, 1) for s, r in rate.items()},
        "wall_s": {s: round(statistics.median(r.wall_s for r in rs), 2) for s, rs in runs.items()},
        "enqueue_s": {
            s: round(statistics.median(r.submit_s for r in rs), 2) for s, rs in runs.items()
        },
        "cpu_ms_per_task": cpu_ms,
        "ratios": ratios,
        "fastest_peer": fastest,
        "targets_met": {
            "batchfarm>=fastest_peer": fastest is None or rate["batchfarm"] >= rate[fastest]
        },
        "batchfarm_run": median_shape,
        "batchfarm_profile": profile,
        "per_round": {
            s: [{"wall_s": round(r.wall_s, 2), "tasks_per_s": round(r.rate, 1)} for r in rs]
            for s, rs in runs.items()
        },
    }


def print_table(f: dict[str, Any]) -> None:
    print()
    print(f"{f['tasks']:,} no-op tasks, 2 worker processes each; median of {f['rounds']} rounds")
    print(
        f"{'':<11}{'tasks/s':>9}{'wall s':>9}{'enqueue s':>11}{'batchfarm/x':>13}  CPU ms per task"
    )
    for system, rate in f["tasks_per_s"].items():
        ratio = "" if system == "batchfarm" else f"{f['ratios'][f'batchfarm/{system}']:.3f}"
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in f["cpu_ms_per_task"][system].items())
        print(
            f"{system:<11}{rate:>9,.0f}{f['wall_s'][system]:>9.2f}{f['enqueue_s'][system]:>11.2f}"
            f"{ratio:>13}  {cpu}"
        )
    fastest = f["fastest_peer"]
    if fastest:
        met = "met" if f["targets_met"]["batchfarm>=fastest_peer"] else "NOT met"
        print(
            f"target batchfarm >= fastest peer ({fastest}):"
            f" {f['ratios'][f'batchfarm/{fastest}']:.3f}, {met}"
        )
    s = f["batchfarm_run"]
    print(
        f"batchfarm run: submit {s['submit_s']:.2f} s; handlers ran within"
        f" {s['handler_span_s']:.2f} s; the manager recorded"
        f" them over {s['record_span_s']:.2f} s ({s['recorded_per_s']:,.0f}/s), lag median"
        f" {s['record_lag_s']['median']:.2f} s, max {s['record_lag_s']['max']:.2f} s; last"
        f" finish to job done {s['last_finish_to_job_done_s']:.2f} s"
    )
    p = f["batchfarm_profile"]
    if p:
        node, manager, results = p["node_alone"], p["manager_alone"], p["results_profile"]
        print(
            f"profile, one part at a time: submit {p['submit_s']:.2f} s; node alone"
            f" {node['tasks_per_s']:,.0f} tasks/s settled (handlers within"
            f" {node['handler_span_s']:.1f} s), CPU {node['cpu_ms_per_task']:.2f} ms"
            f" per task (supervisor {node['cpu_s']['supervisor']:.1f} s, workers"
            f" {node['cpu_s']['workers']:.1f} s); manager alone records"
            f" {manager['recorded_per_s']:,.0f}/s at {manager['cpu_ms_per_task']:.2f} ms CPU"
            f" per task; queue floor {p['queue_floor_msgs_per_s']:,.0f} msgs/s"
        )
        print(
            f"manager's results step under cProfile ({results['steps']} steps of"
            f" {results['events_per_step']:.1f} events, {results['profiled_events_per_s']:,.0f}"
            " events/s profiled), ms per step: "
            + ", ".join(f"{k} {v:.2f}" for k, v in results["ms_per_step"].items())
        )
        print_node_profile(p["node_profile"], node["max_in_flight"])
    print(f"took {f['took_s']:.0f} s (load average {f['load_at_start']:.2f} at the start)")


def print_node_profile(n: dict[str, Any], held_alone: int) -> None:
    """The profiled node's busiest functions per process (self time, waits left out)."""
    print(
        f"node under cProfile ({n['tasks']:,} tasks): workers held up to {n['max_in_flight']:,}"
        f" messages at once (unprofiled run of all tasks: {held_alone:,})"
    )
    for role, found in n["processes"].items():
        top = "; ".join(f"{t['function']} {t['share']:.0%}" for t in found["top"][:5])
        print(f"  {role}: busy {found['busy_self_s']:.1f} s: {top}")


if __name__ == "__main__":
    main()
