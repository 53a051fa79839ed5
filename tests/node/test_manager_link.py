"""The node's control plane: heartbeats and metrics out, commands in, and no manager at all."""

from __future__ import annotations

import time

import pytest
import zmq

from batchfarm.actors.codec import decode_frame, encode_frame
from batchfarm.actors.messages import Command, Heartbeat, Metrics
from tests.node.nodeproc import NodeProcess, env_for
from tests.ports import free_port
from tests.worker.grid import (
    Completions,
    completions,
    make_settings,
    submit,
    task,
    tasks_queue,
    wait_for,
)


class Manager:
    """A stand-in for the manager's telemetry ROUTER."""

    def __init__(self, port: int) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.socket.bind(f"tcp://127.0.0.1:{port}")
        self.frames: list[tuple[bytes, object]] = []

    def collect(self, seconds: float = 0.2) -> list[tuple[bytes, object]]:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.socket.poll(int(left * 1000)):
                identity, payload = self.socket.recv_multipart()
                self.frames.append((identity, decode_frame(payload)))
        return self.frames

    def heartbeats(self) -> list[Heartbeat]:
        return [r for _, r in self.collect() if isinstance(r, Heartbeat)]

    def send(self, node: str, command: Command) -> None:
        self.socket.send_multipart([node.encode(), encode_frame(command)])

    def close(self) -> None:
        self.socket.close()
        self.context.term()


@pytest.fixture
def manager_port():
    return free_port()


@pytest.fixture
def nodes(tmp_path):
    started: list[NodeProcess] = []
    yield started
    for node in started:
        node.close()


def test_heartbeats_reach_the_manager_and_its_commands_steer_the_node(
    tmp_path, manager_port, nodes
):
    settings = make_settings(tmp_path / "state")
    manager = Manager(manager_port)
    try:
        node = NodeProcess(
            tmp_path / "state",
            "node-m",
            env=env_for(
                node_workers=2,
                node_prefetch=0,  # one task per worker, so both are busy
                node_manager=f"tcp://127.0.0.1:{manager_port}",
            ),
        )
        nodes.append(node)
        submit(settings, *[task(n, "sleep", params={"seconds": 30}) for n in range(2)])

        def busy() -> bool:
            beats = manager.heartbeats()
            return bool(beats) and [w.state for w in beats[-1].workers] == ["busy", "busy"]

        wait_for(busy, what="a heartbeat with both workers busy")
        beat = manager.heartbeats()[-1]
        assert beat.node == "node-m"
        assert beat.state == "up"
        assert {w.task for w in beat.workers} == {"job1/s1/0", "job1/s1/1"}
        assert all(w.rss_bytes > 10_000_000 for w in beat.workers)
        assert all(w.receipts == [] for w in beat.workers)  # receipts stay on the node
        assert any(isinstance(r, Metrics) for _, r in manager.frames)
        assert {identity for identity, _ in manager.frames} == {b"node-m"}

        manager.send("node-m", Command("pause", args={"force": True}))
        with tasks_queue(settings) as queue:
            wait_for(lambda: queue.depth().visible == 2, what="both tasks handed back")

        def paused() -> bool:
            beats = manager.heartbeats()
            return beats[-1].state == "paused" and {w.state for w in beats[-1].workers} == {
                "paused"
            }

        wait_for(paused, what="a heartbeat saying paused")
        assert completions(settings) == []
        manager.send("node-m", Command("resume"))
        wait_for(busy, what="busy again after resume")
    finally:
        manager.close()


def test_a_node_without_its_manager_works_on_and_counts_what_it_dropped(
    tmp_path, manager_port, nodes
):
    settings = make_settings(tmp_path / "state")
    node = NodeProcess(
        tmp_path / "state",
        "node-alone",
        env=env_for(
            node_workers=2,
            node_manager=f"tcp://127.0.0.1:{manager_port}",
            node_heartbeat_interval=0.2,
            node_telemetry_buffer=4,
        ),
    )
    nodes.append(node)
    submit(settings, *[task(n, "noop") for n in range(20)])
    seen = Completions(settings)
    wait_for(lambda: len(seen()) == 20, what="20 tasks done")
    time.sleep(1.5)  # heartbeats pile up: 2 frames each 0.2 s, 4 kept
    manager = Manager(manager_port)  # the manager comes (back)
    try:
        wait_for(manager.heartbeats, timeout=15, what="a heartbeat after reconnecting")
        first = manager.heartbeats()[0]
        assert first.dropped > 0
        assert first.state == "up"
        assert sum(w.done for w in manager.heartbeats()[-1].workers) == 20
    finally:
        manager.close()
