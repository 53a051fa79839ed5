"""A real API server for the tests: uvicorn on a free port over an embedded grid in tmp.

The store is SQLite, the blob store a local directory, the queues the embedded SQLite queue,
exactly as ``batchfarm manager`` opens them; the results processor and an in-process worker
(``tests.manager.results_grid.InlineWorker``) stand in for a node when a test needs tasks
to finish.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from batchfarm.actors.api.metrics import ApiMetrics
from batchfarm.actors.api.server import ApiServer, api_server
from batchfarm.actors.api.web import ApiContext
from batchfarm.actors.backends import (
    COMPLETIONS,
    open_blobs,
    open_queue,
    open_store,
    open_task_queues,
)
from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.queue import TaskQueue
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.backends.store import Store
from batchfarm.actors.manager.plan import SpecPlanner
from batchfarm.actors.manager.results import ResultsProcessor
from batchfarm.actors.settings import Settings
from tests.manager.results_grid import InlineWorker
from tests.ports import free_port
from tests.worker.grid import make_settings

API = "/api/v1"


@dataclass
class ApiGrid:
    """An API server on a free port, the backends behind it, and an HTTP client."""

    settings: Settings
    store: Store
    blobs: BlobStore
    tasks: TaskQueues
    completions: TaskQueue
    metrics: ApiMetrics
    server: ApiServer
    client: httpx.Client
    worker: InlineWorker | None = None

    def run_tasks(self, fail: tuple[str, ...] = (), rounds: int = 20) -> None:
        """Run every queued task in this process and record the results, stage after stage.

        ``fail`` names task ids whose next run fails for good.
        """
        if self.worker is None:
            self.worker = InlineWorker(self.tasks, self.completions, self.blobs)
        self.worker.fail.update(fail)
        results = ResultsProcessor(
            self.store,
            self.tasks,
            self.completions,
            SpecPlanner(self._spec, self.settings.tasks),
            observer=self.metrics.runs,
        )
        for _ in range(rounds):
            ran = self.worker()
            while results.step(10):
                pass
            if not ran:
                return

    def _spec(self, job_id: str) -> dict[str, Any]:
        job = self.store.job(job_id)
        assert job is not None
        return dict(job.spec)

    def close(self) -> None:
        self.client.close()
        self.server.stop()
        self.tasks.close()
        self.completions.close()
        self.blobs.close()
        self.store.close()


def start_api(state: Path, headers: dict[str, str] | None = None, **api: Any) -> ApiGrid:
    """Settings under ``state`` (``api`` overrides ``[api]``), backends, a started server."""
    settings = make_settings(state, api={"listen": f"http://127.0.0.1:{free_port()}", **api})
    store = open_store(settings.store)
    blobs = open_blobs(settings.storage)
    tasks = open_task_queues(settings.queue)
    completions = open_queue(settings.queue, COMPLETIONS)
    queues = {queue.name: queue for queue in tasks}
    queues[COMPLETIONS] = completions
    metrics = ApiMetrics(store, queues)
    context = ApiContext(settings, store, blobs, tasks, queues)
    server = api_server(context, metrics)
    server.start()
    client = httpx.Client(base_url=server.url, headers=headers or {}, timeout=10)
    return ApiGrid(settings, store, blobs, tasks, completions, metrics, server, client)


def with_token(grid: ApiGrid, token: str) -> httpx.Client:
    """Another client of the grid's server that sends ``token``."""
    return httpx.Client(
        base_url=grid.server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def noop_spec(parts: int = 2, **top: Any) -> dict[str, Any]:
    """A stored-form spec: one ``noop`` stage of ``parts`` tasks."""
    return {"name": "api-test", **top, "stages": [{"handler": "noop", "parts": parts}]}


def keys_spec(keys: list[str], **top: Any) -> dict[str, Any]:
    """A stored-form spec over blob keys: a ``checksum`` per key, then a fan-in ``checksum``."""
    return {
        "name": "sums",
        **top,
        "inputs": {"keys": keys},
        "stages": [
            {"name": "each", "handler": "checksum"},
            {"name": "all", "handler": "checksum", "mode": "fan_in"},
        ],
    }


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (fails if it is not there)."""
    shown = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{shown}}}" if labels else name) + r" (\S+)$"
    for line in text.splitlines():
        found = re.match(pattern, line)
        if found:
            return float(found.group(1))
    raise AssertionError(f"no sample {name}{{{shown}}} in the exposition")


def settings_with(settings: Settings, **api: Any) -> Settings:
    """``settings`` with ``[api]`` values replaced."""
    return replace(settings, api=replace(settings.api, **api))
