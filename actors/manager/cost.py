"""What a node costs per hour: its class's on-demand price, or its spot price at launch.

The manager prices every node when it hears from it (:class:`NodePricer`, called by the
telemetry processor for each heartbeat) and the store keeps the price on the node's row;
the store's cost queries (:mod:`batchfarm.actors.backends.store.costs`) turn node-seconds
into dollars per task, stage, job and node class.

- **On demand**: ``price_per_hour`` of the node's class (:func:`node_price`:
  ``[autoscale]``'s for ``default``); 0 means unknown, and such nodes cost nothing.
- **Spot**: a node on EC2 reports its instance type, zone and lifecycle (read from the
  instance metadata service). For a ``spot`` node the manager asks EC2's
  DescribeSpotPriceHistory for the price in that zone at that moment, once per node, in a
  background thread so the manager's loop never waits on AWS; until the answer comes (or if
  none does) the node is priced on demand. The EC2 endpoint is boto3's own
  (``AWS_ENDPOINT_URL_EC2`` or ``AWS_ENDPOINT_URL`` point it elsewhere).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from batchfarm.actors.backends.aws import backend_error, client
from batchfarm.actors.errors import BackendError
from batchfarm.actors.messages import Heartbeat
from batchfarm.actors.settings import node_class_settings
from batchfarm.actors.settings.model import Settings

log = logging.getLogger(__name__)

#: Product descriptions of a Linux spot instance (EC2-Classic's name, then the VPC one).
LINUX = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")

#: Looks up the spot price of an instance type in a zone, in dollars per hour.
SpotLookup = Callable[[str, str], float | None]


def node_price(settings: Settings, node_class: str) -> float:
    """On-demand dollars per node-hour of ``node_class``; 0 for unknown (or no such class).

    The default class's is ``[autoscale] price_per_hour``, another's its ``[classes.NAME]``
    table's (:func:`~batchfarm.actors.settings.node_class_settings`).
    """
    try:
        return node_class_settings(settings, node_class).price_per_hour
    except KeyError:  # a node of a class this config lacks (its node was told another)
        return 0.0


def region_of(zone: str) -> str:
    """The region of an availability zone: ``us-east-1a`` -> ``us-east-1``."""
    return zone[:-1] if zone and zone[-1].isalpha() else zone


class Ec2SpotPrices:
    """DescribeSpotPriceHistory for one instance type in one zone, now (a :data:`SpotLookup`).

    ``region`` is the region to ask in; empty takes it from the zone.
    """

    #: IAM actions the manager's role needs for it (AWS grants this one only on "*").
    ACTIONS = ("ec2:DescribeSpotPriceHistory",)

    def __init__(self, region: str = "") -> None:
        self._region = region
        self._clients: dict[str, Any] = {}

    def __call__(self, instance_type: str, zone: str) -> float | None:
        """The latest Linux spot price of ``instance_type`` in ``zone``; None if EC2 has none."""
        region = self._region or region_of(zone)
        ec2 = self._clients.get(region)
        if ec2 is None:
            ec2 = self._clients[region] = client("ec2", region=region)
        try:
            # StartTime now: AWS then answers with the price in effect now, per zone.
            answer = ec2.describe_spot_price_history(
                InstanceTypes=[instance_type],
                ProductDescriptions=list(LINUX),
                Filters=[{"Name": "availability-zone", "Values": [zone]}],
                StartTime=datetime.now(UTC),
            )
        except Exception as exc:  # botocore raises many kinds; each becomes one BackendError
            raise backend_error(
                exc, action="DescribeSpotPriceHistory", resource=f"{instance_type} in {zone}"
            ) from exc
        offers = [
            o
            for o in answer.get("SpotPriceHistory", [])
            if o.get("AvailabilityZone") == zone and o.get("ProductDescription") in LINUX
        ]
        if not offers:
            return None
        latest = max(offers, key=lambda o: o["Timestamp"])
        return float(latest["SpotPrice"])


class NodePricer:
    """Dollars per hour of each node, from its heartbeat (see the module docstring).

    Call it with each heartbeat; it answers at once: the spot price once known, else the
    class's on-demand price (None when that is unknown too). ``spot`` looks spot prices up
    (default: EC2's, in ``[autoscale] region`` or the node's zone's region).
    """

    def __init__(self, settings: Settings, spot: SpotLookup | None = None) -> None:
        self._settings = settings
        self._spot = spot if spot is not None else Ec2SpotPrices(settings.autoscale.region)
        self._lock = threading.Lock()
        #: Spot price per node id: a float once known, None while being looked up or if
        #: there is none (the node is then priced on demand).
        self._spot_prices: dict[str, float | None] = {}
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self, beat: Heartbeat) -> float | None:
        """The price per hour to record for the node that sent ``beat``."""
        on_demand = node_price(self._settings, beat.node_class) or None
        if beat.lifecycle != "spot" or not beat.instance_type or not beat.zone:
            return on_demand
        future: Future[float | None] | None = None
        with self._lock:
            if beat.node not in self._spot_prices:
                # Priced once, at launch (its first heartbeat here): spot prices move, and
                # the node pays what it was bought at, near enough.
                self._spot_prices[beat.node] = None
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="spot-price")
                future = self._pool.submit(self._spot, beat.instance_type, beat.zone)
            spot = self._spot_prices[beat.node]
        if future is not None:
            # Outside the lock: a lookup already done runs its callback here and now.
            future.add_done_callback(functools.partial(self._found, beat.node))
        return spot if spot is not None else on_demand

    def wait(self) -> None:
        """Wait for the lookups asked for so far (for tests and shutdown)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _found(self, node: str, done: Future[float | None]) -> None:
        try:
            price = done.result()
        except BackendError as error:
            log.warning("node %s: no spot price, priced on demand: %s", node, error)
            return
        if price is None:
            log.warning("node %s: EC2 has no spot price for it; priced on demand", node)
            return
        log.info("node %s: spot price at launch $%.4f/hour", node, price)
        with self._lock:
            self._spot_prices[node] = price
