"""``batchfarm manager``: the actor that records the grid and moves its jobs along.

It runs in the main process with three parts so far:

- results: a thread that takes completion events from the completions queue (the data
  plane: events wait there while the manager is down, so a restart loses none), records them
  in the store and enqueues the next stages' tasks;
- telemetry: the ROUTER the nodes report to (``[node] manager``), polled on the loop, whose
  heartbeats and metrics go to the store in batches, and which marks silent nodes lost;
- the schedule: jobs waiting for their start time are enqueued once it comes.

Only the manager writes the store.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from batchfarm.actors.backends import COMPLETIONS, TASKS, open_queue, open_store
from batchfarm.actors.backends.store.models import JobState
from batchfarm.actors.errors import BackendError
from batchfarm.actors.manager.plan import SpecPlanner
from batchfarm.actors.manager.results import ResultsProcessor
from batchfarm.actors.manager.submit import start_job
from batchfarm.actors.manager.telemetry import TelemetryProcessor
from batchfarm.actors.runtime import Actor
from batchfarm.actors.settings import Settings

log = logging.getLogger(__name__)

#: How often the loop reads the nodes' frames.
TELEMETRY_POLL_S = 0.05
#: How often buffered heartbeats and samples are written, and lost nodes looked for.
TELEMETRY_FLUSH_S = 1.0
#: Heartbeats a node may miss before it counts as lost.
MISSED_HEARTBEATS = 3
#: Long-poll seconds for completion events; also how soon the results thread notices a stop.
RESULTS_WAIT_S = 1.0
#: How often scheduled jobs are checked for their start time.
SCHEDULE_S = 1.0
#: Pause after a backend error in the results thread, doubling up to the maximum.
RESULTS_RETRY_S = (0.5, 10.0)


class ManagerActor(Actor):
    """The grid's manager: results and telemetry into the store (jobs' API comes next)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def on_start(self) -> None:
        """Open the store and queues, bind the telemetry ROUTER, start the results thread."""
        settings = self.settings
        self.store = open_store(settings.store)
        self.telemetry = TelemetryProcessor(
            self.store,
            self.context,
            settings.node.manager,
            flush_interval=TELEMETRY_FLUSH_S,
            lost_after=MISSED_HEARTBEATS * settings.node.heartbeat_interval,
        )
        self._tasks = open_queue(settings.queue, TASKS)
        self._completions = open_queue(settings.queue, COMPLETIONS)
        self.results = ResultsProcessor(
            self.store,
            self._tasks,
            self._completions,
            SpecPlanner(self._stored_spec, settings.tasks),
            visibility_s=settings.queue.visibility_timeout,
        )
        # The loop's own queue object: the results thread's may sit in a long poll.
        self._loop_tasks = open_queue(settings.queue, TASKS)
        self._thread = threading.Thread(target=self._results_loop, name="results", daemon=True)
        self._thread.start()
        self.every(TELEMETRY_POLL_S, self._telemetry)
        self.every(SCHEDULE_S, self._start_due_jobs)
        log.info("manager: store %s, telemetry at %s", self.store.url, self.telemetry.endpoint)

    def on_signal(self, signum: int) -> None:
        """SIGTERM and SIGINT stop the manager; nothing it holds is lost (see the module)."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop()

    def on_stop(self) -> None:
        """Stop the results thread, write what telemetry buffered, close everything."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(RESULTS_WAIT_S + 5.0)
        try:
            self.telemetry.flush()
        except BackendError as error:
            log.warning("manager: last telemetry flush failed: %s", error)
        self.telemetry.close()
        self._tasks.close()
        self._loop_tasks.close()
        self._completions.close()
        self.store.close()

    def _stored_spec(self, job_id: str) -> dict[str, Any]:
        job = self.store.job(job_id)
        if job is None:
            raise BackendError(f"job {job_id!r} is not in the store")
        return dict(job.spec)

    def _start_due_jobs(self) -> None:
        """Enqueue the first tasks of scheduled jobs whose start time has come.

        A job waits in the store, not in the queue, until it is due: it holds no queue space,
        and its start time survives manager restarts.
        """
        now = time.time()
        try:
            due = [
                job.id
                for job in self.store.jobs(states=[JobState.SCHEDULED], limit=1000)
                if job.start_at is None or job.start_at <= now
            ]
            for job_id in due:
                start_job(self.store, self._loop_tasks, job_id, self.settings.tasks)
                log.info("manager: job %s started on schedule", job_id)
        except BackendError as error:
            log.warning("manager: scheduled jobs not started yet: %s", error)

    def _telemetry(self) -> None:
        self.telemetry.poll(0)
        try:
            lost = self.telemetry.tick()
        except BackendError as error:  # the store is down: buffers wait for the next tick
            log.warning("manager: telemetry not written: %s", error)
            return
        for node in lost:
            log.warning("manager: node %s is lost (no heartbeat)", node)

    def _results_loop(self) -> None:
        pause = RESULTS_RETRY_S[0]
        while not self._stopping.is_set():
            try:
                self.results.step(wait_s=RESULTS_WAIT_S)
                pause = RESULTS_RETRY_S[0]
            except BackendError as error:
                # Unrecorded events stay in the queue and come back: nothing is lost.
                log.warning("manager: results not recorded, retrying in %g s: %s", pause, error)
                self._stopping.wait(pause)
                pause = min(pause * 2, RESULTS_RETRY_S[1])
