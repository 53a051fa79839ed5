"""A TCP relay in front of an S3 server that can cut a response mid-body, for fault tests.

Each client connection gets its own connection to the server and two pumping threads.
``cut_after(n)`` arms the relay: the next server-to-client stream that has carried ``n``
bytes is cut (both sockets shut), as a dropped network path would.
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

from tests.ports import free_port


class Relay:
    """Listens on a free loopback port and forwards every connection to ``target``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", free_port()))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._cut_after: int | None = None
        #: How many responses were cut.
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, size: int) -> None:
        """Cut the next response stream once it has carried ``size`` bytes."""
        with self._lock:
            self._cut_after = size

    def close(self) -> None:
        """Stop accepting and close every relayed connection."""
        self._closed = True
        for sock in [self._listener, *self._sockets]:
            with suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, response: bool) -> None:
        carried = 0
        limit: int | None = None
        try:
            while data := source.recv(65536):
                if response and limit is None:
                    with self._lock:
                        limit, self._cut_after = self._cut_after, None
                    limit = -1 if limit is None else limit
                if response and limit is not None and limit >= 0 and carried + len(data) > limit:
                    sink.sendall(data[: max(0, limit - carried)])
                    self.cuts += 1
                    break
                sink.sendall(data)
                carried += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
