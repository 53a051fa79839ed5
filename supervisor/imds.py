"""The EC2 instance metadata service: the notices that say this node is about to go away.

A node on EC2 learns of its end from the instance metadata service (IMDSv2: a session token
from ``PUT /latest/api/token``, sent with every read):

- ``spot/instance-action``: the two-minute spot interruption notice (404 until there is one,
  then ``{"action": "terminate", "time": "2026-12-03T12:00:00Z"}``);
- ``events/recommendations/rebalance``: a spot rebalance recommendation, often earlier;
- ``autoscaling/target-lifecycle-state``: ``Terminated`` once Auto Scaling has chosen this
  instance for scale-in (its lifecycle hook holds the instance until the node says done).

:class:`NoticeWatcher` polls them every few seconds (AWS recommends five) in a daemon thread
and queues each notice once; the node's loop takes them with :meth:`NoticeWatcher.take`.
A metadata service that does not answer is logged once per outage and polled again.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

#: Seconds between polls (AWS's advice for spot notices).
POLL_S = 5.0
#: Lifetime asked for each session token; it is renewed well before it runs out.
TOKEN_TTL_S = 21_600
_TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name, not a secret

NoticeKind = Literal["spot-interruption", "rebalance", "terminating"]


@dataclass(frozen=True)
class Notice:
    """This instance is going away (or may soon): what said so and by when."""

    kind: NoticeKind
    #: When the instance stops, in seconds since the epoch; None when no time was given.
    deadline: float | None
    #: What the metadata service said, for the log.
    detail: str


class MetadataError(Exception):
    """The metadata service did not answer, or not as IMDSv2 does."""


class MetadataClient:
    """Reads instance metadata over IMDSv2 (a token per session, renewed before it expires).

    Every failure, a connection error included, is raised as :class:`MetadataError`.
    """

    def __init__(self, base_url: str, timeout_s: float = 2.0) -> None:
        # Imported here, not at the top: httpx (and the rich and click its own command line
        # pulls in) adds 0.1 to 0.3 s to a node's start, and a node off EC2 never reads
        # metadata.
        import httpx  # noqa: PLC0415

        # The metadata service is link-local: never through a proxy from the environment.
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, trust_env=False)
        self._http_error = httpx.HTTPError
        self._token = ""
        self._token_until = 0.0

    def get(self, path: str) -> str | None:
        """The text at ``/latest/meta-data/<path>``, or None where there is nothing (404)."""
        for attempt in range(2):
            response = self._request(
                "GET", f"/latest/meta-data/{path}", {_TOKEN_HEADER: self._session_token()}
            )
            if response.status_code == 401 and attempt == 0:
                self._token_until = 0.0  # the token was refused: take a new one, once
                continue
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise MetadataError(f"GET {path}: HTTP {response.status_code}")
            return response.text
        raise MetadataError(f"GET {path}: the service refused a fresh token")

    def close(self) -> None:
        """Close the connection."""
        self._http.close()

    def _request(self, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
        try:
            return self._http.request(method, path, headers=headers)
        except self._http_error as error:
            raise MetadataError(f"{method} {path}: {error}") from error

    def _session_token(self) -> str:
        if time.monotonic() < self._token_until:
            return self._token
        response = self._request(
            "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)}
        )
        if response.status_code != 200 or not response.text:
            raise MetadataError(f"PUT /latest/api/token: HTTP {response.status_code}")
        self._token = response.text
        self._token_until = time.monotonic() + TOKEN_TTL_S / 2
        return self._token


@dataclass(frozen=True)
class InstanceFacts:
    """What prices an EC2 instance: its type, zone and lifecycle (empty where unknown)."""

    instance_type: str = ""
    zone: str = ""
    #: ``spot`` or ``on-demand`` (IMDS ``instance-life-cycle``).
    lifecycle: str = ""


def read_instance(base_url: str) -> InstanceFacts:
    """This instance's type, zone and lifecycle, read once at start; empty facts on failure.

    A node without them still runs: the manager then prices it at its class's on-demand
    price, so a failure is logged, not raised.
    """
    client = MetadataClient(base_url)
    try:
        read = [
            (client.get(path) or "").strip()
            for path in ("instance-type", "placement/availability-zone", "instance-life-cycle")
        ]
    except MetadataError as error:
        # Not "instance metadata at ...": that line is the notice watcher's, once per outage.
        log.warning("pricing: no instance type from %s (%s); priced on demand", base_url, error)
        return InstanceFacts()
    finally:
        client.close()
    return InstanceFacts(*read)


def read_notices(client: MetadataClient) -> list[Notice]:
    """Every notice the metadata service holds now (one poll)."""
    notices = []
    action = client.get("spot/instance-action")
    if action is not None:
        notices.append(Notice("spot-interruption", _time_of(action, "time"), action.strip()))
    rebalance = client.get("events/recommendations/rebalance")
    if rebalance is not None:
        notices.append(Notice("rebalance", None, rebalance.strip()))
    state = client.get("autoscaling/target-lifecycle-state")
    if state is not None and state.strip() == "Terminated":
        notices.append(Notice("terminating", None, state.strip()))
    return notices


def _time_of(text: str, field: str) -> float | None:
    """The ISO 8601 time in the JSON object ``text`` under ``field`` (None if unreadable)."""
    try:
        value = json.loads(text)[field]
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, TypeError):
        log.warning("instance metadata: no readable %r in %r", field, text[:200])
        return None


class NoticeWatcher:
    """Polls the metadata service in a daemon thread and queues each kind of notice once."""

    def __init__(self, base_url: str, poll_s: float = POLL_S) -> None:
        self._client = MetadataClient(base_url)
        self._poll_s = poll_s
        self._seen: set[NoticeKind] = set()
        self._queue: queue.SimpleQueue[Notice] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imds-notices", daemon=True)
        self._base_url = base_url

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def take(self) -> list[Notice]:
        """The notices that arrived since the last call (never blocks)."""
        taken = []
        while True:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                return taken

    def stop(self) -> None:
        """Stop polling and close the connection."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._client.close()

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                for notice in read_notices(self._client):
                    if notice.kind not in self._seen:
                        self._seen.add(notice.kind)
                        self._queue.put(notice)
                if failing:
                    log.info("instance metadata at %s answers again", self._base_url)
                failing = False
            except MetadataError as error:
                if not failing:
                    log.warning(
                        "instance metadata at %s: %s; polling again every %g s",
                        self._base_url,
                        error,
                        self._poll_s,
                    )
                failing = True
            self._stop.wait(self._poll_s)
