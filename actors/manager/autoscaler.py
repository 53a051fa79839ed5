"""The manager's autoscaler: every ``[autoscale] interval`` it sizes the fleets to the backlog.

The policy is :func:`~batchfarm.actors.manager.autoscale.decide` (pure); this module
measures its inputs, carries its decisions out and records them. Each node class with a
provider has its own :class:`Autoscaler` (its fleet, limits, queues' depth, heartbeats and
scaling events), and :class:`Autoscalers` ticks them all. The ``default`` class's fleet is
``[autoscale]``'s, another class's its ``[classes.NAME]`` table's: ``local`` (``batchfarm
node`` processes on this machine, :class:`~batchfarm.actors.backends.fleet.local.LocalFleet`)
or ``aws`` (an Auto Scaling group).

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

import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from batchfarm.actors.backends.fleet import (
    Fleet,
    FleetError,
    FleetState,
    open_fleet,
    release_all,
)
from batchfarm.actors.backends.fleet.local import PREFIX as LOCAL_PREFIX
from batchfarm.actors.backends.fleet.local import LocalFleet, node_environment
from batchfarm.actors.backends.queue import QueueDepth
from batchfarm.actors.backends.store import Store
from batchfarm.actors.errors import BackendError, ConfigError
from batchfarm.actors.manager.autoscale import Decision, FleetView, ScalingLimits, decide
from batchfarm.actors.manager.autoscaler_events import Applied, EventLog
from batchfarm.actors.manager.autoscaler_inputs import (
    DURATION_WINDOW_S,
    IdleClock,
    deadline_work,
    node_is_busy,
    node_is_drained,
    open_jobs,
    recent_task_seconds,
    workers_per_node,
)
from batchfarm.actors.manager.cloudwatch import Backlog, BacklogPublisher
from batchfarm.actors.messages import Command, Heartbeat
from batchfarm.actors.settings import (
    DEFAULT_CLASS,
    ENV_PREFIX,
    Settings,
    node_class_names,
    node_class_settings,
)

log = logging.getLogger(__name__)

#: Sends a command to a node on the control plane; False if it is not connected.
SendCommand = Callable[[str, Command], bool]


def open_autoscaled_fleet(settings: Settings, node_class: str = DEFAULT_CLASS) -> Fleet | None:
    """The fleet of ``node_class``, or None when the class has no provider.

    The provider is ``[autoscale]``'s for the default class, ``[classes.NAME]``'s for another.
    Raises :class:`ConfigError` for limits the policy cannot meet or an ``aws`` provider
    without a group, naming the class's table.
    """
    fleet = node_class_settings(settings, node_class)
    table = "[autoscale]" if node_class == DEFAULT_CLASS else f"[classes.{node_class}]"
    if not fleet.provider:
        return None
    if fleet.min_nodes > fleet.max_nodes:
        raise ConfigError(
            "settings",
            f"{table} min_nodes",
            fleet.min_nodes,
            f"expected at most max_nodes ({fleet.max_nodes})",
        )
    if fleet.provider == "local":
        if settings.node.workers == "auto" and fleet.max_nodes > 1:
            # Every local node would run a worker on every core, pinned to the same cores.
            log.warning(
                'autoscaler: up to %d local nodes, each with [node] workers = "auto" (one'
                " worker per core): set [node] workers to the cores one node should use",
                fleet.max_nodes,
            )
        env = node_environment(settings)
        env[f"{ENV_PREFIX}NODE_NODE_CLASS"] = node_class  # its nodes serve the class
        # Instance ids are node names: local-1, ... for the default class, local-gpu-1, ...
        prefix = LOCAL_PREFIX if node_class == DEFAULT_CLASS else f"{LOCAL_PREFIX}-{node_class}"
        return LocalFleet(fleet.min_nodes, fleet.max_nodes, env, prefix=prefix)
    if not fleet.group:
        raise ConfigError(
            "settings",
            f"{table} group",
            fleet.group,
            'expected the Auto Scaling group of the worker nodes for provider = "aws"',
        )
    scale = settings.autoscale
    return open_fleet(f"asg://{fleet.group}", scale.region, scale.endpoint_url)


def open_autoscaled_fleets(settings: Settings) -> dict[str, Fleet]:
    """The fleet of every node class that has a provider, by class (empty: autoscaler off).

    Raises :class:`ConfigError` as :func:`open_autoscaled_fleet` does; fleets opened before
    the bad one are closed again.
    """
    fleets: dict[str, Fleet] = {}
    try:
        for node_class in node_class_names(settings):
            fleet = open_autoscaled_fleet(settings, node_class)
            if fleet is not None:
                fleets[node_class] = fleet
    except BaseException:
        for fleet in fleets.values():
            fleet.close()
        raise
    return fleets


def class_view(settings: Settings, node_class: str) -> Settings:
    """``settings`` with ``[autoscale]``'s fleet keys replaced by ``node_class``'s.

    What the autoscaler of one class reads, so the measuring helpers (workers per node, the
    node price) see the class's own fleet.
    """
    values = dataclasses.asdict(node_class_settings(settings, node_class))
    return dataclasses.replace(
        settings, autoscale=dataclasses.replace(settings.autoscale, **values)
    )


@dataclass
class _Draining:
    """A node told to drain before it is removed."""

    #: Whether the drain command went out (a node not connected gets it again next time).
    sent: bool = False


class Autoscaler:
    """Sizes one node class's fleet (see the module docstring); :meth:`tick` decides once.

    ``depth`` reads the depth of the class's task queues, ``beats`` the latest heartbeat of
    each node (of any class: the class's are picked here) and ``send`` sends a node a
    command: all three on the manager's loop. :attr:`settings` is the manager's with
    ``[autoscale]``'s fleet keys replaced by the class's (:func:`class_view`).
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
        node_class: str = DEFAULT_CLASS,
    ) -> None:
        self.node_class = node_class
        self.settings = settings = class_view(settings, node_class)
        self.store = store
        self.fleet = fleet
        self._depth = depth
        self._beats = beats
        self._send = send
        self._clock = clock
        self.events = EventLog(store, settings.autoscale.provider, node_class)
        self._idle = IdleClock()
        self._draining: dict[str, _Draining] = {}
        #: Terminated members whose node is gone: the autoscaler completes their termination
        #: hook itself (see :meth:`Fleet.release`).
        self._releasing: set[str] = set()
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
            if beat.node_class == self.node_class and node in members
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
        task_s = recent_task_seconds(self.store, self.node_class, now - DURATION_WINDOW_S)
        nodes = max(0, state.desired - len(self._draining))
        view = FleetView(
            now=now,
            waiting=depth.visible + depth.delayed,
            in_flight=depth.in_flight,
            task_s=task_s,
            nodes=nodes,
            idle_since=idle,
            deadlines=deadline_work(self.store, self.node_class),
            open_jobs=open_jobs(self.store, self.node_class),
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
                "open_jobs": view.open_jobs,
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
            backlog = Backlog(self.settings.grid.name, self.node_class, view.waiting, in_service)
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
        release_all(self.fleet, self._releasing)
        terminated = False
        for node in list(self._draining):
            if state.instance(node) is None:
                del self._draining[node]  # gone already (the local node exited)
                log.info("autoscaler: node %s left the fleet", node)
            elif node_is_drained(beats.get(node)):
                del self._draining[node]
                try:
                    self.fleet.terminate(node)
                    self._releasing.add(node)
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


class Autoscalers:
    """One :class:`Autoscaler` per node class that has a fleet: one manager scales them all.

    Each class has its own fleet, limits, scaling events and queue depth (``depth(class)``
    reads the depth of that class's queues); :meth:`tick` decides for every class in turn.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        fleets: Mapping[str, Fleet],
        *,
        depth: Callable[[str], QueueDepth],
        beats: Callable[[], Mapping[str, Heartbeat]],
        send: SendCommand,
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: Node class -> its autoscaler, in the order :func:`node_class_names` gives.
        self.by_class = {
            node_class: Autoscaler(
                settings,
                store,
                fleet,
                depth=functools.partial(depth, node_class),
                beats=beats,
                send=send,
                clock=clock,
                node_class=node_class,
            )
            for node_class, fleet in fleets.items()
        }

    def tick(self) -> None:
        """Decide once for every class (a class's backend error is logged, the rest go on)."""
        for autoscaler in self.by_class.values():
            autoscaler.tick()

    def close(self) -> None:
        """Release every class's fleet (local fleets drain their nodes)."""
        for autoscaler in self.by_class.values():
            try:
                autoscaler.close()
            except BackendError as error:
                log.warning("autoscaler %s: fleet not released: %s", autoscaler.node_class, error)

    def last(self) -> dict[str, Applied]:
        """Each class's latest decision applied, for the classes that have decided."""
        return {c: a.last for c, a in self.by_class.items() if a.last is not None}
