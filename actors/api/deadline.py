"""Whether a job will meet its deadline: its ETA against the deadline, and the autoscaler's word.

Pure functions of what the store returned and of ``now``. The autoscaler records with each
decision whether the deadlines of its node class can be met at the fleet it can have
(``deadlines_met`` in a scaling event's details, with the nodes it ``needed`` and the fleet's
``max``); a job is at risk when that says no for a class the job still has work in, or when
its ETA falls after its deadline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from batchfarm.actors.backends.store import JobState, JobView, ScalingEventView

#: A decision older than this no longer speaks for the autoscaler: it records one at least
#: every five minutes while it runs (``autoscaler_events.HOLD_EVERY_S``), so an older one
#: means it stopped.
FRESH_S = 660.0
#: Job states that are over.
_OVER = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

DeadlineState = Literal["met", "missed", "on_track", "at_risk", "unknown"]


@dataclass(frozen=True)
class ClassOutlook:
    """The autoscaler's latest word on one node class's deadlines."""

    node_class: str
    #: Whether every deadline of the class can be met; None when it saw none.
    met: bool | None
    #: Nodes the backlog and deadlines need, before limits.
    needed: int
    #: The most nodes the class may have, when the decision says.
    max_nodes: int | None


def outlooks(events: Iterable[ScalingEventView], now: float) -> dict[str, ClassOutlook]:
    """Node class -> its latest fresh decision's outlook, from scaling events (any order)."""
    newest: dict[str, ScalingEventView] = {}
    for event in events:
        seen = newest.get(event.node_class)
        if now - event.time <= FRESH_S and (seen is None or event.time > seen.time):
            newest[event.node_class] = event
    out = {}
    for node_class, event in newest.items():
        details = event.details or {}
        fleet = details.get("fleet")
        top = fleet.get("max") if isinstance(fleet, Mapping) else None
        out[node_class] = ClassOutlook(
            node_class=node_class,
            met=_bool_or_none(details.get("deadlines_met")),
            needed=int(details.get("needed") or 0),
            max_nodes=int(top) if isinstance(top, int | float) else None,
        )
    return out


def _bool_or_none(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def deadline_status(
    job: JobView,
    eta_s: float | None,
    classes: Sequence[str],
    by_class: Mapping[str, ClassOutlook],
    now: float,
) -> dict[str, Any] | None:
    """``{"state", "text"}`` for a job with a deadline (None without one).

    ``classes`` are the node classes of the job's stages not yet over; ``eta_s`` the job's
    ETA from now, when known. The text reads as ``status`` shows it: "deadline
    2026-12-31T18:00:00Z: on track (ETA 2026-12-31T12:00:00Z)".
    """
    if job.deadline is None:
        return None
    state, why = _judge(job, job.deadline, eta_s, classes=classes, by_class=by_class, now=now)
    text = f"deadline {_iso(job.deadline)}: {state.replace('_', ' ')}" + (
        f" ({why})" if why else ""
    )
    return {"state": state, "text": text}


def _judge(
    job: JobView,
    deadline: float,
    eta_s: float | None,
    *,
    classes: Sequence[str],
    by_class: Mapping[str, ClassOutlook],
    now: float,
) -> tuple[DeadlineState, str]:
    if job.state in _OVER:
        end = job.finished_at if job.finished_at is not None else now
        late = end - deadline
        if job.state == JobState.SUCCEEDED and late <= 0:
            return "met", f"finished {_iso(end)}"
        if late > 0:
            return "missed", f"finished {_iso(end)}, {late / 60:.0f} min late"
        return "missed", f"the job {job.state}"
    if now > deadline:
        return "missed", "not finished"
    for node_class in classes:
        outlook = by_class.get(node_class)
        if outlook is not None and outlook.met is False:
            limit = f", class {node_class} max is {outlook.max_nodes}"
            return "at_risk", f"needs {outlook.needed} nodes" + (
                limit if outlook.max_nodes is not None else f" of class {node_class}"
            )
    if eta_s is not None:
        finish = now + eta_s
        if finish <= deadline:
            return "on_track", f"ETA {_iso(finish)}"
        return "at_risk", f"ETA {_iso(finish)} is {(finish - deadline) / 60:.0f} min late"
    if classes and all((o := by_class.get(c)) is not None and o.met is True for c in classes):
        return "on_track", "the autoscaler sizes the fleet for it"
    return "unknown", "no ETA yet"
