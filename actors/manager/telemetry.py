"""The telemetry processor: node heartbeats and metrics in, commands out (the control plane).

Nodes connect DEALER sockets, whose routing id is their node id, to one ROUTER that
:class:`TelemetryProcessor` binds. Heartbeats and metric samples are buffered and written to
the store in batches by :meth:`~TelemetryProcessor.flush`, one store call for each kind:
every node heard since the last flush, but of its workers only those that changed (see
:mod:`batchfarm.actors.manager.telemetry_writes`). A heartbeat that changes a node's state
(``stopping``, say) is written at the next :meth:`~TelemetryProcessor.tick`, not a flush
interval later. A node silent for longer than ``lost_after`` is marked lost by
:meth:`~TelemetryProcessor.check_lost`. Telemetry is steering, never the only copy of
anything: a frame lost with a manager restart costs a sample, not work.

Times: a heartbeat is stored at the manager's clock when it arrived, because liveness is
whether the *manager* hears a node, and comparing one clock with itself cannot be skewed. A
metric sample keeps the node's ``sent_at``: it says when the value was measured, which for a
sample buffered while the manager was away is well before it arrived.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from batchfarm.actors.backends.store import NewSample, Store
from batchfarm.actors.backends.store.models import (
    IDENT_LEN,
    METRIC_NAME_LEN,
    NODE_ID_LEN,
    TASK_ID_LEN,
)
from batchfarm.actors.codec import encode_frame
from batchfarm.actors.codec_columns import Columns
from batchfarm.actors.errors import MessageError
from batchfarm.actors.manager.telemetry_writes import FleetWrites, worker_column
from batchfarm.actors.messages import Command, Heartbeat, Metrics, Sample
from batchfarm.actors.sockets import Rejects, decode_or_count, make_socket

log = logging.getLogger(__name__)

#: Most frames one :meth:`TelemetryProcessor.poll` reads, so a flood cannot stall the loop.
MAX_FRAMES_PER_POLL = 1000
#: Most metric samples buffered between flushes; the oldest are dropped (and counted) first.
MAX_BUFFERED_SAMPLES = 100_000
#: Longest host name the store keeps.
HOST_LEN = 255


@dataclass
class TelemetryCounters:
    """What the processor has seen and written since it started (for ``/metrics``)."""

    heartbeats: int = 0
    metrics: int = 0
    #: Well-formed frames of another kind (nodes send only heartbeats and metrics).
    others: int = 0
    #: Frames that were not a batchfarm record, by reason.
    rejects: Rejects = field(default_factory=Rejects)
    samples_dropped: int = 0
    #: Node rows written (one per node heard, per flush).
    beats_written: int = 0
    #: Worker rows written (only workers that changed).
    workers_written: int = 0
    samples_written: int = 0
    nodes_lost: int = 0
    commands_sent: int = 0
    #: Commands for a node that is not connected (or whose queue is full).
    commands_unroutable: int = 0


class TelemetryProcessor:
    """A ROUTER for node telemetry, with batched writes and lost-node detection.

    ``flush_interval`` is the most time a heartbeat or sample waits in memory (see
    :meth:`tick`); ``lost_after`` how long a node may stay silent before it counts as lost
    (three heartbeat intervals, say). The latest heartbeat of every node is kept in memory
    in :attr:`latest`, its worker statuses included, for the API.
    """

    def __init__(
        self,
        store: Store,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        *,
        flush_interval: float,
        lost_after: float,
        clock: Callable[[], float] = time.time,
        price: Callable[[Heartbeat], float | None] | None = None,
    ) -> None:
        if flush_interval <= 0 or lost_after <= 0:
            raise ValueError(
                f"flush_interval {flush_interval} and lost_after {lost_after}: "
                "expected positive seconds"
            )
        self._store = store
        self._clock = clock
        # Dollars per hour of the node a heartbeat comes from (cost.NodePricer); None: unknown.
        self._price = price
        self.flush_interval = flush_interval
        self.lost_after = lost_after
        self.counters = TelemetryCounters()
        #: The latest heartbeat of each node, by node id (nodes marked lost are dropped).
        self.latest: dict[str, Heartbeat] = {}
        self._fleet = FleetWrites()
        #: When each node was last heard (the manager's clock), and its state then.
        self._heard: dict[str, tuple[float, str]] = {}
        #: A node changed state: write at the next tick.
        self._urgent = False
        self._samples: list[NewSample] = []
        self._routes: dict[str, bytes] = {}
        self._started = clock()
        self._last_flush = self._started
        self.socket = make_socket(context, zmq.ROUTER)
        try:
            # A node that reconnects while its old connection still looks alive here takes
            # over its routing id; without this its new connection would be ignored.
            self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
            # A command for a node that is not connected raises instead of vanishing.
            self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.socket.bind(endpoint)
        except zmq.ZMQError:
            self.socket.close()
            raise
        #: The endpoint bound (with the actual port when ``endpoint`` asked for ``*``).
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    # -- reading --------------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> int:
        """Wait up to ``timeout_ms`` for frames, then read what is there; returns how many."""
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return 0
        count = 0
        while count < MAX_FRAMES_PER_POLL:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            count += 1
            self._handle(parts)
        return count

    def _handle(self, parts: list[bytes]) -> None:
        if len(parts) != 2:
            self.counters.rejects.count(
                MessageError("format", f"{len(parts) - 1} frames in a message; expected 1")
            )
            return
        routing_id, frame = parts
        record = decode_or_count(frame, self.counters.rejects)
        problem = fit_problem(record) if isinstance(record, Heartbeat | Metrics) else None
        if problem is not None:
            # Refused here: one row the store cannot take would fail every later flush.
            self.counters.rejects.count(MessageError("schema", problem))
        elif isinstance(record, Heartbeat):
            self._on_heartbeat(routing_id, record)
        elif isinstance(record, Metrics):
            self._on_metrics(record)
        elif record is not None:
            self.counters.others += 1

    def _on_heartbeat(self, routing_id: bytes, beat: Heartbeat) -> None:
        # The record names the node; the routing id is only where commands go back to.
        self.counters.heartbeats += 1
        self._routes[beat.node] = routing_id
        self.latest[beat.node] = beat
        now = self._clock()
        heard = self._heard.get(beat.node)
        if beat.state == "stopping" or (heard is not None and heard[1] != beat.state):
            self._urgent = True
        self._heard[beat.node] = (now, beat.state)
        price = self._price(beat) if self._price is not None else None
        self._fleet.add(beat, now, price)

    def _on_metrics(self, metrics: Metrics) -> None:
        self.counters.metrics += 1
        at, node, samples = metrics.sent_at, metrics.node, metrics.samples
        self._samples.extend(
            NewSample(time=at, name=name, value=value, node=node, labels=labels)
            for name, value, labels in zip(
                sample_column(samples, "name"),
                sample_column(samples, "value"),
                sample_column(samples, "labels"),
                strict=True,
            )
        )
        excess = len(self._samples) - MAX_BUFFERED_SAMPLES
        if excess > 0:
            del self._samples[:excess]
            self.counters.samples_dropped += excess

    # -- writing --------------------------------------------------------------------------------

    @property
    def pending(self) -> tuple[int, int]:
        """Heartbeats (one per node) and samples waiting for the next flush."""
        return self._fleet.pending, len(self._samples)

    def flush(self) -> None:
        """Write buffered heartbeats and samples, one store call for each kind.

        A store error propagates and leaves the buffers as they were, for the next flush.
        """
        now = self._last_flush = self._clock()
        self._urgent = False
        if self._fleet.pending:
            flush = self._fleet.collect(now)
            self._store.write_fleet(flush.changes)
            self._fleet.done(flush)
            self.counters.beats_written += len(flush.changes.beats)
            self.counters.workers_written += sum(len(b.workers) for b in flush.changes.beats)
        if self._samples:
            samples = self._samples
            self._store.add_samples(samples)
            self._samples = []
            self.counters.samples_written += len(samples)

    def check_lost(self, now: float | None = None) -> list[str]:
        """Mark nodes silent for longer than ``lost_after`` lost; returns their ids.

        Flushes first, so a heartbeat still in memory counts. Does nothing during the first
        ``lost_after`` after the processor started: a manager that just (re)started has not
        yet had the time to hear from the nodes that are alive.
        """
        now = self._clock() if now is None else now
        self.flush()
        if now - self._started < self.lost_after:
            return []
        before = now - self.lost_after
        lost = self._store.mark_nodes_lost(before)
        # Lost or stopped, the store changed their workers: a node back is written whole.
        silent = [node for node, (at, _) in self._heard.items() if at < before]
        self._fleet.forget([*lost, *silent])
        for node in silent:
            del self._heard[node]
        for node in lost:
            self.latest.pop(node, None)
            log.warning("node %s lost: no heartbeat for %.1f s", node, self.lost_after)
        self.counters.nodes_lost += len(lost)
        return lost

    def tick(self, now: float | None = None) -> list[str]:
        """Flush and check for lost nodes once ``flush_interval`` has passed since the last.

        For the actor's timer; returns the nodes newly marked lost.
        """
        now = self._clock() if now is None else now
        if now - self._last_flush < self.flush_interval and not self._urgent:
            return []
        return self.check_lost(now)

    # -- commands -------------------------------------------------------------------------------

    def send(self, node: str, command: Command) -> bool:
        """Send ``command`` to ``node``; False if the node is not connected or not keeping up."""
        routing_id = self._routes.get(node, node.encode("utf-8"))
        try:
            self.socket.send_multipart([routing_id, encode_frame(command)], zmq.NOBLOCK)
        except zmq.Again:
            self.counters.commands_unroutable += 1
            return False
        except zmq.ZMQError as error:
            if error.errno != errno.EHOSTUNREACH:
                raise
            self.counters.commands_unroutable += 1
            return False
        self.counters.commands_sent += 1
        return True

    def close(self) -> None:
        """Close the socket (buffers not flushed are dropped: call :meth:`flush` first)."""
        self.socket.close()


def fit_problem(record: Heartbeat | Metrics) -> str | None:
    """What in a heartbeat or metrics frame does not fit the store's columns, or None."""
    node = record.node
    if not node or len(node) > NODE_ID_LEN or "/" in node:
        return (
            f"{record.KIND}.node {node[:40]!r}: expected 1 to {NODE_ID_LEN} characters without '/'"
        )
    if isinstance(record, Metrics):
        for name in sample_column(record.samples, "name"):
            if not 0 < len(name) <= METRIC_NAME_LEN:
                return (
                    f"metrics sample name {name[:40]!r}: expected 1 to {METRIC_NAME_LEN} characters"
                )
        return None
    if len(record.node_class) > IDENT_LEN or len(record.host) > HOST_LEN:
        return (
            f"heartbeat of {node}: node_class over {IDENT_LEN} or host over {HOST_LEN} characters"
        )
    if max(len(record.instance_type), len(record.zone), 4 * len(record.lifecycle)) > 64:
        return f"heartbeat of {node}: instance_type or zone over 64, lifecycle over 16 characters"
    tasks = worker_column(record.workers, "task")
    if max(map(len, filter(None, tasks)), default=0) > TASK_ID_LEN:
        index = next(
            i
            for i, task in zip(worker_column(record.workers, "index"), tasks, strict=True)
            if task is not None and len(task) > TASK_ID_LEN
        )
        return f"heartbeat of {node}: worker {index} task id over {TASK_ID_LEN} characters"
    return None


def sample_column(samples: Sequence[Sample], name: str) -> list[Any]:
    """Field ``name`` of every sample: the decoded column itself when there is one."""
    if isinstance(samples, Columns):
        return samples.column(name)
    return [getattr(sample, name) for sample in samples]
