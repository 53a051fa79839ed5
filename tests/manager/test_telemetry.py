"""The telemetry processor: a real node heartbeating to it, commands back, lost nodes."""

from __future__ import annotations

import time

import pytest
import zmq
from sqlalchemy import event

from batchfarm.actors.backends.store import NodeBeat, Store
from batchfarm.actors.codec import decode_frame, encode_frame
from batchfarm.actors.manager.telemetry import TelemetryProcessor
from batchfarm.actors.messages import Command, Heartbeat, Metrics, Sample, TaskBody, WorkerStatus
from tests.node.nodeproc import NodeProcess, env_for, kill_now


@pytest.fixture
def store(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'grid.db'}") as opened:
        yield opened


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def telemetry(store, context):
    processor = TelemetryProcessor(
        store, context, "tcp://127.0.0.1:*", flush_interval=0.1, lost_after=1.5
    )
    yield processor
    processor.close()


def dealer(context, endpoint: str, routing_id: bytes) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(endpoint)
    return sock


def beat(node: str, state: str = "up", workers: int = 1) -> Heartbeat:
    return Heartbeat(
        node=node,
        sent_at=time.time(),
        state=state,
        host="h1",
        workers=[WorkerStatus(index=i, pid=100 + i, state="idle") for i in range(workers)],
    )


