"""The Auto Scaling fleet on moto over HTTP: capacity clamped by our code, protection,
termination with decrement, lifecycle actions (through our endpoint), and clear errors.
"""

from __future__ import annotations

import time
import uuid

import pytest

from batchfarm.actors.backends.fleet import (
    ABANDON,
    CONTINUE,
    IN_SERVICE,
    FleetError,
    FleetState,
    Instance,
    open_fleet,
)
from batchfarm.actors.backends.fleet.asg import AsgFleet
from tests.aws import REGION, unique_name
from tests.fleet.conftest import aws


def fleet_on(endpoint: str, group: str) -> AsgFleet:
    fleet = open_fleet(f"asg://{group}", region=REGION, endpoint_url=endpoint)
    assert isinstance(fleet, AsgFleet)
    return fleet


def test_state_reads_capacity_and_members_with_their_lifecycle_state(moto, make_group):
    group = make_group(min=1, max=4, desired=2)
    with fleet_on(moto.endpoint, group) as fleet:
        state = fleet.state()
    assert (state.desired, state.min, state.max) == (2, 1, 4)
    assert len(state.instances) == 2
    for instance in state.instances:
        assert instance.id.startswith("i-")
        assert instance.lifecycle_state == IN_SERVICE
        assert instance.in_service
        assert instance.health == "Healthy"
        assert instance.protected_from_scale_in is False
        assert instance.instance_type == "c7g.large"
        assert instance.zone == f"{REGION}a"
    assert state.in_service == state.instances
    assert state.instance(state.instances[0].id) == state.instances[0]
    assert state.instance("i-00000000000000000") is None


@pytest.mark.parametrize(("asked", "applied"), [(9, 3), (0, 1), (2, 2)])
def test_desired_capacity_is_clamped_to_min_and_max_by_our_code(moto, make_group, asked, applied):
    # moto takes a desired capacity above the max (AWS refuses it): the clamp is ours.
    group = make_group(min=1, max=3, desired=1)
    with fleet_on(moto.endpoint, group) as fleet:
        assert fleet.set_desired(asked) == applied
        state = fleet.state()
    assert state.desired == applied
    assert len(state.instances) == applied


def test_clamp_keeps_within_the_group():
    state = FleetState(desired=2, min=0, max=5, instances=())
    assert [state.clamp(n) for n in (-3, 0, 4, 5, 50)] == [0, 0, 4, 5, 5]


def test_protected_members_survive_a_scale_in(moto, make_group):
    group = make_group(min=0, max=4, desired=3)
    with fleet_on(moto.endpoint, group) as fleet:
        busy = [i.id for i in fleet.state().instances[:2]]
        fleet.protect(busy)
        assert {i.id for i in fleet.state().instances if i.protected_from_scale_in} == set(busy)
        fleet.set_desired(1)
        # Scale-in chose the idle member; the busy ones are still there.
        remaining = {i.id for i in fleet.state().instances}
        assert set(busy) <= remaining
        fleet.protect(busy, protected=False)
        assert not any(i.protected_from_scale_in for i in fleet.state().instances)


def test_protecting_a_stranger_is_refused_before_any_change(moto, make_group):
    group = make_group(desired=2)
    with fleet_on(moto.endpoint, group) as fleet:
        member = fleet.state().instances[0].id
        with pytest.raises(FleetError) as caught:
            fleet.protect([member, "i-0123456789abcdef0"])
        # moto would accept the stranger silently; AWS names it in a ValidationError.
        assert str(caught.value) == (
            f"Auto Scaling group {group!r}: SetInstanceProtection: not members of the group:"
            " i-0123456789abcdef0"
        )
        assert not fleet.state().instance(member).protected_from_scale_in  # type: ignore[union-attr]


def test_terminate_removes_the_member_and_lowers_desired_capacity(moto, make_group):
    group = make_group(min=1, max=4, desired=3)
    with fleet_on(moto.endpoint, group) as fleet:
        drained = fleet.state().instances[1].id
        fleet.terminate(drained)
        state = fleet.state()
    assert state.desired == 2
    assert drained not in {i.id for i in state.instances}
    assert len(state.instances) == 2
    ec2 = aws("ec2", moto.endpoint)
    reservations = ec2.describe_instances(InstanceIds=[drained])["Reservations"]
    assert reservations[0]["Instances"][0]["State"]["Name"] in ("shutting-down", "terminated")


def test_terminate_refuses_a_member_of_another_group(moto, make_group):
    ours, theirs = make_group(desired=2), make_group(desired=2)
    with fleet_on(moto.endpoint, ours) as fleet, fleet_on(moto.endpoint, theirs) as other:
        stranger = other.state().instances[0].id
        with pytest.raises(FleetError, match=f"{ours!r}: TerminateInstanceInAutoScalingGroup:"):
            fleet.terminate(stranger)
        # The call takes no group name: without our check it would have ended their member.
        assert other.state().instance(stranger) is not None


