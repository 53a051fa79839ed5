"""Telemetry against a real ROUTER: routing ids, a bounded buffer, reconnects, commands."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from batchfarm.actors.codec import decode_frame, encode_frame
from batchfarm.actors.messages import Command, Heartbeat
from batchfarm.actors.sockets import make_socket
from batchfarm.supervisor.telemetry import Telemetry
from tests.ports import PORTS, free_port

NODE = "node-1"


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def beat(n: int) -> Heartbeat:
    return Heartbeat(node=NODE, sent_at=float(n), state="up")


def bind_router(context: zmq.Context, port: int | None = None) -> tuple[zmq.Socket, int]:
    """The manager's side: a ROUTER on loopback that lets a reconnecting node take over its id."""
    router = make_socket(context, zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)
    if port is None:
        port = router.bind_to_random_port("tcp://127.0.0.1", *PORTS)
        return router, port
    # libzmq closes a socket's listener in its I/O thread, a moment after close() returns.
    deadline = time.monotonic() + 5
    while True:
        try:
            router.bind(f"tcp://127.0.0.1:{port}")
            return router, port
        except zmq.ZMQError as e:
            if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                router.close()
                raise
            time.sleep(0.01)


def wait_flushed(tel: Telemetry, timeout: float = 10) -> None:
    """Flush until the buffer is empty (libzmq connects or reconnects in the background)."""
    deadline = time.monotonic() + timeout
    while tel.buffered and time.monotonic() < deadline:
        tel.flush()
        time.sleep(0.01)
    assert tel.buffered == 0, f"{tel.buffered} frames still buffered after {timeout} s"


def wait_buffering(tel: Telemetry, timeout: float = 10) -> int:
    """Publish until frames stay in the buffer (libzmq saw the link go); return how many went."""
    deadline = time.monotonic() + timeout
    n = 1000
    while time.monotonic() < deadline:
        tel.publish(beat(n))
        if tel.buffered:
            return n
        n += 1
        time.sleep(0.01)
    raise AssertionError(f"frames still sent {timeout} s after the manager went away")


def receive(router: zmq.Socket, count: int, timeout_ms: int = 5000) -> list[list[bytes]]:
    got = []
    while len(got) < count and router.poll(timeout_ms):
        got.append(router.recv_multipart())
    return got


def sent_at(messages: list[list[bytes]]) -> list[float]:
    out = []
    for routing_id, frame in messages:
        assert routing_id == NODE.encode()
        record = decode_frame(frame)
        assert isinstance(record, Heartbeat)
        out.append(record.sent_at)
    return out


def test_immediate_makes_a_send_with_no_manager_raise_again(context):
    """The libzmq behaviour Telemetry relies on, measured: with IMMEDIATE, nothing is queued."""
    port = free_port()
    with_immediate = make_socket(context, zmq.DEALER)
    with_immediate.setsockopt(zmq.IMMEDIATE, 1)
    with_immediate.connect(f"tcp://127.0.0.1:{port}")
    without = make_socket(context, zmq.DEALER)
    without.connect(f"tcp://127.0.0.1:{port}")
    try:
        with pytest.raises(zmq.Again):
            with_immediate.send(b"x", zmq.NOBLOCK)
        without.send(b"x", zmq.NOBLOCK)  # queued on a pipe to nobody: lost or sent late
    finally:
        with_immediate.close()
        without.close()


def test_frames_arrive_under_the_node_routing_id(context):
    router, port = bind_router(context)
    tel = Telemetry(context, f"tcp://127.0.0.1:{port}", NODE, buffer_size=10)
    try:
        assert tel.socket.getsockopt(zmq.IMMEDIATE) == 1
        assert tel.socket.getsockopt(zmq.ROUTING_ID) == NODE.encode()
        tel.publish(beat(1))
        tel.publish(beat(2))
        wait_flushed(tel)
        assert sent_at(receive(router, 2)) == [1.0, 2.0]
        assert tel.dropped == 0
    finally:
        tel.close()
        router.close()