def pump(processor: TelemetryProcessor, condition, timeout: float = 15.0, what: str = "") -> None:
    """Run the processor's loop (poll, tick) until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        processor.poll(20)
        processor.tick()
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def node_state(store: Store, name: str) -> str | None:
    found = [n for n in store.nodes() if n.id == name]
    return found[0].state if found else None


def test_a_real_node_reports_obeys_commands_and_is_marked_lost_when_killed(
    tmp_path, store, telemetry
):
    node = NodeProcess(
        tmp_path / "state",
        "node-t",
        env=env_for(
            node_workers=2,
            node_manager=telemetry.endpoint,
            node_heartbeat_interval=0.2,
        ),
    )
    try:

        def workers_idle() -> bool:
            workers = store.workers("node-t")
            return node_state(store, "node-t") == "up" and [w.state for w in workers] == [
                "idle",
                "idle",
            ]

        def reported() -> bool:
            # Metrics go with each heartbeat, but may land in the next flush.
            return workers_idle() and bool(store.recent_samples("batchfarm_node_cpu_ratio"))

        pump(telemetry, reported, what="node-t up with two idle workers and metrics")
        row = store.nodes()[0]
        assert row.workers == 2
        assert row.host
        assert {w.pid for w in store.workers("node-t")} == {p.pid for p in node.workers()}
        assert telemetry.latest["node-t"].state == "up"
        assert store.recent_samples("batchfarm_node_cpu_ratio", node="node-t")[0].value >= 0

        assert telemetry.send("node-t", Command("pause"))

        def paused() -> bool:
            latest = telemetry.latest["node-t"]
            # The node says paused before its workers do: wait for both, in memory and stored.
            return (
                latest.state == "paused"
                and {w.state for w in latest.workers} == {"paused"}
                and node_state(store, "node-t") == "paused"
                and {w.state for w in store.workers("node-t")} == {"paused"}
            )

        pump(telemetry, paused, what="heartbeats saying paused")
        assert telemetry.send("node-t", Command("resume"))
        pump(telemetry, lambda: node_state(store, "node-t") == "up", what="up after resume")

        kill_now(node.pid)
        pump(telemetry, lambda: node_state(store, "node-t") == "lost", what="node-t lost")
        # Not before lost_after of silence.
        assert time.time() - store.nodes()[0].last_heartbeat >= telemetry.lost_after
        assert {w.state for w in store.workers("node-t")} == {"lost"}
        assert "node-t" not in telemetry.latest
        assert telemetry.counters.nodes_lost == 1
        assert telemetry.counters.rejects.total == 0
    finally:
        node.close()


def test_frames_are_read_by_their_record_and_bad_ones_counted(context, store, telemetry):
    # A routing id that differs from the node's name: the record names the node.
    a = dealer(context, telemetry.endpoint, b"socket-of-a")
    try:
        a.send(encode_frame(beat("node-a", workers=2)))
        a.send(encode_frame(Metrics("node-a", 1000.0, [Sample("load", 0.5, {"kind": "x"})])))
        a.send(b"\xc1 not msgpack")
        a.send_multipart([encode_frame(beat("node-a")), b"extra"])
        a.send(encode_frame(TaskBody(job="j", stage="s", part=0, handler="noop")))
        a.send(encode_frame(beat("x/y")))  # a node id the store refuses
        c = telemetry.counters
        pump(telemetry, lambda: c.heartbeats + c.metrics + c.others + c.rejects.total == 6)
        assert (c.heartbeats, c.metrics, c.others) == (1, 1, 1)
        assert c.rejects.by_reason == {"format": 2, "schema": 1}
        telemetry.flush()
        assert [n.id for n in store.nodes()] == ["node-a"]
        assert [w.index for w in store.workers("node-a")] == [0, 1]
        [sample] = store.recent_samples("load")
        assert (sample.node_id, sample.time, sample.value) == ("node-a", 1000.0, 0.5)
        assert sample.labels == {"kind": "x"}

        # Commands go back through the routing id the node's heartbeats came from.
        assert telemetry.send("node-a", Command("drain", id="c1"))
        assert a.poll(5000)
        assert decode_frame(a.recv()) == Command("drain", id="c1")
        assert not telemetry.send("node-nobody", Command("pause"))
        assert (c.commands_sent, c.commands_unroutable) == (1, 1)
    finally:
        a.close()


def test_a_reconnecting_node_takes_over_its_routing_id(context, telemetry):
    old = dealer(context, telemetry.endpoint, b"node-h")
    new = None
    try:
        old.send(encode_frame(beat("node-h")))
        pump(telemetry, lambda: telemetry.counters.heartbeats == 1)
        new = dealer(context, telemetry.endpoint, b"node-h")  # the old one still connected
        new.send(encode_frame(beat("node-h", state="draining")))
        pump(telemetry, lambda: telemetry.counters.heartbeats == 2)
        assert telemetry.latest["node-h"].state == "draining"
        assert telemetry.send("node-h", Command("stop"))
        assert new.poll(5000)
        assert decode_frame(new.recv()) == Command("stop")
        assert not old.poll(100)
    finally:
        old.close()
        if new is not None:
            new.close()


def test_a_flush_writes_each_kind_in_one_call(context, store, telemetry):
    commits = [0]

    def on_commit(_connection) -> None:
        commits[0] += 1

    sockets = [dealer(context, telemetry.endpoint, f"n{i}".encode()) for i in range(3)]
    try:
        for round_ in range(3):
            for i, sock in enumerate(sockets):
                sock.send(encode_frame(beat(f"n{i}", workers=round_ + 1)))
                sock.send(encode_frame(Metrics(f"n{i}", 1.0, [Sample("m", float(round_))])))
        pump(telemetry, lambda: telemetry.counters.metrics == 9)
        # Both coalesce: the latest heartbeat of each node, the latest sample of each series.
        assert telemetry.pending == (3, 3)
        event.listen(store.engine, "commit", on_commit)
        try:
            telemetry.flush()
        finally:
            event.remove(store.engine, "commit", on_commit)
        assert commits[0] == 2
        assert telemetry.pending == (0, 0)
        assert [n.workers for n in store.nodes()] == [3, 3, 3]
        assert sorted((s.node_id, s.value) for s in store.recent_samples("m")) == [
            (f"n{i}", 2.0) for i in range(3)
        ]
    finally:
        for sock in sockets:
            sock.close()


def test_lost_nodes_wait_for_a_restarted_manager_to_hear_from_them(store, context):
    now = [10_000.0]
    store.record_heartbeats([NodeBeat("old", 9_000.0, "up"), NodeBeat("bye", 9_000.0, "stopping")])
    processor = TelemetryProcessor(
        store,
        context,
        "tcp://127.0.0.1:*",
        flush_interval=1.0,
        lost_after=3.0,
        clock=lambda: now[0],
    )
    try:
        now[0] += 2.0
        assert processor.tick() == []  # within lost_after of the start: nodes may yet report
        assert node_state(store, "old") == "up"
        now[0] += 2.0
        assert processor.tick() == ["old"]
        assert node_state(store, "old") == "lost"
        assert node_state(store, "bye") == "stopped"  # it said it was stopping
        now[0] += 2.0
        assert processor.tick() == []  # lost once
    finally:
        processor.close()
    with pytest.raises(ValueError, match="lost_after 0"):
        TelemetryProcessor(store, context, "tcp://127.0.0.1:*", flush_interval=1, lost_after=0)
