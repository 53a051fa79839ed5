"""Simulated nodes and a plain ZeroMQ receiver for the telemetry benchmark.

Each simulated node is a DEALER socket with the node's id as its routing id, set up as
``supervisor/telemetry.py`` sets a node's up, sending what a node sends each heartbeat
interval: a heartbeat (the node and its workers, :class:`~batchfarm.actors.messages.Heartbeat`)
and its metric samples (``supervisor/report.py``'s :func:`metrics`), encoded by the grid's
codec. Frames are encoded once per node before the run: encoding a 64-worker heartbeat takes
about 1.6 ms of Python, which for a thousand nodes would be more CPU than this machine has
beside the manager (each real node encodes only its own).

Runs in child processes (spawn): :func:`send` paces frames evenly over each interval, or
sends as fast as ZeroMQ takes them (``paced=False``, for the raw rate); :func:`receive` is
the anchor, a ROUTER that only counts what arrives.
"""

from __future__ import annotations

import os
import time
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

import psutil
import zmq

from batchfarm.actors.codec import encode_frame
from batchfarm.actors.messages import Heartbeat, WorkerStatus
from batchfarm.supervisor.report import metrics

#: Share of a simulated node's workers that are busy (a loaded grid).
BUSY_SHARE = 0.75


def node_name(index: int) -> str:
    return f"sim-{index:05d}"


def heartbeat(name: str, index: int, workers: int) -> Heartbeat:
    """A loaded node's heartbeat: most workers busy on a task, each on its own core."""
    busy = int(workers * BUSY_SHARE)
    return Heartbeat(
        node=name,
        sent_at=time.time(),
        state="up",
        node_class="default",
        host=f"ip-10-0-{index // 250}-{index % 250}",
        cpu_percent=80.0,
        rss_bytes=120 * 2**20,
        workers=[
            WorkerStatus(
                index=w,
                pid=1000 + w,
                state="busy" if w < busy else "idle",
                core=w,
                task=f"bench-job/encode/{index * workers + w}" if w < busy else None,
                progress=0.5 if w < busy else None,
                done=100 + w,
                failed=w % 3,
                cpu_percent=97.0 if w < busy else 1.0,
                rss_bytes=60 * 2**20,
                bytes_in=w * 2**20,
                bytes_out=w * 2**19,
            )
            for w in range(workers)
        ],
    )


def node_frames(index: int, workers: int) -> list[bytes]:
    """The frames one node sends each heartbeat interval: its heartbeat, then its metrics."""
    name = node_name(index)
    beat = heartbeat(name, index, workers)
    return [encode_frame(beat), encode_frame(metrics(name, beat))]


def _cpu_s() -> float:
    times = psutil.Process(os.getpid()).cpu_times()
    return times.user + times.system


def send(  # noqa: PLR0917 - one call site, a child process's whole brief
    endpoint: str,
    first: int,
    count: int,
    workers: int,
    seconds: float,
    interval_s: float,
    paced: bool,
    start: Synchronized[float],
    out: Queue[dict[str, Any]],
) -> None:
    """Be nodes ``first`` to ``first + count - 1``: connect, say so, wait for ``start``, send.

    Puts ``{"ready": True}`` on ``out`` once connected with every frame encoded; the parent
    then sets ``start`` (epoch seconds, 0 until then), the time every sender begins at.
    """
    context = zmq.Context()
    sockets = []
    frames = []
    for index in range(first, first + count):
        sock = context.socket(zmq.DEALER)
        # Paced: what was sent reaches the receiver before the socket closes. A blast only
        # measures the rate the receiver took in, so its backlog is dropped at the end.
        sock.setsockopt(zmq.LINGER, 5000 if paced else 0)
        sock.setsockopt(zmq.ROUTING_ID, node_name(index).encode())
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(endpoint)
        sockets.append(sock)
        frames.append(node_frames(index, workers))
    sent = dropped = 0
    out.put({"ready": True})
    while not start.value:
        time.sleep(0.01)
    start_at = start.value
    wait = start_at - time.time()
    if wait > 0:
        time.sleep(wait)
    cpu_before = _cpu_s()
    deadline = start_at + seconds
    round_no = 0
    while time.time() < deadline:
        round_start = start_at + round_no * interval_s
        for slot, (sock, node) in enumerate(zip(sockets, frames, strict=True)):
            if paced:
                # Spread the nodes over the interval, as independent nodes' timers are.
                ahead = round_start + slot * interval_s / count - time.time()
                if ahead > 0:
                    time.sleep(ahead)
            for frame in node:
                try:
                    sock.send(frame, zmq.NOBLOCK)
                    sent += 1
                except zmq.Again:
                    dropped += 1  # a node's own buffer would hold it; here it is counted
        round_no += 1
        if paced and time.time() >= deadline:
            break
    cpu = _cpu_s() - cpu_before
    out.put({"sent": sent, "dropped": dropped, "cpu_s": cpu, "rounds": round_no})
    for sock in sockets:
        sock.close()
    context.term()


def receive(endpoint: str, stop: Event, ready: Event, out: Queue[dict[str, Any]]) -> None:
    """A ROUTER that only receives: count frames and bytes until ``stop``, with CPU used."""
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    ready.set()
    frames = size = 0
    first = last = 0.0
    cpu_before = _cpu_s()
    while not stop.is_set():
        if not sock.poll(100):
            continue
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            last = time.time()
            if not frames:
                first = last
            frames += 1
            size += len(parts[-1])
    out.put(
        {
            "frames": frames,
            "bytes": size,
            "first": first,
            "last": last,
            "cpu_s": _cpu_s() - cpu_before,
        }
    )
    sock.close()
    context.term()
