"""PUSH sockets to other actors' mailboxes that never block their sender for long."""

from __future__ import annotations

import collections
import logging

import zmq

from batchfarm.actors.codec import encode_frame
from batchfarm.actors.messages import Record
from batchfarm.actors.sockets import make_socket

log = logging.getLogger(__name__)

#: How long frames sent just before a socket closes (a last status from on_stop) may take
#: to reach a live peer; a dead peer delays the closing process by at most this much.
LINGER_MS = 500


def connect_push(context: zmq.Context[zmq.Socket[bytes]], address: str) -> zmq.Socket[bytes]:
    """A PUSH socket connected to ``address``, with a clear error if the address is bad."""
    sock = make_socket(context, zmq.PUSH)
    try:
        sock.connect(address)
    except zmq.ZMQError as e:
        sock.close()
        raise ValueError(
            f"cannot connect to mailbox {address!r}: {e}; expected ipc://PATH or tcp://HOST:PORT"
        ) from None
    return sock


def push(sock: zmq.Socket[bytes], frame: bytes) -> bool:
    """Send without blocking; False when the peer's queue is full (the frame is dropped).

    Frames to a peer that is not up yet wait in the socket's queue (bounded by its
    high-water mark) until it binds, so start order does not matter.
    """
    try:
        sock.send(frame, zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


class Outbox:
    """One PUSH socket per destination address, made on first use and kept.

    A full destination drops the frame and counts it in :attr:`dropped`: control-plane
    frames are telemetry and steering, never the only copy of anything, and an actor's
    loop must not stall on a peer that stopped reading.
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self._context = context
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        #: Frames dropped because their destination's queue was full, by address.
        self.dropped: collections.Counter[str] = collections.Counter()

    def send(self, address: str, record: Record) -> bool:
        """Encode ``record`` and push it to ``address``; False if it was dropped."""
        frame = encode_frame(record)
        sock = self._sockets.get(address)
        if sock is None:
            sock = self._sockets[address] = connect_push(self._context, address)
        if push(sock, frame):
            return True
        self.dropped[address] += 1
        count = self.dropped[address]
        if count & (count - 1) == 0:  # 1st, 2nd, 4th, 8th...: never a flood
            log.warning(
                "dropped a %s frame to %s (%d so far): queue full", record.KIND, address, count
            )
        return False

    def close(self, linger_ms: int = 0) -> None:
        """Close every socket; frames still queued get ``linger_ms`` to be delivered.

        The wait happens when the context is terminated, not here.
        """
        for sock in self._sockets.values():
            sock.close(linger=linger_ms)
        self._sockets.clear()
