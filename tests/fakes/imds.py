"""A small EC2 instance metadata service (IMDSv2) for the tests: moto serves none.

It answers like the real one: ``PUT /latest/api/token`` with a TTL header gives a session
token, reads without a valid token get 401, and the notice paths answer 404 until a test
arms them (:meth:`FakeImds.spot_interruption`, :meth:`rebalance`, :meth:`terminate`,
:meth:`target_lifecycle`).
``fail`` makes every request a 500, to test a node that loses its metadata service.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.ports import free_port


class FakeImds:
    """The metadata service of one instance, served on a free loopback port."""

    def __init__(self, instance_id: str = "i-0123456789abcdef0") -> None:
        self.paths: dict[str, str] = {"instance-id": instance_id, "placement/region": "us-east-1"}
        self.tokens: set[str] = set()
        self.fail = False
        #: Every request as (method, path, whether its token was valid).
        self.requests: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeImds:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spot_interruption(self, at: float, action: str = "terminate") -> None:
        """Arm the two-minute notice: the instance stops at ``at`` (epoch seconds)."""
        when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._set("spot/instance-action", json.dumps({"action": action, "time": when}))

    def rebalance(self) -> None:
        """Arm a rebalance recommendation."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._set("events/recommendations/rebalance", json.dumps({"noticeTime": now}))

    def terminate(self) -> None:
        """Auto Scaling chose this instance for scale-in."""
        self.target_lifecycle("Terminated")

    def target_lifecycle(self, state: str) -> None:
        """What Auto Scaling moves the instance to (``InService`` while it launches)."""
        self._set("autoscaling/target-lifecycle-state", state)

    def _set(self, path: str, value: str) -> None:
        with self._lock:
            self.paths[path] = value


def _handler(imds: FakeImds) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the tests read ``imds.requests`` instead."""

        def do_PUT(self) -> None:
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            imds.requests.append(("PUT", self.path, True))
            if imds.fail:
                return self._send(500, "fail")
            if self.path != "/latest/api/token" or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return self._send(400, "bad token request")
            token = uuid.uuid4().hex
            imds.tokens.add(token)
            return self._send(200, token)

        def do_GET(self) -> None:
            valid = self.headers.get("X-aws-ec2-metadata-token", "") in imds.tokens
            imds.requests.append(("GET", self.path, valid))
            if imds.fail:
                return self._send(500, "fail")
            if not valid:
                return self._send(401, "")
            prefix = "/latest/meta-data/"
            with imds._lock:
                value = imds.paths.get(self.path.removeprefix(prefix))
            if not self.path.startswith(prefix) or value is None:
                return self._send(404, "Not Found")
            return self._send(200, value)

        def _send(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
