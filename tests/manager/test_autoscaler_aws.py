"""The autoscaler on an Auto Scaling group (moto's server, over HTTP): it sets the desired
capacity, protects busy instances from scale-in, drains idle ones and terminates each drained
instance with the desired capacity lowered. No node process runs: the test plays the nodes'
heartbeats (named by instance id) and records the commands sent to them.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from batchfarm.actors.backends import open_store, open_task_queues
from batchfarm.actors.backends.fleet.asg import AsgFleet
from batchfarm.actors.errors import ConfigError
from batchfarm.actors.manager.autoscaler import Autoscaler, open_autoscaled_fleet
from batchfarm.actors.messages import Command, Heartbeat, WorkerStatus
from tests.aws import REGION
from tests.fakes.imds import FakeImds
from tests.fleet.conftest import aws, make_group  # noqa: F401 (the group fixture)
from tests.node.nodeproc import BASE_ENV
from tests.worker.grid import make_settings, submit, task


def beat(node: str, node_state: str = "up", *workers: str) -> Heartbeat:
    statuses = [
        WorkerStatus(index=i, pid=100 + i, state=s, task="job1/s1/0" if s == "busy" else None)  # type: ignore[arg-type]
        for i, s in enumerate(workers)
    ]
    return Heartbeat(node=node, sent_at=0.0, state=node_state, workers=statuses)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scaler(tmp_path, moto, make_group):  # noqa: F811 (the fixture imported above)
    group = make_group(min=0, max=3, desired=0)
    settings = make_settings(
        tmp_path / "state",
        autoscale={
            "provider": "aws",
            "group": group,
            "region": REGION,
            "endpoint_url": moto.endpoint,
            "min_nodes": 0,
            "max_nodes": 5,
            "workers_per_node": 1,
            "target_drain": 10.0,
            "idle": 30.0,
            "interval": 1.0,
            "default_task": 10.0,
        },
    )
    fleet = open_autoscaled_fleet(settings)
    assert isinstance(fleet, AsgFleet)
    store = open_store(settings.store)
    queues = open_task_queues(settings.queue)
    beats: dict[str, Heartbeat] = {}
    sent: list[tuple[str, Command]] = []

    def send(node: str, command: Command) -> bool:
        sent.append((node, command))
        return True

    clock = Clock()
    autoscaler = Autoscaler(
        settings, store, fleet, depth=queues.depth, beats=lambda: beats, send=send, clock=clock
    )
    yield autoscaler, settings, group, beats, sent, clock, moto
    autoscaler.close()
    queues.close()
    store.close()


def group_state(endpoint: str, group: str) -> tuple[int, dict[str, bool]]:
    client = aws("autoscaling", endpoint)
    found = client.describe_auto_scaling_groups(AutoScalingGroupNames=[group])
    client.close()
    (info,) = found["AutoScalingGroups"]
    members = {i["InstanceId"]: i["ProtectedFromScaleIn"] for i in info["Instances"]}
    return info["DesiredCapacity"], members


def test_the_group_grows_busy_instances_are_protected_and_drained_ones_terminated(scaler):
    autoscaler, settings, group, beats, sent, clock, moto = scaler
    submit(settings, *[task(n, "sleep") for n in range(3)])
    autoscaler.tick()
    desired, members = group_state(moto.endpoint, group)
    # 3 tasks of ~10 s (nothing measured yet) within 10 s: 3 one-worker nodes, not the max 5.
    assert desired == 3
    assert len(members) == 3
    assert autoscaler.last is not None
    assert (autoscaler.last.desired_before, autoscaler.last.desired_after) == (0, 3)

    # The nodes report, named by instance id, all busy: the group may not pick them.
    ids = sorted(members)
    for instance in ids:
        beats[instance] = beat(instance, "up", "busy")
    autoscaler.tick()
    assert group_state(moto.endpoint, group)[1] == dict.fromkeys(ids, True)
    assert sent == []

    # The work is done and the nodes idle; only after [autoscale] idle are they drained.
    queues = open_task_queues(settings.queue)
    for queue in queues:
        queue.purge()
    queues.close()
    for instance in ids:
        beats[instance] = beat(instance, "up", "idle")
    autoscaler.tick()
    assert sent == []
    assert group_state(moto.endpoint, group)[1] == dict.fromkeys(ids, False)  # released
    clock.now += 31
    autoscaler.tick()
    assert sorted(node for node, _ in sent) == ids
    assert {command.name for _, command in sent} == {"drain"}
    assert group_state(moto.endpoint, group)[0] == 3  # not before they have drained

    # Two report drained (no worker left); the third is still finishing a task it took.
    for instance in ids[:2]:
        beats[instance] = beat(instance, "draining")
    beats[ids[2]] = beat(ids[2], "draining", "busy")
    autoscaler.tick()
    desired, members = group_state(moto.endpoint, group)
    assert (desired, sorted(members)) == (1, [ids[2]])
    del beats[ids[2]]  # its last task done, the node exited: its heartbeats stop
    autoscaler.tick()
    assert group_state(moto.endpoint, group) == (0, {})

    with open_store(settings.store) as store:
        events = list(reversed(store.scaling_events()))
    moves = [(e.desired_before, e.desired_after) for e in events if e.reason[:4] != "hold"]
    assert moves == [(0, 3), (3, 0)]
    out, shrink = (e for e in events if e.reason[:4] != "hold")
    assert (out.provider, out.backlog, out.nodes) == ("aws", 3, 0)
    assert out.details["fleet"]["max"] == 3
    assert (shrink.backlog, shrink.nodes) == (0, 3)
    assert sorted(shrink.details["remove"]) == ids


def test_aws_without_a_group_and_limits_the_wrong_way_round_are_refused(tmp_path):
    settings = make_settings(tmp_path / "state", autoscale={"provider": "aws"})
    with pytest.raises(ConfigError, match=r"\[autoscale\] group"):
        open_autoscaled_fleet(settings)
    reversed_limits = replace(
        settings.autoscale, provider="local", min_nodes=3, max_nodes=1, group=""
    )
    with pytest.raises(ConfigError, match=r"\[autoscale\] min_nodes = 3: expected at most"):
        open_autoscaled_fleet(replace(settings, autoscale=reversed_limits))
    off = replace(settings, autoscale=replace(settings.autoscale, provider=""))
    assert open_autoscaled_fleet(off) is None


@pytest.mark.slow
def test_a_node_on_ec2_names_itself_by_its_instance_id(tmp_path):
    # The autoscaler finds a node's instance by the node's name: on EC2 it is the instance id.
    imds = FakeImds(instance_id="i-0feedfacecafe0001").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFARM_")}
    env.update(BASE_ENV)
    env.update(
        {
            "BATCHFARM_GRID_STATE_DIR": str(tmp_path / "state"),
            "BATCHFARM_NODE_WORKERS": "1",
            "BATCHFARM_NODE_METADATA_URL": imds.url,
            "BATCHFARM_NODE_METADATA_POLL": "0.2",
        }
    )
    command = [sys.executable, "-m", "batchfarm.actors.cli", "node", "--until-empty"]
    try:
        run = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        imds.stop()
    assert run.returncode == 0, run.stderr
    assert "node i-0feedfacecafe0001: 1 workers" in run.stderr

    env["BATCHFARM_NODE_METADATA_URL"] = "http://127.0.0.1:1"  # nothing answers there
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1
    assert "cannot read the instance id to name this node" in run.stderr
    assert "pass --name" in run.stderr


def test_each_decision_can_put_the_backlog_per_instance_to_cloudwatch(scaler):
    autoscaler, settings, group, beats, _sent, clock, moto = scaler
    publishing = replace(settings, autoscale=replace(settings.autoscale, publish_backlog=True))
    queues = open_task_queues(settings.queue)
    with open_store(settings.store) as store:
        publisher = Autoscaler(
            publishing,
            store,
            autoscaler.fleet,
            depth=queues.depth,
            beats=lambda: beats,
            send=lambda node, command: True,
            clock=clock,
        )
        submit(settings, *[task(n, "sleep") for n in range(4)])
        publisher.tick()  # 4 waiting, no instance in service yet: 4 published
        publisher.tick()  # 4 waiting over the instances now in service
        in_service = len(group_state(moto.endpoint, group)[1])
    queues.close()
    cloudwatch = aws("cloudwatch", moto.endpoint)
    stats = cloudwatch.get_metric_statistics(
        Namespace="batchfarm",
        MetricName="BacklogPerInstance",
        Dimensions=[
            {"Name": "Grid", "Value": settings.grid.name},
            {"Name": "NodeClass", "Value": "default"},
        ],
        StartTime=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5),
        EndTime=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        Period=60,
        Statistics=["Minimum", "Maximum"],
    )
    cloudwatch.close()
    points = stats["Datapoints"]
    assert in_service >= 1
    assert max(p["Maximum"] for p in points) == 4.0
    assert min(p["Minimum"] for p in points) == pytest.approx(4.0 / in_service)
