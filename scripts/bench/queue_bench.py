"""Queue benchmark: batchfarm's LocalQueue beside raw SQLite (the floor) and persist-queue.

Run through ``scripts/bench/queue``. For each system, in fresh files, in the same run:

- send: one process sends N messages in batches of 10 (``send_batch``);
- consume: two processes drain those N messages with ``receive(10)`` + ``delete_batch``,
  started together; the rate is N over the span from the first take to the last ack.

Every figure is the median of ROUNDS rounds, the systems taking turns within each round.
Then LocalQueue's long-poll wake latency (send -> receive returns, another process) and
the CPU a long poll burns on an empty queue. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from multiprocessing.queues import Queue as MpQueue
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

from queue_systems import SYSTEMS, open_adapter

from batchfarm.actors.backends.queue.local import LocalQueue

BODY_BYTES = 200
BATCH = 10
TARGET_VS_RAW = 0.5
TARGET_VS_PEER = 2.0


def body(tag: int) -> str:
    return f"{tag:08d}".ljust(BODY_BYTES, "x")


# -- child processes (spawned: each opens its own queue) -----------------------------------------


def sender(system: str, directory: str, count: int, results: MpQueue[Any]) -> None:
    adapter = open_adapter(system, Path(directory), consumer=False)
    batches = [[body(i + j) for j in range(BATCH)] for i in range(0, count, BATCH)]
    start = time.perf_counter()
    for batch in batches:
        adapter.send_batch(batch)
    elapsed = time.perf_counter() - start
    adapter.close()
    results.put(elapsed)


def consumer(system: str, directory: str, start: Barrier, results: MpQueue[Any]) -> None:
    adapter = open_adapter(system, Path(directory), consumer=True)
    seen: list[str] = []
    start.wait()  # both consumers have opened their queue
    first = time.time()
    last = first
    while taken := adapter.take(BATCH):
        adapter.ack([handle for handle, _ in taken])
        last = time.time()
        seen += [b[:8] for _, b in taken]
    adapter.close()
    results.put((first, last, seen))


def waiter(directory: str, tries: int, ready: Event, results: MpQueue[Any]) -> None:
    with LocalQueue(Path(directory) / "poll.db", "poll") as queue:
        for _ in range(tries):
            ready.set()
            got = queue.receive(1, wait_s=10)
            results.put(time.time())
            queue.delete_batch([m.receipt for m in got])


def idler(directory: str, wait_s: float, results: MpQueue[Any]) -> None:
    with LocalQueue(Path(directory) / "idle.db", "idle") as queue:
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        queue.receive(10, wait_s=wait_s)
        wall = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    results.put((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / wall)


# -- measurements ----------------------------------------------------------------------------


def measure_round(system: str, count: int, ctx: Any) -> tuple[float, float, int]:
    """One round for one system: (send msgs/s, consume msgs/s, messages seen twice)."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{system}-") as directory:
        results: MpQueue[Any] = ctx.Queue()
        proc = ctx.Process(target=sender, args=(system, directory, count, results))
        proc.start()
        send_s = results.get()
        proc.join()

        start = ctx.Barrier(3)
        procs = [
            ctx.Process(target=consumer, args=(system, directory, start, results)) for _ in range(2)
        ]
        for proc in procs:
            proc.start()
        start.wait()
        reports = [results.get() for _ in procs]
        for proc in procs:
            proc.join()
    span = max(last for _, last, _ in reports) - min(first for first, _, _ in reports)
    seen = [tag for _, _, tags in reports for tag in tags]
    if len(set(seen)) != count:
        sys.exit(f"{system}: consumers saw {len(set(seen))} distinct messages, not {count}")
    return count / send_s, count / span, len(seen) - count


