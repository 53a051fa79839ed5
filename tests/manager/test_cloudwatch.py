"""Backlog per instance reaches CloudWatch (moto's server) where AWS's own policies read it."""

from __future__ import annotations

import datetime as dt

import boto3

from batchfarm.actors.manager.cloudwatch import METRIC, NAMESPACE, Backlog, BacklogPublisher
from tests.aws import unique_name


def test_backlog_per_instance_is_published_per_grid_and_class(moto):
    grid = unique_name("grid")
    publisher = BacklogPublisher(endpoint_url=moto.endpoint, region="us-east-1")
    try:
        publisher.publish(
            [Backlog(grid, "cpu", waiting=120, instances=4), Backlog(grid, "gpu", 7, 0)]
        )
    finally:
        publisher.close()
    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto.endpoint, region_name="us-east-1")
    now = dt.datetime.now(dt.UTC)
    got = {}
    for node_class in ("cpu", "gpu"):
        stats = cloudwatch.get_metric_statistics(
            Namespace=NAMESPACE,
            MetricName=METRIC,
            Dimensions=[
                {"Name": "Grid", "Value": grid},
                {"Name": "NodeClass", "Value": node_class},
            ],
            StartTime=now - dt.timedelta(minutes=5),
            EndTime=now + dt.timedelta(minutes=5),
            Period=60,
            Statistics=["Maximum"],
        )
        got[node_class] = [p["Maximum"] for p in stats["Datapoints"]]
    # 120 waiting over 4 instances; 7 waiting with none in service is published as 7.
    assert got == {"cpu": [30.0], "gpu": [7.0]}