def test_terminate_at_the_minimum_is_refused(moto, make_group):
    group = make_group(min=2, max=4, desired=2)
    with fleet_on(moto.endpoint, group) as fleet:
        member = fleet.state().instances[0].id
        with pytest.raises(FleetError) as caught:
            fleet.terminate(member)
        assert "the desired capacity (2) is the group's min (2)" in str(caught.value)
        assert len(fleet.state().instances) == 2


def test_a_missing_group_is_named_with_the_action_at_once(moto):
    group = unique_name("bf-nosuch")
    with fleet_on(moto.endpoint, group) as fleet:
        started = time.monotonic()
        for call in (fleet.state, lambda: fleet.set_desired(2), lambda: fleet.terminate("i-1")):
            with pytest.raises(FleetError) as caught:
                call()
            assert str(caught.value) == (
                f"Auto Scaling group {group!r}: DescribeAutoScalingGroups found no such group"
                f" in {REGION}"
            )
        # No retrying of an error that will not pass.
        assert time.monotonic() - started < 5


def test_lifecycle_action_completes_and_heartbeats(lifecycle, make_group):
    group = make_group(desired=2)
    with fleet_on(lifecycle.url, group) as fleet:
        member = fleet.state().instances[0].id
        lifecycle.hold(group, "drain", member)
        token = str(uuid.uuid4())  # the token a hook's notification carries
        fleet.lifecycle_heartbeat(member, "drain")
        fleet.complete_lifecycle(member, "drain", token=token)
        assert lifecycle.held == set()
        assert [action for action, _ in lifecycle.calls] == [
            "RecordLifecycleActionHeartbeat",
            "CompleteLifecycleAction",
        ]
        sent = lifecycle.calls[1][1]
        assert sent["AutoScalingGroupName"] == group
        assert sent["LifecycleHookName"] == "drain"
        assert sent["InstanceId"] == member
        assert sent["LifecycleActionResult"] == CONTINUE
        assert sent["LifecycleActionToken"] == token
        assert "LifecycleActionToken" not in lifecycle.calls[0][1]


def test_lifecycle_action_on_a_member_nobody_holds_is_a_clear_error(lifecycle, make_group):
    group = make_group(desired=1)
    with fleet_on(lifecycle.url, group) as fleet:
        member = fleet.state().instances[0].id
        lifecycle.hold(group, "drain", member)
        fleet.complete_lifecycle(member, "drain", result=ABANDON)
        with pytest.raises(FleetError) as caught:
            fleet.complete_lifecycle(member, "drain")
    assert str(caught.value) == (
        f"Auto Scaling group {group!r}: CompleteLifecycleAction failed (ValidationError:"
        f" No active Lifecycle Action found with instance ID {member})"
    )


def test_access_denied_names_the_group_and_the_action(lifecycle, make_group):
    group = make_group(desired=1)
    lifecycle.deny("RecordLifecycleActionHeartbeat")
    with fleet_on(lifecycle.url, group) as fleet:
        member = fleet.state().instances[0].id
        started = time.monotonic()
        with pytest.raises(FleetError) as caught:
            fleet.lifecycle_heartbeat(member, "drain")
    assert str(caught.value).startswith(
        f"Auto Scaling group {group!r}: RecordLifecycleActionHeartbeat failed (AccessDenied:"
    )
    assert time.monotonic() - started < 5


def test_a_lifecycle_result_must_be_continue_or_abandon(lifecycle, make_group):
    group = make_group(desired=1)
    with (
        fleet_on(lifecycle.url, group) as fleet,
        pytest.raises(FleetError, match="result 'STOP' is not 'CONTINUE' or 'ABANDON'"),
    ):
        fleet.complete_lifecycle("i-1", "drain", result="STOP")
    assert lifecycle.calls == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("asg://", "expected asg://GROUP-NAME"),
        ("asg://workers/extra", "expected asg://GROUP-NAME"),
        ("asg://workers?x=1", "expected asg://GROUP-NAME"),
        ("ec2://workers", "no ec2:// fleet"),
    ],
)
def test_bad_fleet_urls_are_refused(url, message):
    with pytest.raises(FleetError, match=message):
        open_fleet(url)


def test_instance_in_service_only_when_in_service():
    states = ["Pending", "Pending:Wait", "InService", "Terminating:Wait", "Standby"]
    up = [Instance(f"i-{n}", s, "Healthy", False).in_service for n, s in enumerate(states)]
    assert up == [False, False, True, False, False]
