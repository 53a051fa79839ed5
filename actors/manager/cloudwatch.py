"""Backlog per instance as a CloudWatch metric, for users who scale with AWS's own policies.

AWS's guide to scaling on an SQS queue ("Scaling based on Amazon SQS") tracks the backlog
per instance: the tasks waiting divided by the instances in service, against a target of
acceptable latency over the time a task takes. The manager measures both, so it publishes
the figure itself (namespace ``batchfarm``, metric ``BacklogPerInstance``, dimensions
``Grid`` and ``NodeClass``); a target-tracking policy on that metric then needs no metric
math. With no instance in service the backlog itself is published, so a policy can still
scale out from zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchfarm.actors.backends.aws import backend_error, client

NAMESPACE = "batchfarm"
METRIC = "BacklogPerInstance"


@dataclass(frozen=True)
class Backlog:
    """One node class's backlog at one moment."""

    grid: str
    node_class: str
    #: Tasks waiting (visible and delayed messages) for the class.
    waiting: int
    #: The class's instances in service.
    instances: int

    @property
    def per_instance(self) -> float:
        """Waiting tasks per instance in service (the waiting tasks when none is)."""
        return self.waiting / max(1, self.instances)


class BacklogPublisher:
    """Puts :class:`Backlog` figures to CloudWatch (``cloudwatch:PutMetricData``)."""

    #: The AWS actions this class calls (the IAM policy test checks they are allowed).
    ACTIONS = ("cloudwatch:PutMetricData",)

    def __init__(self, *, region: str = "", endpoint_url: str = "") -> None:
        self._client: Any = client("cloudwatch", region=region, endpoint_url=endpoint_url)

    def publish(self, backlogs: list[Backlog]) -> None:
        """Publish one datum per node class (CloudWatch takes up to 1,000 per call)."""
        data = [
            {
                "MetricName": METRIC,
                "Dimensions": [
                    {"Name": "Grid", "Value": b.grid},
                    {"Name": "NodeClass", "Value": b.node_class},
                ],
                "Value": b.per_instance,
                "Unit": "Count",
            }
            for b in backlogs
        ]
        for start in range(0, len(data), 1000):
            try:
                self._client.put_metric_data(
                    Namespace=NAMESPACE, MetricData=data[start : start + 1000]
                )
            except Exception as exc:
                raise backend_error(
                    exc, action="PutMetricData", resource=f"CloudWatch namespace {NAMESPACE!r}"
                ) from exc

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()
