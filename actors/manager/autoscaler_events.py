"""The autoscaler's decisions as scaling events in the store, without flooding it.

Every decision that changes the fleet (out or in) is recorded with the inputs it was made
from. A decision to hold is recorded when its reason differs from the last one recorded, and
otherwise once every :data:`HOLD_EVERY_S`: the table then shows the autoscaler is alive and
what it saw, at a few rows an hour rather than one per interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from batchfarm.actors.backends.store import NewScalingEvent, Store
from batchfarm.actors.manager.autoscale import Decision, FleetView

#: Seconds between two recorded holds with the same reason.
HOLD_EVERY_S = 300.0

Direction = Literal["out", "in", "hold"]


def direction(desired_before: int, desired_after: int) -> Direction:
    """``out`` when the fleet grows, ``in`` when it shrinks, ``hold`` when it stays."""
    if desired_after > desired_before:
        return "out"
    if desired_after < desired_before:
        return "in"
    return "hold"


@dataclass(frozen=True)
class Applied:
    """A decision as carried out: the fleet size before and after, and what else was seen."""

    decision: Decision
    view: FleetView
    desired_before: int
    desired_after: int
    #: Nodes up when deciding (in service and reporting).
    nodes_up: int
    workers_per_node: int
    details: dict[str, Any]

    @property
    def direction(self) -> Direction:
        """Which way the fleet went."""
        return direction(self.desired_before, self.desired_after)

    @property
    def rate(self) -> float:
        """Tasks per second one node finishes, at the task duration decided with."""
        task_s = self.details.get("task_s") or self.details.get("default_task_s") or 0.0
        return self.workers_per_node / task_s if task_s else 0.0


class EventLog:
    """Records applied decisions of one node class as scaling events (see the module)."""

    def __init__(
        self, store: Store, provider: str, node_class: str, hold_every_s: float = HOLD_EVERY_S
    ) -> None:
        self.store = store
        self.provider = provider
        self.node_class = node_class
        self.hold_every_s = hold_every_s
        self._last_time: float | None = None
        self._last_reason: str | None = None
        self._last_met: bool | None = None

    def record(self, applied: Applied) -> int | None:
        """Store ``applied`` if it changes the fleet or is a hold worth telling; its id."""
        view = applied.view
        reason = applied.decision.reason
        if applied.direction == "hold" and not applied.decision.remove:
            recent = self._last_time is not None and view.now - self._last_time < self.hold_every_s
            # A change in whether deadlines can be met is news: status reads it from here.
            met = applied.decision.deadlines_met
            if recent and reason == self._last_reason and met == self._last_met:
                return None
        event = NewScalingEvent(
            time=view.now,
            node_class=self.node_class,
            provider=self.provider,
            desired_before=applied.desired_before,
            desired_after=applied.desired_after,
            backlog=view.waiting + view.in_flight,
            rate=applied.rate,
            nodes=applied.nodes_up,
            reason=reason,
            details={
                "direction": applied.direction,
                "waiting": view.waiting,
                "in_flight": view.in_flight,
                "needed": applied.decision.needed,
                "deadlines_met": applied.decision.deadlines_met,
                "remove": list(applied.decision.remove),
                "idle_nodes": sorted(view.idle_since),
                "workers_per_node": applied.workers_per_node,
                **applied.details,
            },
        )
        event_id = self.store.record_scaling_event(event)
        self._last_time = view.now
        self._last_reason = reason
        self._last_met = applied.decision.deadlines_met
        return event_id
