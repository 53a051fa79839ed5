"""Fixtures for the fleet backend: Auto Scaling groups on moto, and our lifecycle endpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from tests.aws import REGION, MotoServer, unique_name
from tests.fleet.endpoint import LifecycleEndpoint

if TYPE_CHECKING:
    from tests.fleet.harness import FleetHarness

#: An AMI id moto knows.
AMI = "ami-12c6146b"


def aws(service: str, endpoint: str) -> Any:
    """A plain boto3 client on moto, for the test's own set-up and checks."""
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)


@pytest.fixture
def make_group(moto: MotoServer) -> Iterator[Callable[..., str]]:
    """Factory: a new Auto Scaling group on moto (``min``, ``max``, ``desired``); its name."""
    ec2 = aws("ec2", moto.endpoint)
    autoscaling = aws("autoscaling", moto.endpoint)
    made: list[str] = []

    def make(min: int = 1, max: int = 3, desired: int = 2) -> str:
        name = unique_name("bf-workers")
        ec2.create_launch_template(
            LaunchTemplateName=name,
            LaunchTemplateData={"ImageId": AMI, "InstanceType": "c7g.large"},
        )
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateName": name},
            MinSize=min,
            MaxSize=max,
            DesiredCapacity=desired,
            AvailabilityZones=[f"{REGION}a"],
        )
        made.append(name)
        return name

    yield make
    for name in made:
        autoscaling.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
    ec2.close()
    autoscaling.close()


@pytest.fixture
def lifecycle(moto: MotoServer) -> Iterator[LifecycleEndpoint]:
    """Our Auto Scaling endpoint (lifecycle actions) in front of moto."""
    endpoint = LifecycleEndpoint(upstream=moto.endpoint)
    endpoint.start()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def fleet_harness(lifecycle: LifecycleEndpoint) -> Iterator[Callable[..., FleetHarness]]:
    """Factory: a started :class:`~tests.fleet.harness.FleetHarness` for ``group`` on the
    ``lifecycle`` endpoint (nodes under ``state``, with ``env``); all closed at the end.
    """
    from tests.fleet.harness import FleetHarness

    made: list[FleetHarness] = []

    def make(group: str, state: Path, env: dict[str, str]) -> FleetHarness:
        harness = FleetHarness(lifecycle, group, state, env).start()
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()
    for harness in made:
        assert harness.errors == [], "the harness failed while following the group"