def wake_latency(ctx: Any, tries: int) -> list[float]:
    """Milliseconds from starting a send to another process's long poll returning."""
    with tempfile.TemporaryDirectory(prefix="bench-poll-") as directory:
        ready, results = ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=waiter, args=(directory, tries, ready, results))
        latencies = []
        with LocalQueue(Path(directory) / "poll.db", "poll") as queue:
            proc.start()
            for i in range(tries):
                ready.wait()
                ready.clear()
                time.sleep(0.1 + 0.01 * (i % 5))  # land anywhere in its poll interval
                sent = time.time()
                queue.send("ping")
                latencies.append((results.get() - sent) * 1000)
        proc.join()
    return latencies


def idle_cpu(ctx: Any, wait_s: float) -> float:
    """Share of one CPU a long poll on an empty queue uses."""
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as directory:
        LocalQueue(Path(directory) / "idle.db", "idle").close()
        results: MpQueue[Any] = ctx.Queue()
        proc = ctx.Process(target=idler, args=(directory, wait_s, results))
        proc.start()
        share: float = results.get()
        proc.join()
    return share


# -- report ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    count = args.messages - args.messages % BATCH
    ctx = mp.get_context("spawn")

    rates: dict[str, dict[str, list[float]]] = {s: {"send": [], "consume": []} for s in SYSTEMS}
    duplicates = dict.fromkeys(SYSTEMS, 0)
    started = time.monotonic()
    for round_ in range(args.rounds):
        for system in SYSTEMS:
            send, consume, twice = measure_round(system, count, ctx)
            rates[system]["send"].append(send)
            rates[system]["consume"].append(consume)
            duplicates[system] += twice
            print(
                f"round {round_ + 1}/{args.rounds} {system:<9} send {send:>9,.0f}/s"
                f"  consume {consume:>9,.0f}/s  delivered twice {twice}",
                flush=True,
            )
    latencies = wake_latency(ctx, tries=15)
    idle = idle_cpu(ctx, wait_s=3.0)

    median = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in rates.items()}
    ratios = {
        phase: {
            "batchfarm/raw": median["batchfarm"][phase] / median["raw"][phase],
            "batchfarm/peer": median["batchfarm"][phase] / median["peer"][phase],
        }
        for phase in ("send", "consume")
    }
    print()
    print(f"{count:,} messages of {BODY_BYTES} bytes per round; median of {args.rounds} rounds")
    print(f"{'messages/s':<34}{'batchfarm':>11}{'raw sqlite':>12}{'persist-queue':>15}")
    for phase, label in (("send", "send_batch(10)"), ("consume", "receive(10)+delete, 2 procs")):
        row = "".join(
            f"{median[s][phase]:>{w},.0f}" for s, w in zip(SYSTEMS, (11, 12, 15), strict=True)
        )
        print(f"{label:<34}{row}")
    for phase in ("send", "consume"):
        vs_raw, vs_peer = ratios[phase]["batchfarm/raw"], ratios[phase]["batchfarm/peer"]
        print(
            f"{phase:<8} batchfarm/raw {vs_raw:.2f} (target >= {TARGET_VS_RAW})"
            f"  batchfarm/peer {vs_peer:.2f} (target >= {TARGET_VS_PEER})"
        )
    print(f"messages delivered twice: {duplicates}")
    print(
        f"long-poll wake, send -> receive returns in another process: median "
        f"{statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms "
        f"({len(latencies)} tries)"
    )
    print(f"idle long poll: {idle * 100:.2f}% of one CPU")
    print(f"took {time.monotonic() - started:.0f} s")
    figures = {
        "bench": "queue",
        "messages": count,
        "body_bytes": BODY_BYTES,
        "rounds": args.rounds,
        "msgs_per_s": {s: {k: round(v) for k, v in m.items()} for s, m in median.items()},
        "ratios": {p: {k: round(v, 2) for k, v in r.items()} for p, r in ratios.items()},
        "targets_met": {
            p: r["batchfarm/raw"] >= TARGET_VS_RAW and r["batchfarm/peer"] >= TARGET_VS_PEER
            for p, r in ratios.items()
        },
        "delivered_twice": duplicates,
        "wake_ms": {
            "median": round(statistics.median(latencies), 1),
            "max": round(max(latencies), 1),
        },
        "idle_cpu_percent": round(idle * 100, 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