def test_with_no_manager_the_buffer_keeps_the_newest_frames(context):
    port = free_port()
    tel = Telemetry(context, f"tcp://127.0.0.1:{port}", NODE, buffer_size=3)
    router = None
    try:
        for n in range(5):
            tel.publish(beat(n))  # never blocks
        assert tel.buffered == 3
        assert tel.dropped == 2
        assert tel.flush() == 0

        router, _ = bind_router(context, port)  # the manager starts late
        wait_flushed(tel)
        assert sent_at(receive(router, 3)) == [2.0, 3.0, 4.0]  # the oldest went first
        assert tel.dropped == 2
    finally:
        tel.close()
        if router is not None:
            router.close()


def test_commands_are_received_and_bad_frames_counted(context):
    router, port = bind_router(context)
    tel = Telemetry(context, f"tcp://127.0.0.1:{port}", NODE, buffer_size=10)
    try:
        tel.publish(beat(1))  # the manager learns the node's routing id from its first frame
        wait_flushed(tel)
        assert receive(router, 1)
        ident = NODE.encode()
        drain = Command(name="drain", id="c1")
        router.send_multipart([ident, b"\xc1"])  # not msgpack
        router.send_multipart([ident, encode_frame(drain)])
        router.send_multipart([ident, encode_frame(beat(2))])  # not a command
        router.send_multipart([ident, encode_frame(drain), b"extra"])  # two frames
        router.send_multipart([ident, encode_frame(Command(name="resize", args={"workers": 2}))])

        got: list[Command] = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            if tel.socket.poll(100, zmq.POLLIN):
                got += tel.commands()
        assert got == [drain, Command(name="resize", args={"workers": 2})]
        assert tel.rejects.by_reason == {"format": 2, "kind": 1}
        assert tel.commands() == []
    finally:
        tel.close()
        router.close()


def test_telemetry_resumes_when_the_manager_comes_back(context):
    router, port = bind_router(context)
    tel = Telemetry(context, f"tcp://127.0.0.1:{port}", NODE, buffer_size=100)
    try:
        tel.publish(beat(1))
        wait_flushed(tel)
        assert sent_at(receive(router, 1)) == [1.0]

        router.close()  # the manager goes away
        first_kept = wait_buffering(tel)
        tel.publish(beat(2000))
        assert tel.buffered == 2
        # Frames handed to the dying connection before libzmq noticed are gone with it.

        router, _ = bind_router(context, port)  # ... and comes back on the same port
        wait_flushed(tel)
        assert sent_at(receive(router, 2)) == [float(first_kept), 2000.0]

        tel.publish(beat(3000))
        assert sent_at(receive(router, 1)) == [3000.0]
        router.send_multipart([NODE.encode(), encode_frame(Command(name="pause"))])
        assert tel.socket.poll(5000, zmq.POLLIN)
        assert tel.commands() == [Command(name="pause")]
        assert tel.dropped == 0
    finally:
        tel.close()
        router.close()


