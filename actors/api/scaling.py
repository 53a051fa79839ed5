"""The autoscaler in the API: ``GET /scaling`` and its ``/metrics`` families.

Everything is read from the store (scaling events survive a restart) and the settings, so
the endpoint needs nothing from the manager's loop:

- ``GET /api/v1/scaling``: for each node class, the provider, limits and price, the fleet as
  last decided (desired) and as it reports (nodes up), the last decision, and recent
  events, newest first;
- ``batchfarm_scaling_events_total{direction}`` (out, in, hold), from the store;
- ``batchfarm_autoscaler_{desired,actual}_nodes{node_class}`` come from the running
  autoscalers, one per class (:class:`AutoscalerCapacity`), through the grid collector.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from batchfarm.actors.api.metrics_grid import Capacity
from batchfarm.actors.api.views import PRESENT
from batchfarm.actors.api.web import ApiContext, context, int_query
from batchfarm.actors.backends.store import ScalingEventView, Store
from batchfarm.actors.backends.store.engine import store_errors
from batchfarm.actors.backends.store.models import SCALING_EVENTS
from batchfarm.actors.errors import BackendError
from batchfarm.actors.manager.autoscaler import Autoscalers
from batchfarm.actors.manager.autoscaler_events import direction
from batchfarm.actors.settings import node_class_names, node_class_settings

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
DIRECTIONS = ("out", "in", "hold")


def event_view(event: ScalingEventView) -> dict[str, Any]:
    """A scaling event as the API shows it, with its direction."""
    return {
        "id": event.id,
        "time": event.time,
        "node_class": event.node_class,
        "provider": event.provider,
        "direction": direction(event.desired_before, event.desired_after),
        "desired_before": event.desired_before,
        "desired_after": event.desired_after,
        "backlog": event.backlog,
        "rate": event.rate,
        "nodes": event.nodes,
        "reason": event.reason,
        "details": event.details,
    }


def scaling(request: Request) -> Response:
    """``GET /scaling``: each node class's fleet settings, its fleet and recent decisions.

    The top level is the default class (as before node classes); ``classes`` lists every
    class the config defines, the default first, each in the same form.
    """
    api = context(request)
    limit = int_query(request, "limit", 20, 1, 1000)
    views = [class_scaling(api, name, limit) for name in node_class_names(api.settings)]
    return JSONResponse({**views[0], "classes": views})


def class_scaling(api: ApiContext, node_class: str, limit: int) -> dict[str, Any]:
    """One node class in ``GET /scaling``: provider, limits, price, fleet and decisions."""
    fleet = node_class_settings(api.settings, node_class)
    events = api.store.scaling_events(node_class, limit=limit)
    up = [n for n in api.store.nodes(node_class=node_class) if n.state in PRESENT]
    last = event_view(events[0]) if events else None
    return {
        "provider": fleet.provider,
        "node_class": node_class,
        "group": fleet.group,
        "min_nodes": fleet.min_nodes,
        "max_nodes": fleet.max_nodes,
        "price_per_hour": fleet.price_per_hour,
        "desired": last["desired_after"] if last else None,
        "nodes": len(up),
        "last_decision": last,
        "events": [event_view(e) for e in events],
    }


ROUTES: list[BaseRoute] = [Route(f"{PREFIX}/scaling", scaling, methods=["GET"])]


class ScalingCollector(Collector):
    """``batchfarm_scaling_events_total{direction}``, counted in the store on each scrape."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: registering must not read the store."""
        return []

    def collect(self) -> Iterable[Metric]:
        """One sample per direction (0 when none); nothing when the store fails.

        A failing store is the grid collector's to report (``batchfarm_backends_up``): the
        scrape goes on without this family.
        """
        c = SCALING_EVENTS.c
        which = sa.case(
            (c.desired_after > c.desired_before, "out"),
            (c.desired_after < c.desired_before, "in"),
            else_="hold",
        ).label("direction")
        query = sa.select(which, sa.func.count()).group_by(which)
        store = self._store
        try:
            with store_errors("count scaling events", store.url), store.engine.connect() as conn:
                counts = {str(d): int(n) for d, n in conn.execute(query).all()}
        except BackendError as error:
            log.warning("metrics: scaling events left out of this scrape: %s", error)
            return
        family = CounterMetricFamily(
            "batchfarm_scaling_events",
            "Autoscaler decisions recorded, by direction (out, in, hold).",
            labels=["direction"],
        )
        for name in DIRECTIONS:
            family.add_metric([name], counts.get(name, 0))
        yield family


class AutoscalerCapacity:
    """The running autoscalers' figures as the grid collector's capacity source."""

    def __init__(self, autoscalers: Autoscalers) -> None:
        self._autoscalers = autoscalers

    def capacity(self) -> Mapping[str, Capacity]:
        """Desired and running nodes by class, as of each class's latest decision."""
        return {
            node_class: Capacity(desired=last.desired_after, actual=last.nodes_up)
            for node_class, last in self._autoscalers.last().items()
        }
