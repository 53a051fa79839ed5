"""An Auto Scaling endpoint of our own in front of moto: the lifecycle actions moto lacks.

moto answers CompleteLifecycleAction and RecordLifecycleActionHeartbeat with HTTP 500. This
server speaks the AWS Query API for those two actions, as AWS documents them, and forwards
every other request to moto unchanged, so boto3 still goes over HTTP for everything.

A test holds a member at a hook (``hold``), as an enforced lifecycle hook would; completing
the action releases it, and an action on a member nobody holds gets AWS's ValidationError.
``deny`` makes an action answer AccessDenied, as a policy without it would.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import httpx

_NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
LIFECYCLE_ACTIONS = ("CompleteLifecycleAction", "RecordLifecycleActionHeartbeat")
# Hop-by-hop and length headers the forwarding client sets itself.
_DROP = {"host", "content-length", "connection", "transfer-encoding"}


@dataclass
class LifecycleEndpoint:
    """The running endpoint: its URL, the calls it answered and the members it holds."""

    upstream: str
    url: str = ""
    #: Every lifecycle call answered, as ``(action, {param: value})``.
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: ``(group, hook, instance id)`` of members held in a wait state.
    held: set[tuple[str, str, str]] = field(default_factory=set)
    denied: set[str] = field(default_factory=set)
    _server: ThreadingHTTPServer | None = None
    _http: httpx.Client | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, group: str, hook: str, instance_id: str) -> None:
        """Hold a member at a hook, as AWS does on Pending:Wait or Terminating:Wait."""
        with self._lock:
            self.held.add((group, hook, instance_id))

    def deny(self, action: str) -> None:
        """Answer ``action`` with AccessDenied from now on."""
        self.denied.add(action)

    def answer(self, params: dict[str, str]) -> tuple[int, str]:
        """The status and XML body AWS would send for a lifecycle call."""
        action = params.get("Action", "")
        if action in self.denied:
            return 403, _error(
                "AccessDenied", f"User is not authorized to perform: autoscaling:{action}"
            )
        key = (
            params.get("AutoScalingGroupName", ""),
            params.get("LifecycleHookName", ""),
            params.get("InstanceId", ""),
        )
        with self._lock:
            self.calls.append((action, params))
            if key not in self.held:
                return 400, _error(
                    "ValidationError", f"No active Lifecycle Action found with instance ID {key[2]}"
                )
            if action == "CompleteLifecycleAction":
                self.held.discard(key)
        return 200, (
            f'<{action}Response xmlns="{_NS}"><{action}Result/>'
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            f"</{action}Response>"
        )

    def start(self) -> None:
        """Serve on a free loopback port in a thread."""
        endpoint = self
        client = self._http = httpx.Client(base_url=self.upstream, timeout=30.0)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                params = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                if params.get("Action") in LIFECYCLE_ACTIONS:
                    status, text = endpoint.answer(params)
                    self._reply(status, text.encode(), "text/xml")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _DROP}
                upstream = client.post(self.path, content=body, headers=headers)
                self._reply(
                    upstream.status_code,
                    upstream.content,
                    upstream.headers.get("content-type", "text/xml"),
                )

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._http is not None:
            self._http.close()


def _error(code: str, message: str) -> str:
    return (
        f'<ErrorResponse xmlns="{_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId>"
        "</ErrorResponse>"
    )
