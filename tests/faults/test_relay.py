"""The fault tests' TCP relay: it forwards, a cut drops open and new connections, restore heals."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.faults.relay import Relay


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(4096):
                self.request.sendall(data)
        except ConnectionError:
            pass  # the relay reset this side: what the cut is for


@pytest.fixture
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def connect(relay: Relay) -> socket.socket:
    return socket.create_connection(("127.0.0.1", relay.port), timeout=5)


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def dropped_at_once(relay: Relay) -> bool:
    """True if a new connection is reset: while connecting, or on its first use."""
    try:
        sock = connect(relay)
    except ConnectionResetError:
        return True  # the reset came before connect() had looked at the socket's error
    with sock:
        return dropped(sock)


def dropped(sock: socket.socket) -> bool:
    """True if the connection is gone: a reset, or the end of the stream, on the next use."""
    try:
        sock.sendall(b"x")
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_forwards_both_ways(echo):
    with Relay("127.0.0.1", echo) as relay, connect(relay) as sock:
        assert roundtrip(sock, b"hello" * 1000) == b"hello" * 1000
    assert relay.counts.forwarded == 1
    assert relay.counts.bytes_up == relay.counts.bytes_down == 5000


def test_a_cut_drops_open_and_new_connections_until_restored(echo):
    with Relay("127.0.0.1", echo) as relay:
        before = connect(relay)
        assert roundtrip(before, b"ping") == b"ping"
        relay.cut()
        assert dropped(before)
        # The port still listens; the connection is reset as soon as it is accepted.
        assert dropped_at_once(relay)
        assert relay.counts.reset == 2  # both ends of the open connection
        assert relay.counts.refused == 1
        relay.restore()
        with connect(relay) as after:
            assert roundtrip(after, b"pong") == b"pong"
        before.close()


def test_an_unreachable_target_resets_the_client():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        with Relay("127.0.0.1", port) as relay:
            assert dropped_at_once(relay)
        assert relay.counts.refused == 1
