"""Who may call the API: bearer tokens, and the loopback rule when there is none.

With ``[api] token`` set, every request (``/metrics`` and ``/openapi.json`` too) carries
``Authorization: Bearer <token>``, or ``<read_token>`` for GET and HEAD only. With no
token, the API is open, which is safe only because it then listens on loopback: the manager
refuses to start otherwise (:func:`check_exposure`), and requests from any other address
are refused here as well. Tokens are compared in constant time and never logged.

The web page's files (``/`` and ``/ui/...``, see :mod:`batchfarm.actors.api.page`) need no
token: they hold no data, and the page sends the token with each API call it makes.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from batchfarm.actors.api.web import error_response
from batchfarm.actors.errors import NO_VALUE, ConfigError
from batchfarm.actors.settings import ApiSettings

#: Methods the read token may use.
READ_METHODS = frozenset({"GET", "HEAD"})
#: The web page's paths, which anyone who can connect may read.
PAGE_PATHS = ("/", "/ui")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def listen_address(api: ApiSettings) -> tuple[str, int]:
    """The host and port ``[api] listen`` names (the settings loader checked its form)."""
    parts = urlsplit(api.listen)
    if parts.hostname is None or parts.port is None:
        raise ConfigError("manager", "[api] listen", api.listen, "expected http://host:port")
    return parts.hostname, parts.port


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(api: ApiSettings) -> None:
    """Refuse an API that would listen beyond this machine without a token."""
    host, _ = listen_address(api)
    if not api.token and not is_loopback(host):
        expected = (
            f"expected a bearer token (set BATCHFARM_API_TOKEN) because [api] listen ="
            f" {api.listen} is not a loopback address; or listen on 127.0.0.1"
        )
        raise ConfigError("manager", "[api] token", NO_VALUE, expected)


def _same(given: bytes, token: str) -> bool:
    return hmac.compare_digest(given, token.encode("utf-8"))


class BearerAuth:
    """ASGI middleware checking each request's bearer token (see the module docstring)."""

    def __init__(self, app: ASGIApp, token: str, read_token: str = "") -> None:
        self.app = app
        self.token = token
        self.read_token = read_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 401 or 403 as JSON."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = None if _is_page(scope) else self._problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, message = problem
        headers = _CHALLENGE if status == 401 else None
        await error_response(status, message, headers=headers)(scope, receive, send)

    def _problem(self, scope: Scope) -> tuple[int, str] | None:
        if not self.token:
            client = scope.get("client")
            if client and not is_loopback(str(client[0])):
                return 403, "the API has no [api] token, so it answers this machine only"
            return None
        given = _bearer(scope)
        if given is None:
            return 401, "missing Authorization: Bearer <token> header: the API needs a token"
        if _same(given, self.token):
            return None
        if self.read_token and _same(given, self.read_token):
            if scope["method"] in READ_METHODS:
                return None
            return 403, "the read token may only read (GET, HEAD): this request needs the token"
        return 401, "wrong bearer token: expected [api] token or [api] read_token"


def _is_page(scope: Scope) -> bool:
    """True for a read of the web page's files (no data in them)."""
    path = str(scope["path"])
    page = path in PAGE_PATHS or path.startswith("/ui/")
    return page and scope["method"] in READ_METHODS


def _bearer(scope: Scope) -> bytes | None:
    """The token of the request's ``Authorization: Bearer`` header, or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return bytes(token.strip())
            return None
    return None
