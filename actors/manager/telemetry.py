"""The telemetry processor: node heartbeats and metrics in, commands out (the control plane).

Nodes connect DEALER sockets, whose routing id is their node id, to one ROUTER that
:class:`TelemetryProcessor` binds. Heartbeats and metric samples are held in memory and
written to the store in batches by :meth:`~TelemetryProcessor.tick`, one store call for each
kind: each flush interval, of the nodes heard since the last, the rows that changed (see
:mod:`batchfarm.actors.manager.telemetry_writes`); every ``sample_interval``, the latest
sample of each series (see :mod:`batchfarm.actors.manager.telemetry_samples`). A heartbeat
that changes a node's state (``stopping``, say) is written at the next tick, not a flush
interval later. A node silent for longer than ``lost_after`` is marked lost by
:meth:`~TelemetryProcessor.check_lost`: the manager's memory of when it last heard each node
says which, not the store's ``last_heartbeat`` (which may lag it a few seconds). Telemetry
is steering, never the only copy of anything: a frame lost with a manager restart costs a
sample, not work.

Times: a heartbeat is stored at the manager's clock when it arrived, because liveness is
whether the *manager* hears a node, and comparing one clock with itself cannot be skewed. A
metric sample keeps the node's ``sent_at``: it says when the value was measured, which for a
sample buffered while the manager was away is well before it arrived.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import zmq

from batchfarm.actors.backends.store import Store
from batchfarm.actors.backends.store.models import (
    IDENT_LEN,
    METRIC_NAME_LEN,
    NODE_ID_LEN,
    TASK_ID_LEN,
)
from batchfarm.actors.backends.store.totals import WorkerTotals
from batchfarm.actors.codec import encode_frame
from batchfarm.actors.errors import MessageError
from batchfarm.actors.manager.telemetry_samples import SAMPLE_INTERVAL_S, SampleFold, sample_column
from batchfarm.actors.manager.telemetry_writes import FleetWrites, worker_column
from batchfarm.actors.messages import Command, Heartbeat, Metrics
from batchfarm.actors.sockets import Rejects, decode_or_count, make_socket

log = logging.getLogger(__name__)

#: Most frames one :meth:`TelemetryProcessor.poll` reads, so a flood cannot stall the loop.
MAX_FRAMES_PER_POLL = 1000
#: Most metric samples held between writes (the latest of each series; see SampleFold).
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
    #: Node rows written (a node's row is written when it changes; see telemetry_writes).
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

    ``flush_interval`` is the most time a changed heartbeat waits in memory (see
    :meth:`tick`), ``sample_interval`` the time between two writes of metric samples;
    ``lost_after`` how long a node may stay silent before it counts as lost (three heartbeat
    intervals, say). The latest heartbeat of every node is kept in memory in :attr:`latest`,
    its worker statuses included, for the API.
    """

    def __init__(
        self,
        store: Store,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        *,
        flush_interval: float,
        lost_after: float,
        sample_interval: float = SAMPLE_INTERVAL_S,
        clock: Callable[[], float] = time.time,
        price: Callable[[Heartbeat], float | None] | None = None,
    ) -> None:
        if min(flush_interval, lost_after, sample_interval) <= 0:
            raise ValueError(
                f"flush_interval {flush_interval}, lost_after {lost_after} and "
                f"sample_interval {sample_interval}: expected positive seconds"
            )
        self._store = store
        self._clock = clock
        # Dollars per hour of the node a heartbeat comes from (cost.NodePricer); None: unknown.
        self._price = price
        self.flush_interval = flush_interval
        self.lost_after = lost_after
        self.sample_interval = sample_interval
        self.counters = TelemetryCounters()
        #: The latest heartbeat of each node, by node id (nodes marked lost are dropped).
        self.latest: dict[str, Heartbeat] = {}
        self._fleet = FleetWrites()
        #: When each node was last heard (the manager's clock), and its state then.
        self._heard: dict[str, tuple[float, str]] = {}
        #: A node changed state: write at the next tick.
        self._urgent = False
        self._samples = SampleFold(MAX_BUFFERED_SAMPLES)
        self._routes: dict[str, bytes] = {}
        self._started = clock()
        self._last_flush = self._last_samples = self._started
        #: Whether the store's nodes were looked over for lost ones since the start.
        self._scanned = False
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
        self.counters.samples_dropped += self._samples.add(metrics)

    def worker_totals(self, nodes: Collection[str]) -> WorkerTotals | None:
        """Workers of ``nodes`` counted by node and state, as their latest heartbeats say.

        None when one of ``nodes`` has no heartbeat here (the manager restarted since, say):
        then only the store has them all. Safe from another thread than the loop's.
        """
        latest = dict(self.latest)  # one C-level copy: the loop may add a node meanwhile
        if not all(node in latest for node in nodes):
            return None
        totals = WorkerTotals()
        for node in nodes:
            workers = latest[node].workers
            states = worker_column(workers, "state")
            for state in set(states):  # a few states: counted in C, faster than a Counter
                totals.by_node_state[(node, state)] += states.count(state)
            totals.rss_by_node[node] += sum(worker_column(workers, "rss_bytes"))
        return totals

    # -- writing --------------------------------------------------------------------------------

    @property
    def pending(self) -> tuple[int, int]:
        """Nodes heard since the last flush, and samples held for the next sample write."""
        return self._fleet.pending, self._samples.pending

    def flush(self) -> None:
        """Write all that is held: changed rows, every node's last heartbeat time, samples.

        For a manager that stops (and tests): each kind in one store call. A store error
        propagates and leaves what is held as it was, for the next write.
        """
        now = self._clock()
        self._write(now, self._fleet.unwritten(), samples=True)

    def _write(self, now: float, silent: list[str], *, samples: bool) -> None:
        """Write the changed heartbeats, with ``silent``'s last heartbeat, and maybe samples."""
        self._last_flush = now
        self._urgent = False
        if self._fleet.pending or silent:
            flush = self._fleet.collect(now, silent)
            if flush.beats or flush.marks:
                self._store.write_fleet(flush.changes)
            self._fleet.done(flush)
            self.counters.beats_written += len(flush.beats)
            self.counters.workers_written += sum(len(b.workers) for b in flush.beats)
        if samples:
            self._last_samples = now
            if self._samples.pending:
                held = self._samples.samples()
                self._store.add_samples(held)
                self._samples.clear()
                self.counters.samples_written += len(held)

    def check_lost(self, now: float | None = None) -> list[str]:
        """Write what is due, and mark nodes silent for longer than ``lost_after`` lost.

        Returns the nodes newly marked lost. The manager's memory says which nodes are
        silent: their last heartbeat is written, then the store marks them lost (or stopped,
        after a final ``stopping``). The first time, once ``lost_after`` has passed since
        the processor started, the store also marks the nodes it holds that this manager
        never heard: a manager that just (re)started must first have had the time to hear
        from the nodes that are alive.
        """
        now = self._clock() if now is None else now
        before = now - self.lost_after
        grace = now - self._started < self.lost_after
        silent = [] if grace else [node for node, (at, _) in self._heard.items() if at < before]
        self._write(now, silent, samples=now - self._last_samples >= self.sample_interval)
        if grace or (self._scanned and not silent):
            return []
        # The others' stored last_heartbeat may lag what this manager heard: they are kept.
        gone = set(silent)
        alive = {node for node in self._heard if node not in gone}
        lost = self._store.mark_nodes_lost(before, keep=alive)
        self._scanned = True
        # Lost or stopped, the store changed their workers: a node back is written whole.
        self._fleet.forget([*lost, *silent])
        for node in silent:
            del self._heard[node]
        for node in lost:
            self.latest.pop(node, None)
            log.warning("node %s lost: no heartbeat for %.1f s", node, self.lost_after)
        self.counters.nodes_lost += len(lost)
        return lost

    def tick(self, now: float | None = None) -> list[str]:
        """Write and check for lost nodes once ``flush_interval`` has passed since the last.

        At once when a node changed state. For the actor's timer; returns the nodes newly
        marked lost.
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
