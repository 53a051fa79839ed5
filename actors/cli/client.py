"""The manager's HTTP API as the CLI's verbs call it: JSON in and out, errors as one line.

Every verb finds the API through one setting, ``[api] listen``, and sends ``[api] token`` as
a bearer token when it is set. What can go wrong becomes an :class:`ApiError` whose message
is the one line the command prints (the CLI's entry point shows it and exits 1):

- nobody listens: ``no manager API at http://127.0.0.1:8470 ([api] listen in ...): is
  `batchfarm manager` or `batchfarm up` running?``;
- the API refuses a request: its JSON error's message, and the field at fault when it names
  one;
- anything else (a timeout, a reply that is not JSON): what was asked and what came back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from batchfarm.actors.errors import BatchfarmError
from batchfarm.actors.settings import Loaded

#: API paths start here (``/metrics`` and ``/openapi.json`` do not).
PREFIX = "/api/v1"
#: Seconds to connect; a manager on the same machine answers at once.
CONNECT_TIMEOUT_S = 5.0
#: Seconds to wait for a reply (or the next chunk of a download).
READ_TIMEOUT_S = 60.0
#: Bytes read per chunk of a download.
DOWNLOAD_CHUNK = 1024 * 1024
#: Most tasks asked for per page of ``GET /jobs/{id}/tasks``.
TASK_PAGE = 1000

#: ``progress(bytes)``: called with the bytes of each chunk as a download goes.
Advance = Callable[[int], None]


class ApiError(BatchfarmError):
    """A call to the manager's API failed; the message is the line to show the user.

    ``status`` is the HTTP status (0 when no reply came), ``field`` the request field the API
    blamed, if any.
    """

    def __init__(self, message: str, *, status: int = 0, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class NoApiError(ApiError):
    """Nobody answers at ``[api] listen``: the manager is not running (or listens elsewhere)."""


def source_text(loaded: Loaded) -> str:
    """Where ``[api] listen`` came from, as the error message names it."""
    source = loaded.sources.get("api.listen", "default")
    return "the built-in defaults" if source == "default" else source


class ApiClient:
    """A client of the manager's API (``[api] listen``), closed with ``close()`` or ``with``."""

    def __init__(
        self,
        base_url: str,
        token: str = "",
        *,
        source: str = "the built-in defaults",
        timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.source = source
        headers = {"Accept": "application/json", "User-Agent": "batchfarm-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            # The API is on this machine or a private network: no proxy from the environment.
            trust_env=False,
        )

    @classmethod
    def from_loaded(cls, loaded: Loaded) -> ApiClient:
        """The client for the settings a command loaded."""
        api = loaded.settings.api
        return cls(api.listen, api.token, source=source_text(loaded))

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- plain calls --------------------------------------------------------------------

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """``GET PREFIX + path``; the reply's JSON."""
        return self._call("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        """``POST PREFIX + path`` with a JSON body; the reply's JSON."""
        return self._call("POST", path, body=body)

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        url = PREFIX + path
        with self._transport(method, url):
            reply = self._http.request(
                method, url, params=_query(params), json=body if method == "POST" else None
            )
        if reply.status_code >= 400:
            raise _refused(method, url, reply)
        try:
            return reply.json()
        except ValueError:
            what = reply.text[:200].strip() or "an empty body"
            raise ApiError(
                f"{method} {self.base_url}{url}: expected JSON from the manager API, got {what!r}",
                status=reply.status_code,
            ) from None

    @contextmanager
    def _transport(self, method: str, url: str) -> Iterator[None]:
        """Turn httpx's transport errors into one-line :class:`ApiError`s."""
        try:
            yield
        except httpx.ConnectError:
            raise NoApiError(
                f"no manager API at {self.base_url} ([api] listen in {self.source}): "
                "is `batchfarm manager` or `batchfarm up` running?"
            ) from None
        except httpx.TimeoutException:
            raise ApiError(
                f"{method} {self.base_url}{url}: the manager API did not answer in time"
            ) from None
        except httpx.HTTPError as e:
            raise ApiError(f"{method} {self.base_url}{url}: {e}") from None

    # -- the API's resources ------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``: the grid's name and the manager's version."""
        return dict(self.get("/health"))

    def job(self, job_id: str) -> dict[str, Any]:
        """One job with its stages and first failures."""
        return dict(self.get(f"/jobs/{_seg(job_id)}"))

    def jobs(self, states: Sequence[str] = (), limit: int = 100) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        return list(self.get("/jobs", {"state": list(states), "limit": limit})["jobs"])

    def tasks(
        self, job_id: str, *, stage: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        """Every task of a job (optionally of one stage or state), page after page."""
        found: list[dict[str, Any]] = []
        while True:
            params = {"stage": stage, "state": state, "limit": TASK_PAGE, "offset": len(found)}
            page = list(self.get(f"/jobs/{_seg(job_id)}/tasks", params)["tasks"])
            found.extend(page)
            if len(page) < TASK_PAGE:
                return found

    def running_tasks(self, job_id: str, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` of a job's running tasks."""
        params = {"state": "running", "limit": limit}
        return list(self.get(f"/jobs/{_seg(job_id)}/tasks", params)["tasks"])

    def results(self, job_id: str) -> list[dict[str, Any]]:
        """The outputs of the job's last stage: task, stage, part, key, size, url."""
        return list(self.get(f"/jobs/{_seg(job_id)}/results")["results"])

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: ``{"id", "cancelled", "state"}``."""
        return dict(self.post(f"/jobs/{_seg(job_id)}/cancel"))

    def retry(self, job_id: str) -> dict[str, Any]:
        """Resubmit a job's failed tasks: ``{"id", "retried", "state"}``."""
        return dict(self.post(f"/jobs/{_seg(job_id)}/retry"))

    def nodes(self) -> list[dict[str, Any]]:
        """Every node the manager knows, with its workers."""
        return list(self.get("/nodes")["nodes"])

    def node_command(self, node: str, command: str, body: Any = None) -> dict[str, Any]:
        """``POST /nodes/{node}/{command}``: drain, pause, resume, cordon, uncordon."""
        return dict(self.post(f"/nodes/{_seg(node)}/{command}", body))

    def download(self, path: str, target: Path, advance: Advance | None = None) -> int:
        """Stream ``path`` (an API path such as ``/api/v1/blobs/...``) into ``target``.

        Written whole or not at all (a ``.part`` file renamed at the end); returns the bytes.
        """
        tmp = target.with_name(f".{target.name}.part")
        size = 0
        try:
            with self._transport("GET", path), self._http.stream("GET", path) as reply:
                if reply.status_code >= 400:
                    reply.read()
                    raise _refused("GET", path, reply)
                with tmp.open("wb") as out:
                    for chunk in reply.iter_bytes(DOWNLOAD_CHUNK):
                        out.write(chunk)
                        size += len(chunk)
                        if advance is not None:
                            advance(len(chunk))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return size


def _seg(value: str) -> str:
    """One path segment: ids are plain, but a node's name may hold anything."""
    return quote(value, safe="")


def _query(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Query parameters without the unset ones (httpx repeats a list's items)."""
    if params is None:
        return None
    return {k: v for k, v in params.items() if v is not None and v != []}


def _refused(method: str, url: str, reply: httpx.Response) -> ApiError:
    """The API's error reply as one line: its message, and the field it blames."""
    status = reply.status_code
    try:
        data = reply.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message = data["error"]
        field = data.get("field") if isinstance(data.get("field"), str) else None
        if field and field not in message:
            message = f"{message} (field {field})"
        if status == 401:
            message += " (set [api] token, or BATCHFARM_API_TOKEN, to the grid's token)"
        elif status == 403:
            message += " (a read-only token cannot change anything: use [api] token)"
        return ApiError(message, status=status, field=field)
    shown = reply.text[:200].strip() or reply.reason_phrase
    return ApiError(f"{method} {url}: HTTP {status}: {shown}", status=status)
