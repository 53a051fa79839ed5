"""Keeping cordoned nodes paused from the manager's loop, over a real ROUTER and DEALER."""

from __future__ import annotations

import time

import pytest
import zmq

from batchfarm.actors.backends.store import Store
from batchfarm.actors.codec import decode_frame, encode_frame
from batchfarm.actors.manager.cordon import CHECK_S, CordonKeeper
from batchfarm.actors.manager.health import Cordon
from batchfarm.actors.manager.telemetry import TelemetryProcessor
from batchfarm.actors.messages import Command, Heartbeat


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts(tmp_path):
    context = zmq.Context()
    store = Store(f"sqlite:///{tmp_path / 'grid.db'}")
    telemetry = TelemetryProcessor(
        store, context, "tcp://127.0.0.1:*", flush_interval=0.05, lost_after=60
    )
    node = context.socket(zmq.DEALER)
    node.setsockopt(zmq.LINGER, 0)
    node.setsockopt(zmq.ROUTING_ID, b"node-z")
    clock = Clock()
    keeper = CordonKeeper(store, telemetry, resend_s=2.0, clock=clock)
    yield store, telemetry, node, clock, keeper
    node.close()
    telemetry.close()
    store.close()
    context.destroy(linger=0)


def heartbeat(telemetry: TelemetryProcessor, node: zmq.Socket, state: str) -> None:
    """The node reports ``state``; the manager reads and stores it."""
    node.send(encode_frame(Heartbeat(node="node-z", sent_at=time.time(), state=state)))
    deadline = time.monotonic() + 10
    while telemetry.latest.get("node-z") is None or telemetry.latest["node-z"].state != state:
        assert time.monotonic() < deadline, "the heartbeat never arrived"
        telemetry.poll(20)
    telemetry.flush()


def commands(node: zmq.Socket) -> list[str]:
    found = []
    while node.poll(200, zmq.POLLIN):
        record = decode_frame(node.recv())
        assert isinstance(record, Command)
        found.append(f"{record.name} {record.args}")
    return found


def test_a_cordon_decided_before_the_node_reported_is_recorded_and_enforced(parts):
    store, telemetry, node, clock, keeper = parts
    # The judge cordoned a node the store does not know yet, and it cannot be reached.
    keeper.tick([Cordon("node-z", "failed 3 tasks that succeeded on other nodes", False)])
    assert keeper.pauses_sent == 0
    node.connect(telemetry.endpoint)  # the node comes up
    heartbeat(telemetry, node, "up")
    clock.now += CHECK_S
    keeper.tick()
    [stored] = store.nodes()
    assert (stored.cordoned, stored.cordon_reason) == (
        True,
        "failed 3 tasks that succeeded on other nodes",
    )
    assert commands(node) == ["pause {'force': False}"]

    # Still "up" after the resend time (the pause was missed, or the node restarted): again.
    clock.now += CHECK_S
    keeper.tick()
    assert commands(node) == []  # not before resend_s
    clock.now += 2.0
    keeper.tick()
    assert commands(node) == ["pause {'force': False}"]
    heartbeat(telemetry, node, "paused")
    clock.now += 5.0
    keeper.tick()
    assert commands(node) == []  # paused: nothing to do

    # Uncordoned (by an operator) and up again: left alone.
    store.set_cordoned("node-z", False)
    heartbeat(telemetry, node, "up")
    clock.now += 5.0
    keeper.tick()
    assert commands(node) == []
    assert keeper.pauses_sent == 2
