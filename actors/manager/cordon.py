"""Keeping cordoned nodes paused: a cordoned node takes no new work.

A cordon is a mark in the store (``nodes.cordoned``), put there by
:class:`~batchfarm.actors.manager.health.NodeHealth` or an operator. What makes it bite is
a soft ``pause`` command (running tasks finish, no new task is taken), sent through the
telemetry ROUTER, which only the manager's loop may use: :meth:`CordonKeeper.tick` runs
there. It pauses newly cordoned nodes at once, and re-sends the pause while a cordoned
node's heartbeats say it is ``up``: a node that missed the command, or restarted, is paused
again within a few heartbeats. A node uncordoned in the store is left alone from then on
(whoever uncordons it resumes it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from batchfarm.actors.backends.store import Store
from batchfarm.actors.manager.health import Cordon
from batchfarm.actors.manager.telemetry import TelemetryProcessor
from batchfarm.actors.messages import Command

log = logging.getLogger(__name__)

#: How often the store's cordoned nodes are read.
CHECK_S = 1.0


class CordonKeeper:
    """Pauses cordoned nodes from the manager's loop (see the module doc).

    ``resend_s`` is how long a pause is given to show in a node's heartbeats before it is
    sent again (two heartbeat intervals, say).
    """

    def __init__(
        self,
        store: Store,
        telemetry: TelemetryProcessor,
        *,
        resend_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._telemetry = telemetry
        self.resend_s = resend_s
        self._clock = clock
        self._checked = float("-inf")
        self._sent: dict[str, float] = {}  # node -> when a pause last went to it
        # Cordons decided before the node's first heartbeat was written: recorded later.
        self._unrecorded: dict[str, str] = {}
        #: Pause commands sent (for tests and logs).
        self.pauses_sent = 0

    def tick(self, cordoned_now: Iterable[Cordon] = ()) -> None:
        """Pause ``cordoned_now`` at once; every :data:`CHECK_S`, the store's cordoned nodes.

        Raises what the store raises (the loop logs it and tries at its next tick).
        """
        now = self._clock()
        for cordon in cordoned_now:
            if not cordon.recorded:
                self._unrecorded[cordon.node] = cordon.reason
            self._pause(cordon.node, now)
        if now - self._checked < CHECK_S:
            return
        self._checked = now
        for node, reason in list(self._unrecorded.items()):
            if self._store.set_cordoned(node, True, reason):
                del self._unrecorded[node]
        cordoned = {node.id for node in self._store.nodes() if node.cordoned}
        for node in list(self._sent):
            if node not in cordoned:
                del self._sent[node]  # uncordoned: no more pauses
        for node in sorted(cordoned):
            beat = self._telemetry.latest.get(node)
            if beat is None or beat.state != "up":
                continue  # paused already, draining, or not heard from (lost)
            if now - self._sent.get(node, float("-inf")) >= self.resend_s:
                self._pause(node, now)

    def _pause(self, node: str, now: float) -> None:
        self._sent[node] = now
        if self._telemetry.send(node, Command("pause", args={"force": False})):
            self.pauses_sent += 1
            log.info("manager: paused cordoned node %s", node)
        else:
            log.warning("manager: cordoned node %s not reachable; pausing it when it reports", node)
