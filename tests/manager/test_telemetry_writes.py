"""Coalesced telemetry writes: what a node's heartbeats leave in the store, and how soon.

The processor runs on a clock the test moves, so "within a flush interval" is exact; the
heartbeats come over a real ZeroMQ socket, as a node sends them.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import zmq

from batchfarm.actors.api.metrics import ApiMetrics
from batchfarm.actors.backends.store import (
    NewJob,
    NewStage,
    NewTask,
    NodeBeat,
    Store,
    TaskState,
    WorkerBeat,
)
from batchfarm.actors.codec import encode_frame
from batchfarm.actors.manager.telemetry import TelemetryProcessor
from batchfarm.actors.manager.telemetry_writes import (
    CPU_NOISE,
    RSS_NOISE,
    RUNNING_RECHECK_S,
    FleetWrites,
)
from batchfarm.actors.messages import Heartbeat, WorkerStatus

FLUSH_S = 1.0
LOST_S = 3.0


class Clock:
    """The processor's clock: it moves only when the test says."""

    def __init__(self) -> None:
        self.now = 50_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'grid.db'}") as opened:
        yield opened


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def sockets():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def telemetry(store, sockets, clock):
    processor = TelemetryProcessor(
        store, sockets, "tcp://127.0.0.1:*", flush_interval=FLUSH_S, lost_after=LOST_S, clock=clock
    )
    yield processor
    processor.close()


@pytest.fixture
def node(sockets, telemetry):
    sock = sockets.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"node-w")
    sock.connect(telemetry.endpoint)
    yield sock
    sock.close()


def crew(count: int = 4, **changes: dict) -> list[WorkerStatus]:
    """``count`` idle workers, with ``changes`` (index -> fields) applied."""
    workers = [
        WorkerStatus(index=i, pid=100 + i, state="idle", core=i, cpu_percent=1.0, rss_bytes=10**8)
        for i in range(count)
    ]
    for index, fields in changes.items():
        workers[int(index[1:])] = replace(workers[int(index[1:])], **fields)
    return workers


def send(sock, telemetry, workers, state="up", dropped=0) -> None:
    """Send one heartbeat and wait until the processor has read it."""
    before = telemetry.counters.heartbeats
    beat = Heartbeat(node="node-w", sent_at=1.0, state=state, workers=workers, dropped=dropped)
    sock.send(encode_frame(beat))
    for _ in range(500):
        telemetry.poll(10)
        if telemetry.counters.heartbeats > before:
            return
    raise AssertionError("the heartbeat never arrived")


def stored(store: Store) -> dict[int, tuple]:
    return {w.index: (w.state, w.task, w.cpu_percent, w.rss_bytes) for w in store.workers("node-w")}


def test_only_changed_workers_are_written_within_a_flush_interval(store, telemetry, node, clock):
    send(node, telemetry, crew())
    clock.now += FLUSH_S
    telemetry.tick()
    assert stored(store) == {i: ("idle", None, 1.0, 10**8) for i in range(4)}
    assert telemetry.counters.workers_written == 4
    assert store.nodes()[0].last_heartbeat == clock.now - FLUSH_S

    # CPU and memory wobbling under the noise: no row is written, not even the node's.
    send(node, telemetry, crew(w0={"cpu_percent": 1.0 + CPU_NOISE / 2, "rss_bytes": 101 * 10**6}))
    clock.now += FLUSH_S
    telemetry.tick()
    assert telemetry.counters.workers_written == 4
    assert telemetry.counters.beats_written == 1
    assert store.nodes()[0].last_heartbeat == clock.now - 2 * FLUSH_S
    assert stored(store)[0] == ("idle", None, 1.0, 10**8)

    # A new task, a CPU jump, memory grown by a fifth: those three rows, at the next flush.
    busy = {"state": "busy", "task": "job-1/encode/0"}
    send(node, telemetry, crew(w1=busy, w2={"cpu_percent": 90.0}, w3={"rss_bytes": 12 * 10**7}))
    telemetry.tick()  # the flush interval has not passed: nothing yet
    assert stored(store)[1] == ("idle", None, 1.0, 10**8)
    clock.now += FLUSH_S
    telemetry.tick()
    assert stored(store) == {
        0: ("idle", None, 1.0, 10**8),
        1: ("busy", "job-1/encode/0", 1.0, 10**8),
        2: ("idle", None, 90.0, 10**8),
        3: ("idle", None, 1.0, 12 * 10**7),
    }
    assert telemetry.counters.workers_written == 7

    # A worker the node no longer has is removed; the node's count follows.
    send(node, telemetry, crew(3, w1=busy, w2={"cpu_percent": 90.0}))
    clock.now += FLUSH_S
    telemetry.tick()
    assert sorted(stored(store)) == [0, 1, 2]
    assert store.nodes()[0].workers == 3


def test_a_state_change_is_written_at_once(store, telemetry, node, clock):
    send(node, telemetry, crew())
    clock.now += FLUSH_S
    telemetry.tick()
    send(node, telemetry, crew(w0={"state": "draining"}), state="draining")
    telemetry.tick()  # no time has passed
    assert store.nodes()[0].state == "draining"
    assert stored(store)[0][0] == "draining"
    # The final beat of a node going away, then silence: stopped, not lost.
    send(node, telemetry, crew(w0={"state": "stopped"}), state="stopping")
    telemetry.tick()
    assert store.nodes()[0].state == "stopping"
    clock.now += LOST_S + FLUSH_S
    assert telemetry.tick() == []
    assert store.nodes()[0].state == "stopped"


