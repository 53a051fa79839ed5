"""A TCP relay that fault tests put between a process and a server, and cut at will.

``Relay(target_host, target_port)`` listens on a free loopback port and forwards every
connection to the target, byte for byte, from an asyncio loop in a thread of its own. While
:meth:`Relay.cut` is in force, every open connection is reset and every new one is reset as
soon as it is accepted, as when a link or the server's host drops: clients see
"connection reset" at once, not a hang. :meth:`Relay.restore` lets traffic through again.
:meth:`Relay.cut_after` ends the next response after so many bytes: a body cut short.
The listening socket stays bound throughout, so nothing else can take the port meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
#: Bytes read per chunk while pumping.
CHUNK = 64 * 1024


@dataclass
class RelayCounts:
    """What went through the relay: connections forwarded, reset by a cut, and bytes."""

    forwarded: int = 0
    reset: int = 0
    refused: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    #: Responses cut mid-stream by :meth:`Relay.cut_after`.
    cut_mid_response: int = 0


class Relay:
    """Forwards 127.0.0.1:``port`` to the target; :meth:`cut` and :meth:`restore` it.

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.counts = RelayCounts()
        self.port = 0
        self._cut = False
        self._cut_after: int | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        """The relay's address as an HTTP endpoint URL (for a target that speaks HTTP)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._cut

    def start(self) -> Relay:
        """Bind a free port and start forwarding."""
        self._thread.start()
        self._server = self._call(self._listen())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        """Reset every open connection, and every new one until :meth:`restore`."""
        self._call(self._cut_all())

    def cut_after(self, size: int) -> None:
        """End the next response stream once it has carried ``size`` bytes (mid-body)."""
        self._cut_after = size

    def restore(self) -> None:
        """Forward new connections again."""
        self._cut = False

    def close(self) -> None:
        """Stop listening, reset what is open and stop the loop's thread."""
        if not self._thread.is_alive():
            return
        if self._server is not None:
            self._call(self._shutdown(self._server))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop's side -----------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _cut_all(self) -> None:
        self._cut = True
        for writer in list(self._open):
            _reset(writer)
            self.counts.reset += 1
        self._open.clear()

    async def _shutdown(self, server: asyncio.Server) -> None:
        server.close()
        await self._cut_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.counts.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.counts.refused += 1
            _reset(writer)
            return
        self.counts.forwarded += 1
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, up=True), self._pump(up_reader, writer, up=False)
            )
        finally:
            for side in (writer, up_writer):
                self._open.discard(side)
                side.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        counted = 0  # bytes of the response being cut, since it claimed the cut
        limit: int | None = None
        try:
            while data := await reader.read(CHUNK):
                if self._cut:
                    return
                if not up and limit is None and self._cut_after is not None:
                    # The next response bytes on any connection, kept alive or new, claim
                    # an armed cut_after, once.
                    limit, self._cut_after = self._cut_after, None
                if limit is not None:
                    if counted + len(data) > limit:
                        writer.write(data[: max(0, limit - counted)])
                        await writer.drain()
                        self.counts.cut_mid_response += 1
                        # A FIN, not a reset: the client reads every byte sent, then the
                        # body ends early, as when a server or proxy drops mid-response.
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    counted += len(data)
                writer.write(data)
                await writer.drain()
                if up:
                    self.counts.bytes_up += len(data)
                else:
                    self.counts.bytes_down += len(data)
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN (SO_LINGER 0): the peer sees the link drop."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
