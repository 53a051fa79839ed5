"""The Auto Scaling lifecycle, end to end over HTTP: our endpoint in front of moto enforces
the hooks (Pending:Wait, InService, Terminating:Wait with heartbeats and the timeout's default
result, Terminated), and the fleet's own calls (boto3) drive a member through it.
"""

from __future__ import annotations

import time

import pytest

from batchfarm.actors.backends.fleet import (
    ABANDON,
    CONTINUE,
    IN_SERVICE,
    LAUNCHING,
    PENDING_WAIT,
    TERMINATED,
    TERMINATING_HOOK,
    TERMINATING_WAIT,
    open_fleet,
)
from tests.aws import REGION
from tests.fleet.harness import FULL_LIFE, put_hooks
from tests.worker.grid import wait_for


def states(fleet) -> dict[str, str]:
    return {i.id: i.lifecycle_state for i in fleet.state().instances}


def test_a_member_goes_through_every_state_as_the_fleet_completes_its_hooks(lifecycle, make_group):
    group = make_group(min=0, max=3, desired=0)
    put_hooks(lifecycle, group, launch=(60, ABANDON), terminate=(60, CONTINUE))
    with open_fleet(f"asg://{group}", region=REGION, endpoint_url=lifecycle.url) as fleet:
        fleet.set_desired(1)
        ((member, state),) = states(fleet).items()
        # Held by the launch hook: listed, but not yet in service (the autoscaler's view).
        assert state == PENDING_WAIT
        assert fleet.state().in_service == ()
        fleet.complete_lifecycle(member, "ready", CONTINUE)
        assert states(fleet) == {member: IN_SERVICE}

        fleet.terminate(member)
        after = fleet.state()
        # The desired capacity went down at once; the member waits for its node to drain.
        assert after.desired == 0
        assert {i.id: i.lifecycle_state for i in after.instances} == {member: TERMINATING_WAIT}
        held = lifecycle.action(group, "drain", member)
        assert held is not None
        deadline = held.deadline
        fleet.lifecycle_heartbeat(member, "drain")
        assert held.deadline > deadline  # the heartbeat restarted the timeout
        fleet.complete_lifecycle(member, "drain", CONTINUE)
        assert states(fleet) == {}
    assert lifecycle.sequence(member) == FULL_LIFE
    causes = [t.cause for t in lifecycle.history[member]]
    assert causes == [
        "launched",
        "CompleteLifecycleAction CONTINUE",
        "removed",
        "CompleteLifecycleAction CONTINUE",
    ]
    assert lifecycle.held == set()


def test_abandoning_a_launch_terminates_the_member_and_the_group_replaces_it(lifecycle, make_group):
    group = make_group(min=0, max=3, desired=0)
    put_hooks(lifecycle, group, launch=(60, CONTINUE))
    with open_fleet(f"asg://{group}", region=REGION, endpoint_url=lifecycle.url) as fleet:
        fleet.set_desired(1)
        (first,) = states(fleet)
        fleet.complete_lifecycle(first, "ready", ABANDON)
        now = fleet.state()
    assert now.desired == 1
    ((replacement, state),) = ((i.id, i.lifecycle_state) for i in now.instances)
    assert replacement != first
    assert state == PENDING_WAIT
    assert lifecycle.sequence(first) == [PENDING_WAIT, TERMINATED]


@pytest.mark.parametrize(
    ("default", "launched"),
    [(CONTINUE, [PENDING_WAIT, IN_SERVICE]), (ABANDON, [PENDING_WAIT, TERMINATED])],
)
def test_a_launch_nobody_completes_takes_the_hooks_default_result_after_its_timeout(
    lifecycle, make_group, default, launched
):
    group = make_group(min=0, max=2, desired=0)
    put_hooks(lifecycle, group, launch=(1, default))
    with open_fleet(f"asg://{group}", region=REGION, endpoint_url=lifecycle.url) as fleet:
        fleet.set_desired(1)
        (member,) = states(fleet)
        wait_for(lambda: len(lifecycle.sequence(member)) == 2, timeout=10, what="the timeout")
    assert lifecycle.sequence(member) == launched
    assert lifecycle.history[member][-1].cause == f"timeout {default}"
    took = lifecycle.history[member][1].at - lifecycle.history[member][0].at
    assert took >= 1.0  # the default result waited for the hook's 1 s timeout


@pytest.mark.parametrize("default", [CONTINUE, ABANDON])
def test_heartbeats_hold_a_terminating_member_past_the_timeout_until_they_stop(
    lifecycle, make_group, default
):
    group = make_group(min=0, max=2, desired=1)  # its member was there before the hook
    put_hooks(lifecycle, group, terminate=(3, default))
    with open_fleet(f"asg://{group}", region=REGION, endpoint_url=lifecycle.url) as fleet:
        (member,) = states(fleet)
        fleet.terminate(member)
        started = time.monotonic()
        # A node draining for longer than the hook's timeout records heartbeats.
        while time.monotonic() - started < 5.0:
            fleet.lifecycle_heartbeat(member, "drain")
            last_beat = time.monotonic()
            time.sleep(0.5)
        assert states(fleet) == {member: TERMINATING_WAIT}  # held past the 3-s timeout
        # The node died: no heartbeat, no completion; the default result ends the wait.
        wait_for(lambda: states(fleet) == {}, timeout=10, what="the timeout's default result")
    assert lifecycle.sequence(member) == [IN_SERVICE, TERMINATING_WAIT, TERMINATED]
    ended = lifecycle.history[member][-1]
    assert ended.cause == f"timeout {default}"
    assert 3.0 <= ended.at - last_beat < 5.0  # a heartbeat timeout after the last heartbeat


def test_release_completes_the_termination_hook_of_a_member_whose_node_is_gone(
    lifecycle, make_group
):
    group = make_group(min=0, max=3, desired=2)
    put_hooks(lifecycle, group, launch=(60, ABANDON), terminate=(60, ABANDON))
    with open_fleet(f"asg://{group}", region=REGION, endpoint_url=lifecycle.url) as fleet:
        hooks = {
            h.name: (h.transition, h.heartbeat_timeout, h.default_result) for h in fleet.hooks()
        }
        assert hooks == {
            "ready": (LAUNCHING, 60.0, ABANDON),
            "drain": (TERMINATING_HOOK, 60.0, ABANDON),
        }
        gone, staying = sorted(states(fleet))
        # Drained, its node exited, then terminated by the autoscaler: nobody completes the
        # hook but the autoscaler, through release.
        fleet.terminate(gone)
        assert fleet.release(gone) is True
        assert fleet.release(staying) is False  # in service: nothing to release yet
        assert states(fleet) == {staying: IN_SERVICE}
    assert lifecycle.sequence(gone) == [IN_SERVICE, TERMINATING_WAIT, TERMINATED]
    assert lifecycle.history[gone][-1].cause == "CompleteLifecycleAction CONTINUE"


def test_release_on_a_group_without_hooks_has_nothing_to_do(moto, make_group):
    group = make_group(min=0, max=2, desired=1)
    with open_fleet(f"asg://{group}", region=REGION, endpoint_url=moto.endpoint) as fleet:
        (member,) = states(fleet)
        fleet.terminate(member)
        assert fleet.hooks() == ()
        assert fleet.release(member) is True
