"""The API's HTTP server: uvicorn on its own event loop, in a daemon thread of the manager.

The socket is bound in :meth:`ApiServer.start`, on the caller's thread, so a taken port is
a clear error at once (naming ``[api] listen``) rather than a log line from a thread. The
thread's uvicorn installs no signal handlers (the manager's loop owns SIGTERM and SIGINT),
logs warnings only, and writes no access log.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from batchfarm.actors.api.app import create_app
from batchfarm.actors.api.auth import listen_address
from batchfarm.actors.api.metrics import ApiMetrics
from batchfarm.actors.api.web import ApiContext
from batchfarm.actors.errors import ConfigError

log = logging.getLogger(__name__)

#: Seconds open connections get to finish when the server stops.
GRACEFUL_S = 2


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process's own loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Install nothing: SIGTERM and SIGINT belong to the manager's loop."""
        yield


class ApiServer:
    """Serves ``app`` at ``host:port`` from a daemon thread until :meth:`stop`."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: _ThreadServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The server's base URL (with the port bound, if port 0 was asked for)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Bind, start the thread and return once the server accepts connections.

        Raises :class:`ConfigError` naming ``[api] listen`` if the address cannot be bound
        (taken, or not this machine's), and RuntimeError if the server does not come up.
        """
        if self._thread is not None:
            raise RuntimeError(f"the API server at {self.url} is already started")
        sock = self._bind()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_S,
        )
        server = _ThreadServer(config)
        self._server = server

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as error:  # noqa: BLE001 - reported by start() and stop()
                self._error = error
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name="api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the API server at {self.url} did not start: {self._error}")
            time.sleep(0.01)
        log.info("api: listening at %s", self.url)

    def _bind(self) -> socket.socket:
        listen = f"http://{self.host}:{self.port}"
        try:
            infos = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
        except OSError as error:
            expected = f"expected an address of this machine ({error.strerror or error})"
            raise ConfigError("manager", "[api] listen", listen, expected) from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError as error:
            sock.close()
            expected = f"expected an address this process can listen on ({error.strerror})"
            raise ConfigError("manager", "[api] listen", listen, expected) from None
        sock.setblocking(False)
        return sock

    def stop(self, timeout_s: float = GRACEFUL_S + 3.0) -> None:
        """Stop serving: refuse new connections, let open ones finish, end the thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout_s)
        if thread.is_alive():
            server.force_exit = True
            thread.join(1.0)
        if self._error is not None and not isinstance(self._error, SystemExit | KeyboardInterrupt):
            log.warning("api: the server thread ended with %r", self._error)
        self._server = self._thread = None


def api_server(api: ApiContext, metrics: ApiMetrics) -> ApiServer:
    """The server for ``api`` at ``[api] listen`` (not started)."""
    host, port = listen_address(api.settings.api)
    return ApiServer(create_app(api, metrics), host, port)