class FreezableProxy:
    """A TCP relay that can go silent without closing anything: a manager host that vanished."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                for sock in list(self._peers):  # a frozen link reads nothing: data piles up
                    want = 0 if self.frozen.is_set() else selectors.EVENT_READ
                    registered = sock in sel.get_map()
                    if want and not registered:
                        sel.register(sock, want)
                    elif not want and registered:
                        sel.unregister(sock)
                for key, _ in sel.select(0.01):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        client, _ = sock.accept()
                        server = socket.create_connection(("127.0.0.1", self._upstream))
                        self._peers[client], self._peers[server] = server, client
                        continue
                    if sock not in self._peers:
                        continue  # closed earlier in this round with its partner
                    try:
                        data = sock.recv(65536)
                        if data:
                            self._peers[sock].sendall(data)
                            continue
                    except OSError:
                        pass  # a reset: close the pair as for an orderly end
                    other = self._peers.pop(sock)
                    self._peers.pop(other, None)
                    for s in (sock, other):
                        if s in sel.get_map():
                            sel.unregister(s)
                        s.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in [self._listener, *self._peers]:
            sock.close()


@pytest.mark.parametrize("heartbeats", [True, False], ids=["heartbeats", "no-heartbeats"])
def test_a_manager_that_goes_silent_is_noticed_by_zmtp_heartbeats(context, heartbeats):
    router, port = bind_router(context)
    proxy = FreezableProxy(port)
    tel = Telemetry(
        context,
        f"tcp://127.0.0.1:{proxy.port}",
        NODE,
        buffer_size=100,
        heartbeat_ivl_ms=100 if heartbeats else 0,
        heartbeat_timeout_ms=300,
    )
    try:
        tel.publish(beat(1))
        wait_flushed(tel)
        assert sent_at(receive(router, 1)) == [1.0]

        proxy.frozen.set()  # no FIN, no RST: the link just goes quiet
        if not heartbeats:
            # Without heartbeats libzmq keeps the dead link and swallows every frame.
            wait_for = time.monotonic() + 1.0
            while time.monotonic() < wait_for:
                tel.publish(beat(2))
                assert tel.buffered == 0
                time.sleep(0.05)
            return
        first_kept = wait_buffering(tel, timeout=5)
        tel.publish(beat(2000))

        proxy.frozen.clear()  # the partition heals; libzmq reconnects through the relay
        wait_flushed(tel)
        # What sat in the silent link's socket buffers may still come out of the old
        # connection, which the ROUTER renamed when the node's new one took over its id;
        # the frames buffered here arrive on the new one, in order.
        old: list[float] = []
        new: list[float] = []
        while 2000.0 not in new:
            more = receive(router, 1)
            assert more, f"no frame 2000 after the link healed; got {old} and {new}"
            [(routing_id, frame)] = more
            record = decode_frame(frame)
            assert isinstance(record, Heartbeat)
            (new if routing_id == NODE.encode() else old).append(record.sent_at)
        assert new == [float(first_kept), 2000.0]
        assert all(n < first_kept for n in old)
    finally:
        tel.close()
        proxy.close()
        router.close()


@pytest.mark.parametrize("handover", [True, False], ids=["handover", "no-handover"])
def test_the_manager_router_needs_handover_for_a_node_whose_old_link_lingers(context, handover):
    """Measured for the manager's side: without ROUTER_HANDOVER, a node reconnecting while its
    old connection still looks alive (a healed partition) is silently ignored."""
    router, port = bind_router(context)
    router.setsockopt(zmq.ROUTER_HANDOVER, int(handover))
    endpoint = f"tcp://127.0.0.1:{port}"
    stale = Telemetry(context, endpoint, NODE, buffer_size=10)
    fresh = None
    try:
        stale.publish(beat(1))
        wait_flushed(stale)
        assert sent_at(receive(router, 1)) == [1.0]

        fresh = Telemetry(context, endpoint, NODE, buffer_size=10)
        fresh.publish(beat(2))
        wait_flushed(fresh)  # libzmq took the frame: the node cannot tell it was dropped
        got = receive(router, 1, timeout_ms=2000 if handover else 300)
        if handover:
            assert sent_at(got) == [2.0]
        else:
            assert got == []
    finally:
        stale.close()
        if fresh is not None:
            fresh.close()
        router.close()


@pytest.mark.parametrize(
    ("endpoint", "node_id", "buffer_size", "expected"),
    [
        ("tcp://127.0.0.1:1", "", 10, "node id is '', expected 1 to 255 UTF-8 bytes"),
        ("tcp://127.0.0.1:1", "\x00n", 10, "not starting with a NUL"),
        ("tcp://127.0.0.1:1", "n" * 256, 10, "expected 1 to 255"),
        ("tcp://127.0.0.1:1", "n", 0, "telemetry buffer_size is 0, expected at least 1"),
        ("manager:5555", "n", 10, "telemetry endpoint 'manager:5555': .*expected tcp://host:port"),
    ],
)
def test_bad_arguments_are_refused_by_name(context, endpoint, node_id, buffer_size, expected):
    with pytest.raises(ValueError, match=expected):
        Telemetry(context, endpoint, node_id, buffer_size)


def test_close_twice_is_harmless(context):
    tel = Telemetry(context, "tcp://127.0.0.1:1", NODE, buffer_size=1)
    tel.close()
    tel.close()
    assert tel.socket.closed
