"""ZeroMQ sockets made one way: bounded, non-lingering, and read through the codec.

Every socket batchfarm opens comes from :func:`make_socket`, which caps the size of a frame
a peer may send (a larger one drops that peer's connection, which it then re-opens) and
bounds queues, so a runaway or hostile peer cannot exhaust a process's memory.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

import zmq

from batchfarm.actors.codec import MAX_FRAME_BYTES, decode_frame
from batchfarm.actors.errors import MessageError
from batchfarm.actors.messages import Record

log = logging.getLogger(__name__)

#: Frames queued per peer before sends block or drop (ZeroMQ's high-water mark).
HIGH_WATER_MARK = 10_000


def make_socket(context: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    """Open a socket of ``kind`` (``zmq.ROUTER``, ``zmq.DEALER``, ...) with batchfarm's limits."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    # Closing must never hang a process on a peer that went away.
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    return sock


@dataclass
class Rejects:
    """Counts of frames dropped as bad, by reason (``size``, ``format``, ``schema``, ...)."""

    by_reason: collections.Counter[str] = field(default_factory=collections.Counter)

    def count(self, error: MessageError) -> None:
        """Count one rejected frame."""
        self.by_reason[error.reason] += 1

    @property
    def total(self) -> int:
        """All frames rejected so far."""
        return sum(self.by_reason.values())


def decode_or_count(frame: bytes, rejects: Rejects) -> Record | None:
    """Decode a frame; a bad one is counted, logged once in a while, and gives None."""
    try:
        return decode_frame(frame)
    except MessageError as e:
        rejects.count(e)
        if rejects.total & (rejects.total - 1) == 0:  # 1st, 2nd, 4th, 8th...: never a flood
            log.warning("dropped a bad frame (%d so far): %s", rejects.total, e)
        return None