def test_a_silent_node_is_lost_and_written_whole_when_it_comes_back(store, telemetry, node, clock):
    send(node, telemetry, crew(), dropped=7)
    clock.now += FLUSH_S
    telemetry.tick()
    text = ApiMetrics(store, {}, telemetry=telemetry).render().decode()
    assert 'batchfarm_node_telemetry_dropped_frames_total{node="node-w"} 7.0' in text
    clock.now += LOST_S + FLUSH_S
    assert telemetry.tick() == ["node-w"]
    assert store.nodes()[0].state == "lost"
    assert {w.state for w in store.workers("node-w")} == {"lost"}
    assert telemetry.counters.nodes_lost == 1

    # Back with the same workers as before it fell silent: all of them are written again.
    send(node, telemetry, crew())
    clock.now += FLUSH_S
    telemetry.tick()
    assert store.nodes()[0].state == "up"
    assert stored(store) == {i: ("idle", None, 1.0, 10**8) for i in range(4)}


def test_a_task_a_worker_reports_is_marked_running_and_once_more_later(
    store, telemetry, node, clock
):
    stages = [NewStage("encode", 0, "transcode", {})]
    store.create_job(NewJob("job-1", stages), [NewTask("encode", part) for part in range(2)])
    store.set_tasks_state("job-1", TaskState.QUEUED, from_states=[TaskState.PENDING])
    busy = crew(w1={"state": "busy", "task": "job-1/encode/0"})
    send(node, telemetry, busy)
    clock.now += FLUSH_S
    telemetry.tick()
    task = store.task("job-1", "encode", 0)
    assert task is not None
    assert (task.state, task.node_id, task.worker) == ("running", "node-w", 1)
    assert task.started_at == clock.now - FLUSH_S

    # Its previous run's failure is recorded after the heartbeat that showed this run: the
    # task is marked running once more, RUNNING_RECHECK_S after it was first seen.
    store.set_tasks_state("job-1", TaskState.RETRYING, from_states=[TaskState.RUNNING])
    send(node, telemetry, busy)
    clock.now += RUNNING_RECHECK_S
    telemetry.tick()
    assert store.task("job-1", "encode", 0).state == "running"
    # Only once: then the row is the store's to change.
    store.set_tasks_state("job-1", TaskState.RETRYING, from_states=[TaskState.RUNNING])
    send(node, telemetry, busy)
    clock.now += FLUSH_S
    telemetry.tick()
    assert store.task("job-1", "encode", 0).state == "retrying"
    # A new run of it (the worker's failed count moved) is marked running at once.
    send(node, telemetry, crew(w1={"state": "busy", "task": "job-1/encode/0", "failed": 1}))
    clock.now += FLUSH_S
    telemetry.tick()
    assert store.task("job-1", "encode", 0).state == "running"
    assert store.task("job-1", "encode", 1).state == "queued"


def test_the_store_follows_random_heartbeats_within_the_noise(store):
    """Whatever the workers do, after each flush the store holds each worker as the latest
    heartbeat says (CPU and memory within the noise)."""
    rng = random.Random(9)
    writes = FleetWrites()
    workers = {n: crew(4) for n in ("n1", "n2")}
    now = 1000.0
    for _ in range(60):
        now += 1.0
        for node, crew_ in workers.items():
            changed = []
            for before in crew_:
                w, roll = before, rng.random()
                if roll < 0.2:
                    w = replace(w, state=rng.choice(["idle", "busy", "paused", "starting"]))
                elif roll < 0.4:
                    w = replace(w, task=rng.choice([None, "j/s/1", "j/s/2"]), done=w.done + 1)
                elif roll < 0.7:
                    w = replace(w, cpu_percent=max(0.0, w.cpu_percent + rng.uniform(-8, 8)))
                elif roll < 0.9:
                    w = replace(w, rss_bytes=int(w.rss_bytes * rng.uniform(0.9, 1.1)))
                changed.append(w)
            if rng.random() < 0.1:  # a worker goes, or one comes
                if len(changed) > 1 and rng.random() < 0.5:
                    changed.pop(rng.randrange(len(changed)))
                else:
                    changed.append(replace(changed[0], index=max(w.index for w in changed) + 1))
            workers[node] = changed
            writes.add(Heartbeat(node=node, sent_at=now, state="up", workers=changed), now)
        flush = writes.collect(now)
        store.write_fleet(flush.changes)
        writes.done(flush)
        for node, crew_ in workers.items():
            held = {w.index: w for w in store.workers(node)}
            assert sorted(held) == sorted(w.index for w in crew_)
            for w in crew_:
                row = held[w.index]
                assert (row.pid, row.state, row.task, row.done) == (w.pid, w.state, w.task, w.done)
                assert abs(row.cpu_percent - w.cpu_percent) < CPU_NOISE
                assert abs(row.rss_bytes - w.rss_bytes) <= RSS_NOISE * row.rss_bytes


def test_metrics_count_workers_from_the_latest_heartbeats_when_it_has_all(
    store, telemetry, node, clock
):
    def workers(state: str) -> float:
        text = ApiMetrics(store, {}, telemetry=telemetry).render().decode()
        [line] = [
            ln for ln in text.splitlines() if ln.startswith(f'batchfarm_workers{{state="{state}"')
        ]
        return float(line.rsplit(" ", 1)[1])

    send(node, telemetry, crew(2))
    clock.now += FLUSH_S
    telemetry.tick()
    busy = {"state": "busy", "task": "job-1/encode/0"}
    send(node, telemetry, crew(2, w0=busy, w1=busy))  # not written yet
    assert (workers("busy"), workers("idle")) == (2, 0)
    # A reporting node this manager has not heard (it restarted, say): the store's rows.
    store.record_heartbeats(
        [NodeBeat("node-old", clock.now, "up", workers=[WorkerBeat(0, pid=9, state="idle")])]
    )
    assert (workers("busy"), workers("idle")) == (0, 3)
