"""The worker actor: one process per core, running tasks through a :class:`WorkerCore`.

Its supervisor spawns it, pins it, and steers it through its mailbox with
:class:`~batchfarm.actors.messages.Command` frames (``drain``, ``pause``, ``resume``,
``stop``); it reports a :class:`~batchfarm.actors.messages.WorkerStatus` to the supervisor's
mailbox every second and whenever its state changes.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from batchfarm.actors.messages import Command, Record
from batchfarm.actors.runtime import Actor, ExitCode
from batchfarm.actors.settings import Settings
from batchfarm.actors.worker.core import WorkerCore

log = logging.getLogger(__name__)

#: Seconds between status frames when nothing changes.
STATUS_INTERVAL_S = 1.0
#: How often time limits are checked.
LIMITS_INTERVAL_S = 0.25
#: How often the running task's job is checked for cancellation.
CANCEL_INTERVAL_S = 2.0


@dataclass(frozen=True)
class WorkerSpec:
    """Who a worker is: its place on its node and what it may use (picklable, for spawn)."""

    index: int
    node: str
    #: The supervisor's mailbox, where status frames go.
    supervisor: str
    #: Folder for the worker's tasks' files (inputs, outputs, temp files).
    scratch: str
    #: Threads a task's tool may use.
    threads: int = 1
    #: The core the worker is pinned to, if one.
    core: int | None = None


class WorkerActor(Actor):
    """Pulls tasks from the queue and runs them, one at a time, on its own core."""

    def __init__(self, settings: Settings, spec: WorkerSpec) -> None:
        self.settings = settings
        self.spec = spec
        self.index = spec.index
        # A status report is queued on the loop and not yet sent: changes meanwhile ride on it.
        self._report_queued = False

    def on_start(self) -> None:
        """Open the backends, start the task threads and the timers."""
        self.core = WorkerCore(
            self.settings,
            self.index,
            self.spec.node,
            threads=self.spec.threads,
            scratch_root=Path(self.spec.scratch),
            on_drained=lambda: self.call_soon_threadsafe(self.stop),
            on_change=self._report_soon,
        )
        self.core.start()
        self.every(self.core.leases.interval_s, self.core.renew_leases)
        self.every(LIMITS_INTERVAL_S, self._enforce_limits)
        self.every(CANCEL_INTERVAL_S, self.core.check_cancelled)
        self.every(STATUS_INTERVAL_S, self._report)
        self._report()

    def receive(self, message: Record) -> None:
        """Act on a command from the supervisor."""
        if not isinstance(message, Command):
            log.warning("worker %d ignored a %s frame", self.index, type(message).__name__)
            return
        if message.name == "drain":
            self.core.drain()
        elif message.name == "stop":
            self.core.stop_now()
        elif message.name == "pause":
            self.core.pause(force=bool(message.args.get("force", False)))
        elif message.name == "resume":
            self.core.resume()
        else:
            log.warning("worker %d ignored the command %r", self.index, message.name)
        self._report()

    def on_signal(self, signum: int) -> None:
        """SIGTERM drains, as the supervisor's ``drain`` does: the loop does the work."""
        if signum == signal.SIGTERM:
            self.core.drain()

    def on_stop(self) -> None:
        """Hand back what is still held and release the backends."""
        core = getattr(self, "core", None)
        if core is not None:
            self._report()
            core.close()

    def _report_soon(self) -> None:
        """Queue a status report; safe from any thread.

        A burst of changes (a flood of short tasks finishing) makes one report: each report
        tells the whole state, not a change.
        """
        if not self._report_queued:
            self._report_queued = True
            self.call_soon_threadsafe(self._report)

    def _report(self) -> None:
        # Cleared before the state is read: a change after this queues a report of its own.
        self._report_queued = False
        self.send(self.spec.supervisor, self.core.status(os.getpid(), self.spec.core))

    def _enforce_limits(self) -> None:
        hung = self.core.enforce_limits()
        if hung is None:
            return
        log.error(
            "worker %d: %s did not stop when told; restarting the worker", self.index, hung.label
        )
        self.core.abandon(hung)
        self._report()
        # The handler's thread cannot be stopped from outside: end the process, and the
        # supervisor starts a fresh worker in its place.
        os._exit(ExitCode.HUNG)
