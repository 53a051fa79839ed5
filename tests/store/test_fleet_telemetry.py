"""The manager's telemetry on every backend: node rows written on change, lost nodes by memory.

The manager writes a node's row when it changes, or every ``NODE_SEEN_S`` for its last
heartbeat alone, and knows from its memory which nodes are silent; these tests run its
telemetry processor (on a clock the test moves, heartbeats over a real ZeroMQ socket) and
the store calls it makes against SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from batchfarm.actors.backends.store import (
    NewJob,
    NewStage,
    NewTask,
    NodeBeat,
    Store,
    TaskState,
)
from batchfarm.actors.backends.store.fleet import FleetChanges, RunningTask
from batchfarm.actors.codec import encode_frame
from batchfarm.actors.manager.telemetry import TelemetryProcessor
from batchfarm.actors.manager.telemetry_writes import NODE_SEEN_S
from batchfarm.actors.messages import Heartbeat, Metrics, Sample, WorkerStatus

LOST_S = 3.0
SAMPLES_S = 10.0
START = 80_000.0


def test_nodes_heard_lately_are_kept_whatever_their_stored_heartbeat(store: Store) -> None:
    store.record_heartbeats(
        [NodeBeat("a", 100.0, "up"), NodeBeat("b", 100.0, "stopping"), NodeBeat("c", 100.0, "up")]
    )
    assert store.mark_nodes_lost(250.0, keep={"b", "c"}) == ["a"]
    assert {n.id: n.state for n in store.nodes()} == {"a": "lost", "b": "stopping", "c": "up"}
    assert store.mark_nodes_lost(250.0) == ["c"]
    assert {n.id: n.state for n in store.nodes()} == {"a": "lost", "b": "stopped", "c": "lost"}


def test_a_task_is_marked_running_even_when_its_node_has_no_row_to_write(store: Store) -> None:
    store.record_heartbeats([NodeBeat("n1", 10.0, "up")])
    stages = [NewStage("encode", 0, "transcode", {})]
    store.create_job(NewJob("job-1", stages), [NewTask("encode", part) for part in range(2)])
    store.set_tasks_state("job-1", TaskState.QUEUED, from_states=[TaskState.PENDING])
    running = [RunningTask("n1", 3, "job-1", "encode", 1, 12.0)]
    store.write_fleet(FleetChanges(beats=[], counts={}, rosters={}, running=running))
    task = store.task("job-1", "encode", 1)
    assert task is not None
    assert (task.state, task.node_id, task.worker, task.started_at) == ("running", "n1", 3, 12.0)
    assert store.task("job-1", "encode", 0).state == "queued"


class Grid:
    """A telemetry processor on the backend's store, a node socket, and the clock."""

    def __init__(self, store: Store, context: zmq.Context) -> None:
        self.now = START
        self.processor = TelemetryProcessor(
            store,
            context,
            "tcp://127.0.0.1:*",
            flush_interval=1.0,
            lost_after=LOST_S,
            sample_interval=SAMPLES_S,
            clock=lambda: self.now,
        )
        self.node = context.socket(zmq.DEALER)
        self.node.setsockopt(zmq.LINGER, 0)
        self.node.connect(self.processor.endpoint)

    def send(self, *records: Heartbeat | Metrics) -> None:
        """Send frames as a node does, and wait until the processor has read them."""
        counters = self.processor.counters
        before = counters.heartbeats + counters.metrics
        for record in records:
            self.node.send(encode_frame(record))
        for _ in range(500):
            self.processor.poll(10)
            if counters.heartbeats + counters.metrics == before + len(records):
                return
        raise AssertionError("the frames never arrived")

    def second(self, *records: Heartbeat | Metrics) -> list[str]:
        """One heartbeat interval: the frames, a second passes, the loop's tick."""
        self.send(*records)
        self.now += 1.0
        return self.processor.tick()


@pytest.fixture
def grid(store: Store) -> Iterator[Grid]:
    context = zmq.Context()
    made = Grid(store, context)
    yield made
    made.node.close()
    made.processor.close()
    context.destroy(linger=0)


def beat(node: str, cpu: float = 50.0, state: str = "up") -> Heartbeat:
    workers = [WorkerStatus(index=i, pid=10 + i, state="idle", cpu_percent=1.0) for i in range(2)]
    return Heartbeat(node=node, sent_at=1.0, state=state, cpu_percent=cpu, workers=workers)


def test_a_live_node_is_never_lost_and_its_stored_heartbeat_lags_at_most_node_seen_s(
    store: Store, grid: Grid
) -> None:
    heard = []
    for _ in range(int(3 * NODE_SEEN_S)):
        heard.append(grid.now)
        assert grid.second(beat("live"), beat("quiet")) == []
        [live, quiet] = store.nodes()
        assert (live.state, quiet.state) == ("up", "up")
        assert 0 <= heard[-1] - live.last_heartbeat < NODE_SEEN_S + 1.0
    assert any(node.last_heartbeat < heard[-1] for node in store.nodes())
    grid.processor.flush()  # as a manager that stops: every last heartbeat is written
    assert {node.last_heartbeat for node in store.nodes()} == {heard[-1]}
    # A node's row is written when it changes beyond noise, at the next tick.
    grid.second(beat("live", cpu=90.0), beat("quiet"))
    assert {n.id: n.cpu_percent for n in store.nodes()} == {"live": 90.0, "quiet": 50.0}

    # "quiet" falls silent: lost after LOST_S, its last heartbeat the one last heard.
    last = grid.now - 1.0
    lost: list[str] = []
    while not lost:
        assert grid.now - last <= LOST_S + 1.0, "quiet was never marked lost"
        lost = grid.second(beat("live"))
    assert lost == ["quiet"]
    nodes = {n.id: n for n in store.nodes()}
    assert (nodes["quiet"].state, nodes["quiet"].last_heartbeat) == ("lost", last)
    assert nodes["live"].state == "up"
    assert {w.state for w in store.workers("quiet")} == {"lost"}

    # Back: written whole at once, state and workers.
    grid.second(beat("quiet"))
    assert {n.id: n.state for n in store.nodes()} == {"live": "up", "quiet": "up"}
    assert {w.state for w in store.workers("quiet")} == {"idle"}


def test_samples_are_stored_as_each_series_latest_every_sample_interval(
    store: Store, grid: Grid
) -> None:
    def metrics(at: float, busy: float | None, idle: float) -> Metrics:
        samples = [Sample("batchfarm_node_workers", idle, {"state": "idle"})]
        if busy is not None:
            samples.append(Sample("batchfarm_node_workers", busy, {"state": "busy"}))
        return Metrics(node="n1", sent_at=at, samples=samples)

    grid.second(metrics(1.0, busy=2.0, idle=0.0))
    grid.second(metrics(2.0, busy=None, idle=2.0))  # no busy worker: that series is not sent
    grid.second(metrics(3.0, busy=None, idle=2.0))
    assert store.recent_samples("batchfarm_node_workers") == []
    assert grid.processor.pending == (0, 2)
    while grid.now < START + SAMPLES_S:
        grid.second()
    stored = {
        (s.labels["state"], s.time, s.value) for s in store.recent_samples("batchfarm_node_workers")
    }
    assert stored == {("busy", 1.0, 2.0), ("idle", 3.0, 2.0)}
    assert grid.processor.counters.samples_written == 2
    assert grid.processor.pending == (0, 0)
