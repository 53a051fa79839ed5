"""The manager's autoscaler: every ``[autoscale] interval`` it sizes the fleet to the backlog.

The policy is :func:`~batchfarm.actors.manager.autoscale.decide` (pure); this module
measures its inputs, carries its decisions out and records them. One node class for now,
``default``; its fleet is ``[autoscale] provider``'s: ``local`` (``batchfarm node``
processes on this machine, :class:`~batchfarm.actors.backends.fleet.local.LocalFleet`) or
``aws`` (an Auto Scaling group).

- **Out**: the fleet's desired capacity goes up at once (the group launches, the local fleet
  starts nodes).
- **In, never a busy node**: only nodes the policy found idle for ``[autoscale] idle`` are
  removed. Each is sent ``drain`` (a task it took meanwhile finishes), and only once its
  heartbeat says it is drained, or it went silent, is it terminated with the desired
  capacity lowered by one (on AWS: TerminateInstanceInAutoScalingGroup with decrement; the
  local fleet's node has exited by then). Busy instances are protected from scale-in, so
  the group itself never picks one either.
- **Recorded**: decisions go to the store as scaling events
  (:mod:`~batchfarm.actors.manager.autoscaler_events`); the desired and running node counts
  feed ``/metrics`` (from :attr:`Autoscaler.last`).

It runs on the manager's loop, which owns the telemetry socket that drain commands go out
on and the latest heartbeats it reads.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from batchfarm.actors.backends.fleet import Fleet, FleetError, FleetState, open_fleet
from batchfarm.actors.backends.fleet.local import LocalFleet, node_environment
from batchfarm.actors.backends.queue import QueueDepth
from batchfarm.actors.backends.store import Store
from batchfarm.actors.errors import BackendError, ConfigError
from batchfarm.actors.manager.autoscale import Decision, FleetView, ScalingLimits, decide
from batchfarm.actors.manager.autoscaler_events import Applied, EventLog
from batchfarm.actors.manager.autoscaler_inputs import (
    DURATION_WINDOW_S,
    IdleClock,
    node_is_busy,
    node_is_drained,
    recent_task_seconds,
    workers_per_node,
)
from batchfarm.actors.manager.cloudwatch import Backlog, BacklogPublisher
from batchfarm.actors.messages import Command, Heartbeat
from batchfarm.actors.settings.model import Settings

log = logging.getLogger(__name__)

#: The node class the autoscaler sizes (node classes come later).
NODE_CLASS = "default"

#: Sends a command to a node on the control plane; False if it is not connected.
SendCommand = Callable[[str, Command], bool]


def open_autoscaled_fleet(settings: Settings) -> Fleet | None:
    """The fleet ``[autoscale]`` names, or None when the autoscaler is off.

    Raises :class:`ConfigError` for limits the policy cannot meet or an ``aws`` provider
    without a group.
    """
    scale = settings.autoscale
    if not scale.provider:
        return None
    if scale.min_nodes > scale.max_nodes:
        raise ConfigError(
            "settings",
            "[autoscale] min_nodes",
            scale.min_nodes,
            f"expected at most max_nodes ({scale.max_nodes})",
        )
    if scale.provider == "local":
        if settings.node.workers == "auto" and scale.max_nodes > 1:
            # Every local node would run a worker on every core, pinned to the same cores.
            log.warning(
                'autoscaler: up to %d local nodes, each with [node] workers = "auto" (one'
                " worker per core): set [node] workers to the cores one node should use",
                scale.max_nodes,
            )
        return LocalFleet(scale.min_nodes, scale.max_nodes, node_environment(settings))
    if not scale.group:
        raise ConfigError(
            "settings",
            "[autoscale] group",
            scale.group,
            'expected the Auto Scaling group of the worker nodes for provider = "aws"',
        )
    return open_fleet(f"asg://{scale.group}", scale.region, scale.endpoint_url)


@dataclass
class _Draining:
    """A node told to drain before it is removed."""

    #: Whether the drain command went out (a node not connected gets it again next time).
    sent: bool = False


class Autoscaler:
    """Sizes one node class's fleet (see the module docstring); :meth:`tick` decides once.

    ``depth`` reads the task queues' depth, ``beats`` the latest heartbeat of each node and
    ``send`` sends a node a command: all three on the manager's loop.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        fleet: Fleet,
        *,
        depth: Callable[[], QueueDepth],
        beats: Callable[[], Mapping[str, Heartbeat]],
        send: SendCommand,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.fleet = fleet
        self._depth = depth
        self._beats = beats
        self._send = send
        self._clock = clock
        self.events = EventLog(store, settings.autoscale.provider, NODE_CLASS)
        self._idle = IdleClock()
        self._draining: dict[str, _Draining] = {}
        self._workers = 0
        #: The latest decision applied (None before the first); read by the API's threads,
        #: so it is replaced whole, never changed.
        self.last: Applied | None = None
        self._publisher: BacklogPublisher | None = None
        if settings.autoscale.publish_backlog:
            auto = settings.autoscale
            self._publisher = BacklogPublisher(region=auto.region, endpoint_url=auto.endpoint_url)

    # -- the loop's timer ---------------------------------------------------------------------

    def tick(self) -> None:
        """Measure, decide, act and record once (:attr:`last`); a backend error is logged."""
        try:
            self._tick()
        except BackendError as error:
            log.warning("autoscaler: no decision this time: %s", error)

    def close(self) -> None:
        """Release the fleet (the local fleet drains its nodes)."""
        self.fleet.close()
        if self._publisher is not None:
            self._publisher.close()

    def _tick(self) -> Applied:
        now = self._clock()
        state = self.fleet.state()
        members = {i.id for i in state.instances}
        beats = {
            node: beat
            for node, beat in self._beats().items()
            if beat.node_class == NODE_CLASS and node in members
        }
        if self._finish_drains(state, beats):
            state = self.fleet.state()  # what the terminations left
        idle = {
            node: since
            for node, since in self._idle.observe(beats, now).items()
            if node not in self._draining and (i := state.instance(node)) and i.in_service
        }
        self._protect_busy(state, beats, idle)
        self._workers = workers_per_node(self.settings, beats, self._workers)
        depth = self._depth()
        task_s = recent_task_seconds(self.store, NODE_CLASS, now - DURATION_WINDOW_S)
        nodes = max(0, state.desired - len(self._draining))
        view = FleetView(
            now=now,
            waiting=depth.visible + depth.delayed,
            in_flight=depth.in_flight,
            task_s=task_s,
            nodes=nodes,
            idle_since=idle,
        )
        up = sum(1 for node in beats if node not in self._draining)  # when deciding
        decision = decide(view, self._limits())
        after = self._apply(decision, nodes)
        applied = Applied(
            decision=decision,
            view=view,
            desired_before=nodes,
            desired_after=after,
            nodes_up=up,
            workers_per_node=self._workers,
            details={
                "task_s": task_s,
                "default_task_s": self.settings.autoscale.default_task,
                "target_drain_s": self.settings.autoscale.target_drain,
                "fleet": {
                    "desired": state.desired,
                    "min": state.min,
                    "max": state.max,
                    "members": sorted(members),
                },
                "draining": sorted(self._draining),
            },
        )
        self.events.record(applied)
        self.last = applied
        if self._publisher is not None:
            in_service = sum(1 for i in state.instances if i.in_service)
            backlog = Backlog(self.settings.grid.name, NODE_CLASS, view.waiting, in_service)
            try:
                self._publisher.publish([backlog])
            except BackendError as error:
                log.warning("autoscaler: backlog not published to CloudWatch: %s", error)
        return applied

    def _limits(self) -> ScalingLimits:
        scale = self.settings.autoscale
        return ScalingLimits(
            min_nodes=scale.min_nodes,
            max_nodes=scale.max_nodes,
            workers_per_node=max(1, self._workers),
            target_drain_s=scale.target_drain,
            idle_s=scale.idle,
            default_task_s=scale.default_task,
        )

    def _apply(self, decision: Decision, nodes: int) -> int:
        """Carry ``decision`` out; the desired size of the fleet now (draining nodes apart)."""
        if decision.desired > nodes:
            # Nodes still draining hold their places until they are terminated (with decrement).
            applied = self.fleet.set_desired(decision.desired + len(self._draining))
            log.info("autoscaler: %s -> %d node(s)", decision.reason, applied)
            return applied - len(self._draining)
        for node in decision.remove:
            self._draining[node] = _Draining()
            log.info("autoscaler: %s: draining %s", decision.reason, node)
            self._send_drain(node)
        return nodes - len(decision.remove)

    def _send_drain(self, node: str) -> None:
        draining = self._draining[node]
        draining.sent = self._send(node, Command("drain", id=secrets.token_hex(8)))
        if not draining.sent:
            log.warning("autoscaler: node %s did not get the drain; sending it again", node)

    def _finish_drains(self, state: FleetState, beats: Mapping[str, Heartbeat]) -> bool:
        """Terminate the nodes that drained, resend the drain to those that never got it.

        True when a node was terminated (the fleet's state changed).
        """
        terminated = False
        for node in list(self._draining):
            if state.instance(node) is None:
                del self._draining[node]  # gone already (the local node exited)
                log.info("autoscaler: node %s left the fleet", node)
            elif node_is_drained(beats.get(node)):
                del self._draining[node]
                try:
                    self.fleet.terminate(node)
                    terminated = True
                    log.info("autoscaler: node %s drained; terminated", node)
                except FleetError as error:
                    log.warning("autoscaler: drained node %s not terminated: %s", node, error)
            elif not self._draining[node].sent:
                self._send_drain(node)
        return terminated

    def _protect_busy(
        self, state: FleetState, beats: Mapping[str, Heartbeat], idle: Mapping[str, float]
    ) -> None:
        """Protect busy members from scale-in, and release idle ones, where that changed."""
        protect = [
            i.id
            for i in state.instances
            if not i.protected_from_scale_in and (b := beats.get(i.id)) and node_is_busy(b)
        ]
        release = [i.id for i in state.instances if i.protected_from_scale_in and i.id in idle]
        try:
            if protect:
                self.fleet.protect(protect, True)
            if release:
                self.fleet.protect(release, False)
        except FleetError as error:
            log.warning("autoscaler: scale-in protection not set: %s", error)
