"""Telemetry benchmark (issue 9): a real manager taking a big fleet's heartbeats and metrics.

For each fleet size (``--sizes``, default 1000 nodes of 64 workers), simulated nodes
(``telemetry_sim.py``: real heartbeat and metrics frames, encoded by the grid's codec, from
one DEALER per node) send one heartbeat and one metrics frame per node per second to:

1. a plain ZeroMQ ROUTER that only receives, as fast as the senders can send: ZeroMQ's raw
   rate for these frames on this machine (the anchor);
2. the same plain ROUTER at the fleet's pace: the CPU share of merely receiving them;
3. a real ``batchfarm manager`` process (embedded SQLite store), at the fleet's pace, while
   this script scrapes its ``/metrics`` every 5 s: the manager's CPU share (psutil), its
   CPU per frame taken in (on a shared machine the manager may get less CPU than the pace
   needs: this times the frames/s needed is what the full pace would cost it), its store
   writes (node rows, changed worker rows, samples and transactions per second, from its
   own ``/metrics``), scrape latency, frames dropped, and whether it keeps up (every frame
   sent taken in within a few seconds of the end, nothing waiting).

The simulated nodes send the same frames every second (encoded once, see
``telemetry_sim.py``): after its first heartbeat no worker of theirs changes, so the
manager writes no worker row, and a node's row only for its last heartbeat (every
``NODE_SEEN_S``); a real fleet's changed rows come on top (a node whose CPU moves by 5
points or more is written each second). Metric samples are written as each series' latest,
every ``SAMPLE_INTERVAL_S``.

Target: the manager keeps up, drops nothing, and uses under half a core. Prints a table,
then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import telemetry_sim
from grid_procs import Grid, cpu_seconds, free_port
from node_runs import BenchError, stats, warn_if_busy
from prometheus_client.parser import text_string_to_metric_families

#: Processes the simulated nodes are spread over (the machine's cores).
SENDERS = 2
#: Seconds the simulated nodes get to start, connect and encode their frames.
READY_S = 180.0
#: Seconds the raw blast lasts.
BLAST_S = 5.0
#: Seconds between scrapes of the manager's /metrics, as the issue asks.
SCRAPE_S = 5.0
#: Seconds the manager gets after the last frame to have taken everything in.
CATCH_UP_S = 10.0
#: CPU share the manager must stay under.
TARGET_CORES = 0.5
#: The manager's counter of heartbeats and samples written to its store.
WRITTEN = "batchfarm_telemetry_written_total"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="1000x64",
        help="fleet sizes as NODESxWORKERS, comma-separated (default 1000x64)",
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="paced run length")
    parser.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, s")
    parser.add_argument("--quick", action="store_true", help="100x64 for 10 s (a smoke run)")
    return parser.parse_args(argv)


def senders(  # noqa: PLR0917 - the fleet's shape, passed on to each sender
    endpoint: str, nodes: int, workers: int, seconds: float, interval_s: float, paced: bool
) -> tuple[list[mp.process.BaseProcess], Any, float]:
    """Start the sender processes; they begin together at the returned start time.

    The start is set once every sender has connected and encoded its frames (about 1.6 ms
    a node), so a slow start on a busy machine never eats into the measured run.
    """
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Value("d", 0.0)
    share = -(-nodes // SENDERS)
    procs = []
    for first in range(0, nodes, share):
        count = min(share, nodes - first)
        proc = ctx.Process(
            target=telemetry_sim.send,
            args=(endpoint, first, count, workers, seconds, interval_s, paced, start, out),
        )
        proc.start()
        procs.append(proc)
    for _ in procs:
        try:
            out.get(timeout=READY_S)
        except queue.Empty:
            raise BenchError(f"the simulated nodes were not ready in {READY_S:g} s") from None
    start_at = time.time() + 0.5
    start.value = start_at
    return procs, out, start_at


def collect(procs: list[mp.process.BaseProcess], out: Any, timeout: float) -> dict[str, float]:
    results = [out.get(timeout=timeout) for _ in procs]
    for proc in procs:
        proc.join(10)
    return {key: sum(r[key] for r in results) for key in ("sent", "dropped", "cpu_s")}


def run_raw(nodes: int, workers: int, seconds: float, interval_s: float, paced: bool) -> dict:
    """The plain ROUTER: frames/s it took in (blast) or its CPU share (paced)."""
    ctx = mp.get_context("spawn")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    stop, ready, out = ctx.Event(), ctx.Event(), ctx.Queue()
    receiver = ctx.Process(target=telemetry_sim.receive, args=(endpoint, stop, ready, out))
    receiver.start()
    if not ready.wait(30):
        raise BenchError("the plain ROUTER did not start")
    procs, sent_q, start_at = senders(endpoint, nodes, workers, seconds, interval_s, paced)
    sent = collect(procs, sent_q, timeout=seconds + 120)
    time.sleep(1.0)  # what is in flight arrives
    stop.set()
    got = out.get(timeout=30)
    receiver.join(10)
    span = max(got["last"] - got["first"], 1e-9)
    return {
        "sent": sent["sent"],
        "dropped_at_sender": sent["dropped"],
        "received": got["frames"],
        "frames_per_s": got["frames"] / span,
        "mb_per_s": got["bytes"] / span / 1e6,
        "cpu_cores": got["cpu_s"] / (time.time() - start_at),
        "sender_cpu_s": sent["cpu_s"],
    }


def scrape(client: httpx.Client) -> tuple[float, dict[str, float]]:
    """GET /metrics: its latency, and every sample as ``name{labels}`` -> value."""
    started = time.perf_counter()
    response = client.get("/metrics")
    latency = time.perf_counter() - started
    response.raise_for_status()
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return latency, values


def frames_in(values: dict[str, float]) -> float:
    return sum(
        values.get(f'batchfarm_telemetry_frames_total{{kind="{k}"}}', 0)
        for k in ("heartbeat", "metrics")
    )


def run_manager(nodes: int, workers: int, seconds: float, interval_s: float) -> dict:
    """A real manager at the fleet's pace, scraped every few seconds (see the module)."""
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as work, Grid(Path(work)) as grid:
        grid.start("manager")
        client = httpx.Client(base_url=grid.settings.api.listen, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            grid.check_alive()
            try:
                if client.get("/api/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("the manager's API did not come up in 60 s")
            time.sleep(0.2)
        manager = psutil.Process(grid.procs["manager"].pid)
        # Read before the senders are released: no frame of the run can be counted in it.
        _, before = scrape(client)
        procs, sent_q, start_at = senders(
            grid.settings.node.manager, nodes, workers, seconds, interval_s, True
        )
        latencies: list[float] = []
        stop = threading.Event()

        def scraper() -> None:
            while not stop.wait(SCRAPE_S):
                latencies.append(scrape(client)[0])

        thread = threading.Thread(target=scraper, daemon=True)
        time.sleep(max(0.0, start_at - time.time()))
        cpu_before, wall_before = cpu_seconds([manager]), time.time()
        thread.start()
        sent = collect(procs, sent_q, timeout=seconds + 120)
        cpu_s, wall_s = cpu_seconds([manager]) - cpu_before, time.time() - wall_before
        _, at_end = scrape(client)  # what it had taken in for that CPU
        stop.set()
        thread.join(SCRAPE_S + 60)
        grid.check_alive()
        # Keeping up: every frame sent is taken in soon after the last one, nothing waits.
        caught_up = None
        end = time.monotonic()
        while time.monotonic() - end < CATCH_UP_S:
            _, after = scrape(client)
            if frames_in(after) - frames_in(before) >= sent["sent"]:
                caught_up = time.monotonic() - end
                break
            time.sleep(0.5)
        _, after = scrape(client)
        span_s = time.time() - start_at
        client.close()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    received = frames_in(after) - frames_in(before)
    taken = frames_in(at_end) - frames_in(before)
    writes = delta("batchfarm_store_write_seconds_count{}")
    return {
        "sent": sent["sent"],
        "dropped_at_sender": sent["dropped"],
        "received": received,
        "received_per_s": received / span_s,
        "caught_up_s": caught_up,
        "cpu_cores": cpu_s / wall_s,
        # On a shared machine the manager may get less CPU than it would use: its CPU per
        # frame it took in says what the fleet's full pace would cost it.
        "cpu_ms_per_frame": 1000 * cpu_s / taken if taken else None,
        # Counters over the span between the two scrapes, the catching up included.
        "beats_written_per_s": delta(f'{WRITTEN}{{kind="heartbeat"}}') / span_s,
        "workers_written_per_s": delta(f'{WRITTEN}{{kind="worker"}}') / span_s,
        "samples_written_per_s": delta(f'{WRITTEN}{{kind="sample"}}') / span_s,
        "write_transactions_per_s": writes / span_s,
        "write_mean_s": delta("batchfarm_store_write_seconds_sum{}") / writes if writes else 0.0,
        "samples_dropped": delta("batchfarm_telemetry_dropped_samples_total{}"),
        "rejected": sum(
            v for k, v in after.items() if k.startswith("batchfarm_telemetry_rejected")
        ),
        "loop_lag_mean_s": delta("batchfarm_manager_loop_lag_seconds_sum{}")
        / max(delta("batchfarm_manager_loop_lag_seconds_count{}"), 1),
        "scrape_s": stats(latencies),
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sizes = "100x64" if args.quick else args.sizes
    seconds = 10.0 if args.quick else args.seconds
    load = warn_if_busy()
    results: dict[str, Any] = {}
    for size in sizes.split(","):
        nodes, workers = (int(part) for part in size.lower().split("x"))
        rate = 2 * nodes / args.interval
        print(f"\n{nodes} nodes x {workers} workers: {rate:.0f} frames/s for {seconds:g} s")
        blast = run_raw(nodes, workers, BLAST_S, args.interval, paced=False)
        print(f"  raw ROUTER, as fast as it goes: {blast['frames_per_s']:.0f} frames/s")
        paced = run_raw(nodes, workers, seconds, args.interval, paced=True)
        print(f"  raw ROUTER at pace: {paced['cpu_cores']:.3f} cores")
        manager = run_manager(nodes, workers, seconds, args.interval)
        cores, caught_up = manager["cpu_cores"], manager["caught_up_s"]
        print(f"  manager at pace: {cores:.3f} cores, caught up after {caught_up} s")
        results[size] = {
            "frames_per_s_needed": rate,
            "raw_blast": blast,
            "raw_paced": paced,
            "manager": manager,
        }
    print_table(results)
    summary = {
        "bench": "telemetry",
        "load_at_start": round(load, 2),
        "seconds": seconds,
        "target_cores": TARGET_CORES,
        "sizes": {size: figures(result) for size, result in results.items()},
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


def figures(result: dict[str, Any]) -> dict[str, Any]:
    manager, blast, paced = result["manager"], result["raw_blast"], result["raw_paced"]
    caught_up = manager["caught_up_s"]
    keeps_up = manager["caught_up_s"] is not None and manager["samples_dropped"] == 0
    per_frame = manager["cpu_ms_per_frame"]
    projected = None if per_frame is None else per_frame * result["frames_per_s_needed"] / 1000
    return {
        "frames_per_s_needed": round(result["frames_per_s_needed"]),
        "raw_router_frames_per_s": round(blast["frames_per_s"]),
        "raw_router_cores_at_pace": round(paced["cpu_cores"], 3),
        "manager_cores": round(manager["cpu_cores"], 3),
        "manager_cpu_ms_per_frame": None if per_frame is None else round(per_frame, 4),
        "manager_cores_at_full_pace": None if projected is None else round(projected, 3),
        "manager_vs_raw_cores": round(manager["cpu_cores"] / max(paced["cpu_cores"], 1e-6), 1),
        "manager_frames_received": round(manager["received"]),
        "manager_frames_per_s": round(manager["received_per_s"]),
        "frames_sent": manager["sent"],
        "dropped_at_sender": manager["dropped_at_sender"],
        "samples_dropped": manager["samples_dropped"],
        "caught_up_s": None if caught_up is None else round(caught_up, 2),
        "keeps_up": keeps_up,
        "under_target": keeps_up and manager["cpu_cores"] < TARGET_CORES,
        "heartbeats_written_per_s": round(manager["beats_written_per_s"], 1),
        "workers_written_per_s": round(manager["workers_written_per_s"], 1),
        "samples_written_per_s": round(manager["samples_written_per_s"], 1),
        "store_transactions_per_s": round(manager["write_transactions_per_s"], 2),
        "store_write_mean_s": round(manager["write_mean_s"], 4),
        "loop_lag_mean_s": round(manager["loop_lag_mean_s"], 4),
        "scrape_s": manager["scrape_s"],
    }


def print_table(results: dict[str, Any]) -> None:
    rows = [
        ("frames/s needed", "frames_per_s_needed"),
        ("raw ROUTER max frames/s", "raw_router_frames_per_s"),
        ("raw ROUTER cores at pace", "raw_router_cores_at_pace"),
        ("manager cores at pace", "manager_cores"),
        ("manager CPU ms per frame", "manager_cpu_ms_per_frame"),
        ("manager cores at full pace", "manager_cores_at_full_pace"),
        ("manager / raw cores", "manager_vs_raw_cores"),
        ("frames sent", "frames_sent"),
        ("frames taken in by manager", "manager_frames_received"),
        ("manager frames/s taken in", "manager_frames_per_s"),
        ("caught up after (s)", "caught_up_s"),
        ("samples dropped", "samples_dropped"),
        ("heartbeats written/s", "heartbeats_written_per_s"),
        ("worker rows written/s", "workers_written_per_s"),
        ("samples written/s", "samples_written_per_s"),
        ("store transactions/s", "store_transactions_per_s"),
        ("store write mean (s)", "store_write_mean_s"),
        ("loop lag mean (s)", "loop_lag_mean_s"),
        ("keeps up, < 0.5 core", "under_target"),
    ]
    table = {size: figures(result) for size, result in results.items()}
    print()
    print(f"{'':32}" + "".join(f"{size:>16}" for size in table))
    for label, key in rows:
        print(f"{label:32}" + "".join(f"{t[key]!s:>16}" for t in table.values()))
    for size, t in table.items():
        s = t["scrape_s"]
        median, longest = s.get("median"), s.get("max")
        print(f"/metrics scrape at {size}: median {median} s, max {longest} s, n {s['n']}")


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as error:
        print(f"telemetry bench failed: {error}", file=sys.stderr)
        sys.exit(1)
