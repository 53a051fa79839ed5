"""``batchfarm manager``: the actor that records the grid and moves its jobs along.

It runs in the main process with three parts so far:

- results: a thread that takes completion events from the completions queue (the data
  plane: events wait there while the manager is down, so a restart loses none), records them
  in the store and enqueues the next stages' tasks;
- telemetry: the ROUTER the nodes report to (``[node] manager``), polled on the loop, whose
  heartbeats and metrics go to the store in batches, and which marks silent nodes lost;
- the schedule: jobs waiting for their start time are enqueued once it comes;
- the HTTP API (``[api] listen``): uvicorn in a thread of its own, serving the store's views,
  accepting jobs and steering nodes (its node commands are sent from the loop);
- the autoscalers (``[autoscale]`` and ``[classes.NAME]`` providers, off by default): on
  the loop's timer, size each node class's fleet to its backlog
  (:mod:`~batchfarm.actors.manager.autoscaler`).

Only the manager writes the store.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from batchfarm.actors.api.app import package_version
from batchfarm.actors.api.auth import check_exposure
from batchfarm.actors.api.metrics import ApiMetrics
from batchfarm.actors.api.scaling import AutoscalerCapacity, ScalingCollector
from batchfarm.actors.api.server import ApiServer, api_server
from batchfarm.actors.api.web import ApiContext
from batchfarm.actors.backends import (
    COMPLETIONS,
    open_blobs,
    open_queue,
    open_store,
    open_task_queues,
)
from batchfarm.actors.backends.queue import TaskQueue
from batchfarm.actors.backends.store.models import JobState
from batchfarm.actors.errors import BackendError, ConfigError
from batchfarm.actors.manager.autoscaler import Autoscalers, open_autoscaled_fleets
from batchfarm.actors.manager.cordon import CordonKeeper
from batchfarm.actors.manager.cost import NodePricer
from batchfarm.actors.manager.health import NodeHealth
from batchfarm.actors.manager.plan import SpecPlanner
from batchfarm.actors.manager.results import ResultsProcessor
from batchfarm.actors.manager.submit import start_job
from batchfarm.actors.manager.telemetry import TelemetryProcessor
from batchfarm.actors.messages import Command
from batchfarm.actors.runtime import Actor, ExitCode
from batchfarm.actors.settings import Settings, node_class_names

log = logging.getLogger(__name__)

#: How often the loop reads the nodes' frames.
TELEMETRY_POLL_S = 0.05
#: How often buffered heartbeats and samples are written, and lost nodes looked for.
TELEMETRY_FLUSH_S = 1.0
#: Heartbeats a node may miss before it counts as lost.
MISSED_HEARTBEATS = 3
#: Allocations between two collections of the garbage collector's young generation.
GC_YOUNG = 10_000
#: Long-poll seconds for completion events; also how soon the results thread notices a stop.
RESULTS_WAIT_S = 1.0
#: How often scheduled jobs are checked for their start time.
SCHEDULE_S = 1.0
#: Pause after a backend error in the results thread, doubling up to the maximum.
RESULTS_RETRY_S = (0.5, 10.0)
#: Seconds an API request waits for the loop to send a node command.
COMMAND_WAIT_S = 5.0


class ManagerActor(Actor):
    """The grid's manager: results and telemetry into the store, and the HTTP API.

    Refuses (:class:`ConfigError` naming ``[api] token``) settings whose API would listen
    beyond this machine without a token.
    """

    def __init__(self, settings: Settings) -> None:
        check_exposure(settings.api)
        # A bad [autoscale] or [classes.NAME] stops the start here; fleets start no node
        # until asked.
        self._fleets = open_autoscaled_fleets(settings)
        self.autoscaler: Autoscalers | None = None
        self.settings = settings
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._api: ApiServer | None = None

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
            price=NodePricer(settings),
        )
        # Every class's queues; a stored job's class the config dropped is opened on demand.
        classes = node_class_names(settings)
        self._tasks = open_task_queues(settings.queue, classes, open_others=True)
        self._completions = open_queue(settings.queue, COMPLETIONS)
        # The API's own objects: its threads must not wait on the results thread's polls.
        self._blobs = open_blobs(settings.storage)
        self._api_tasks = open_task_queues(settings.queue, classes, open_others=True)
        self._api_completions = open_queue(settings.queue, COMPLETIONS)
        depths = {queue.name: queue for queue in self._api_tasks}
        depths[COMPLETIONS] = self._api_completions
        if self._fleets:
            self.autoscaler = Autoscalers(
                settings,
                self.store,
                self._fleets,
                # A lambda: the loop's queues are opened below.
                depth=lambda node_class: self._loop_tasks.depth(node_class),  # noqa: PLW0108
                beats=lambda: self.telemetry.latest,
                send=self.telemetry.send,
            )
        self.api_metrics = ApiMetrics(
            self.store,
            depths,
            telemetry=self.telemetry,
            capacity=None if self.autoscaler is None else AutoscalerCapacity(self.autoscaler),
            version=package_version(),
        )
        self.api_metrics.registry.register(ScalingCollector(self.store))
        # Poison tasks and bad nodes, judged in the results thread; the loop pauses the
        # nodes it cordons (only the loop may use the telemetry socket).
        self.health = NodeHealth(self.store, self._blobs)
        self.cordons = CordonKeeper(
            self.store, self.telemetry, resend_s=max(2 * settings.node.heartbeat_interval, 1.0)
        )
        self.results = ResultsProcessor(
            self.store,
            self._tasks,
            self._completions,
            SpecPlanner(self._stored_spec, settings.tasks),
            visibility_s=settings.queue.visibility_timeout,
            observer=self.api_metrics.runs,
            health=self.health,
        )
        # The loop's own queue object: the results thread's may sit in a long poll.
        self._loop_tasks = open_task_queues(settings.queue, classes, open_others=True)
        if not self._start_api(depths):
            return
        self._thread = threading.Thread(target=self._results_loop, name="results", daemon=True)
        self._thread.start()
        self.every(TELEMETRY_POLL_S, self._telemetry)
        self.every(SCHEDULE_S, self._start_due_jobs)
        if self.autoscaler is not None:
            self.every(settings.autoscale.interval, self.autoscaler.tick)
        self.api_metrics.loop_lag.start(self.after)
        # What start-up made (modules, the ORM, the API) lives as long as the process: out of
        # the collector's full passes. Telemetry allocates a heartbeat's columns per frame:
        # the young generation is collected every GC_YOUNG allocations rather than 700.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
        log.info("manager: store %s, telemetry at %s", self.store.url, self.telemetry.endpoint)

    def on_signal(self, signum: int) -> None:
        """SIGTERM and SIGINT stop the manager; nothing it holds is lost (see the module)."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop()

    def on_stop(self) -> None:
        """Stop the API and the results thread, write what telemetry buffered, close all."""
        if self._api is not None:
            self._api.stop()
        if self.autoscaler is not None:
            self.autoscaler.close()  # the local fleet drains its nodes
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
        self._close_api_backends()
        self.store.close()

    def _start_api(self, depths: Mapping[str, TaskQueue]) -> bool:
        """Start the HTTP API; on a bad ``[api] listen`` release everything and stop (78)."""
        api = ApiContext(
            settings=self.settings,
            store=self.store,
            blobs=self._blobs,
            tasks=self._api_tasks,
            queues=depths,
            send_command=self._send_command,
        )
        server = api_server(api, self.api_metrics)
        try:
            server.start()
        except ConfigError as error:
            log.error("%s", error)
            # on_stop does not run after a failed start: release what on_start opened.
            self.telemetry.close()
            for queues in (self._tasks, self._loop_tasks, self._completions):
                queues.close()
            self._close_api_backends()
            self.store.close()
            self.stop(ExitCode.CONFIG)
            return False
        self._api = server
        log.info("manager: API at %s", server.url)
        return True

    def _close_api_backends(self) -> None:
        self._api_tasks.close()
        self._api_completions.close()
        self._blobs.close()

    def _send_command(self, node: str, command: Command) -> bool:
        """Send ``command`` to ``node`` from the loop (it owns the ROUTER); for API threads.

        Waits up to :data:`COMMAND_WAIT_S` for the loop; raises TimeoutError after that.
        """
        done: Future[bool] = Future()

        def send() -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(self.telemetry.send(node, command))
                except Exception as error:  # noqa: BLE001 - handed to the waiting request
                    done.set_exception(error)

        self.call_soon_threadsafe(send)
        try:
            return done.result(COMMAND_WAIT_S)
        finally:
            done.cancel()  # a loop that never got to it must not send it later

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
        try:
            self.cordons.tick(self.health.take_cordoned())
        except BackendError as error:
            log.warning("manager: cordoned nodes not checked: %s", error)

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
