"""What a node tells the manager: heartbeats (node and workers) and metric samples."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from batchfarm.actors.messages import Heartbeat, Metrics, Sample, WorkerState, WorkerStatus
from batchfarm.supervisor import cpus
from batchfarm.supervisor.cpus import ProcessStats

if TYPE_CHECKING:
    from batchfarm.supervisor.node import Node


def heartbeat(
    node: Node, stats: dict[int, ProcessStats | None], dropped: int, host: str
) -> Heartbeat:
    """The node's heartbeat: its state and each worker's, with CPU and memory from psutil."""
    workers: list[WorkerStatus] = []
    for slot in node.watcher.slots():
        status = node.statuses.get(slot.index)
        sample = stats.get(slot.index)
        pid = slot.process.pid if slot.process is not None else 0
        if slot.state == "failed" or status is None or status.pid != pid:
            # Given up on, stopped (its status went with its process), or not reporting yet:
            # the supervisor's view is all there is. A drained node's workers say "stopped",
            # so the manager sees it drained (and may terminate its instance).
            state: WorkerState = slot.state if slot.state in ("failed", "stopped") else "starting"
            status = WorkerStatus(index=slot.index, pid=pid, state=state)
        if sample is not None:
            status = replace(status, cpu_percent=sample.cpu_percent, rss_bytes=sample.rss_bytes)
        # Receipts stay on the node: the manager has no use for them.
        workers.append(replace(status, receipts=[]))
    own = node.sampler.sample(os.getpid())
    return Heartbeat(
        node=node.name,
        sent_at=time.time(),
        state=node.state,
        node_class=node.settings.node.node_class,
        host=host,
        cpu_percent=cpus.machine_cpu_percent(),
        rss_bytes=own.rss_bytes if own is not None else 0,
        workers=workers,
        dropped=dropped,
        instance_type=node.instance.instance_type,
        zone=node.instance.zone,
        lifecycle=node.instance.lifecycle,
    )


def metrics(name: str, beat: Heartbeat) -> Metrics:
    """Metric samples summed over the node's workers (per-node series, small label sets)."""
    states: dict[str, int] = {}
    for worker in beat.workers:
        states[worker.state] = states.get(worker.state, 0) + 1
    samples = [
        Sample("batchfarm_node_tasks_done_total", float(sum(w.done for w in beat.workers))),
        Sample("batchfarm_node_tasks_failed_total", float(sum(w.failed for w in beat.workers))),
        Sample(
            "batchfarm_node_bytes_total",
            float(sum(w.bytes_in for w in beat.workers)),
            {"direction": "in"},
        ),
        Sample(
            "batchfarm_node_bytes_total",
            float(sum(w.bytes_out for w in beat.workers)),
            {"direction": "out"},
        ),
        Sample("batchfarm_node_cpu_ratio", beat.cpu_percent / 100.0),
        Sample("batchfarm_node_telemetry_dropped_total", float(beat.dropped)),
    ]
    samples += [
        Sample("batchfarm_node_workers", float(count), {"state": state})
        for state, count in sorted(states.items())
    ]
    return Metrics(node=name, sent_at=beat.sent_at, samples=samples)
