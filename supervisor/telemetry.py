"""The node's link to the manager: heartbeats and metrics out, commands in, never blocking.

One DEALER socket connects to the manager's ROUTER. With ``ZMQ_IMMEDIATE`` set, libzmq queues
frames only on a connection that is up: with the manager away, a non-blocking send raises
``zmq.Again`` at once (measured in tests/supervisor/test_telemetry.py), so the frames wait in
this module's bounded buffer, where the oldest are dropped first and counted, and go out when
libzmq has reconnected by itself. Call :meth:`Telemetry.flush` on the node loop's tick so a
buffer filled while the manager was away drains without waiting for the next publish.

Frames already handed to a connection that then dies (the manager killed between two sends)
are lost with it: telemetry is steering, never the only copy of anything. ZMTP heartbeats on
the socket notice a manager that vanished without closing its connections (a partition, a
powered-off host) and drop that connection, so frames buffer here instead of in a dead pipe.
The manager's ROUTER must set ``ZMQ_ROUTER_HANDOVER``: without it, a node reconnecting while
its old connection still looks alive there is ignored, and libzmq cannot tell the node so.
"""

from __future__ import annotations

import collections

import zmq

from batchfarm.actors.codec import encode_frame
from batchfarm.actors.errors import MessageError
from batchfarm.actors.messages import Command, Record
from batchfarm.actors.sockets import Rejects, decode_or_count, make_socket

#: Wait before reconnecting to the manager, then its upper bound as libzmq backs off.
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5000
#: ZMTP ping interval, and the silence after which the manager's connection counts as dead.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 5000
#: Most frames :meth:`Telemetry.commands` reads in one call, so a flood cannot stall the node.
MAX_COMMANDS_PER_CALL = 1000
#: ZeroMQ routing ids are 1 to 255 bytes; a leading zero byte is reserved by libzmq.
MAX_ROUTING_ID_BYTES = 255


class Telemetry:
    """DEALER socket to the manager's ROUTER (tcp). Never blocks the node; bounded buffer.

    The socket's routing id is the node id, so the manager sees every frame under it.
    :attr:`socket` is there for a :class:`zmq.Poller` in the node loop (poll it for
    ``POLLIN``, then call :meth:`commands`).
    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        node_id: str,
        buffer_size: int,
        *,
        heartbeat_ivl_ms: int = HEARTBEAT_IVL_MS,
        heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS,
    ) -> None:
        routing_id = node_id.encode("utf-8")
        if not 0 < len(routing_id) <= MAX_ROUTING_ID_BYTES or routing_id[0] == 0:
            raise ValueError(
                f"node id is {node_id!r}, expected 1 to {MAX_ROUTING_ID_BYTES} UTF-8 bytes"
                " not starting with a NUL"
            )
        if buffer_size < 1:
            raise ValueError(f"telemetry buffer_size is {buffer_size!r}, expected at least 1")
        self.endpoint = endpoint
        self.node_id = node_id
        self._buffer: collections.deque[bytes] = collections.deque(maxlen=buffer_size)
        self._dropped = 0
        self._rejects = Rejects()
        sock = make_socket(context, zmq.DEALER)
        try:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ivl_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_timeout_ms)
            sock.connect(endpoint)
        except zmq.ZMQError as e:
            sock.close()
            raise ValueError(
                f"telemetry endpoint {endpoint!r}: {e}; expected tcp://host:port"
            ) from None
        self._socket = sock

    @property
    def socket(self) -> zmq.Socket[bytes]:
        """The DEALER socket, for the node loop's poller."""
        return self._socket

    @property
    def dropped(self) -> int:
        """Frames dropped because the buffer was full (the oldest go first)."""
        return self._dropped

    @property
    def buffered(self) -> int:
        """Frames waiting for the manager."""
        return len(self._buffer)

    @property
    def rejects(self) -> Rejects:
        """Frames from the manager dropped as bad, by reason."""
        return self._rejects

    def publish(self, record: Record) -> None:
        """Queue a record for the manager and send what can be sent now.

        Raises :class:`~batchfarm.actors.errors.MessageError` if the record does not fit a
        frame: that is a bug in the sender, not the manager being away.
        """
        frame = encode_frame(record)
        if len(self._buffer) == self._buffer.maxlen:
            self._dropped += 1  # the deque drops the oldest frame on append
        self._buffer.append(frame)
        self.flush()

    def flush(self) -> int:
        """Send buffered frames, oldest first, until libzmq would block; return how many."""
        sent = 0
        while self._buffer:
            try:
                self._socket.send(self._buffer[0], zmq.NOBLOCK)
            except zmq.Again:
                break
            self._buffer.popleft()
            sent += 1
        return sent

    def commands(self) -> list[Command]:
        """Read the manager's pending frames without waiting; keep the commands.

        Bad frames and frames that are not commands are counted in :attr:`rejects`.
        """
        out: list[Command] = []
        for _ in range(MAX_COMMANDS_PER_CALL):
            try:
                parts = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(parts) != 1:
                self._rejects.count(
                    MessageError("format", f"{len(parts)} frames in one message, expected 1")
                )
                continue
            record = decode_or_count(parts[0], self._rejects)
            if isinstance(record, Command):
                out.append(record)
            elif record is not None:
                self._rejects.count(
                    MessageError("kind", f"got a {record.KIND} frame, expected command")
                )
        return out

    def close(self) -> None:
        """Close the socket now; buffered frames are discarded. Closing twice is harmless."""
        self._socket.close(linger=0)
