"""ZeroMQ sockets: an oversized frame drops only its sender's connection; bad frames are counted."""

from __future__ import annotations

import time

import pytest
import zmq

from batchfarm.actors.codec import MAX_FRAME_BYTES, encode_frame
from batchfarm.actors.messages import Command, Heartbeat
from batchfarm.actors.sockets import Rejects, decode_or_count, make_socket


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.term()


def recv(sock: zmq.Socket, timeout_ms: int = 5000) -> list[bytes] | None:
    if sock.poll(timeout_ms) == 0:
        return None
    return sock.recv_multipart()


def test_sockets_cap_frame_size(context):
    sock = make_socket(context, zmq.ROUTER)
    try:
        assert sock.getsockopt(zmq.MAXMSGSIZE) == MAX_FRAME_BYTES
        assert sock.getsockopt(zmq.LINGER) == 0
    finally:
        sock.close()


def test_an_oversized_frame_is_dropped_and_the_peer_carries_on(context):
    router = make_socket(context, zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = context.socket(zmq.DEALER)  # a peer without our limits
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RECONNECT_IVL, 50)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        beat = encode_frame(Heartbeat(node="n1", sent_at=1.0, state="up"))
        dealer.send(beat)
        first = recv(router)
        assert first is not None
        assert first[1] == beat

        dealer.send(b"\x00" * (MAX_FRAME_BYTES + 1))
        assert recv(router, 500) is None  # dropped with the connection, never delivered

        # libzmq reconnects the dealer by itself; later frames arrive again.
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            dealer.send(beat)
            got = recv(router, 200)
        assert got is not None
        assert got[1] == beat
    finally:
        dealer.close()
        router.close()


def test_bad_frames_are_counted_and_dropped():
    rejects = Rejects()
    good = encode_frame(Command(name="drain"))
    assert decode_or_count(good, rejects) == Command(name="drain")
    assert decode_or_count(b"\xc1", rejects) is None
    assert decode_or_count(b"\x00" * (MAX_FRAME_BYTES + 1), rejects) is None
    assert decode_or_count(good, rejects) == Command(name="drain")
    assert rejects.total == 2
    assert rejects.by_reason == {"format": 1, "size": 1}
