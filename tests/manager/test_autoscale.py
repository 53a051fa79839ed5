"""The autoscaler's policy: fleet size from backlog, task time and deadlines; idle scale-in,
stepping down once no work is left.
"""

from __future__ import annotations

import itertools

import pytest

from batchfarm.actors.manager.autoscale import (
    DeadlineWork,
    FleetView,
    ScalingLimits,
    decide,
    hold_s,
)

LIMITS = ScalingLimits(
    min_nodes=0, max_nodes=20, workers_per_node=8, target_drain_s=600, idle_s=90, boot_s=90
)


def view(**kw: object) -> FleetView:
    base: dict[str, object] = {"now": 1000.0, "waiting": 0, "in_flight": 0, "task_s": 60.0}
    base["nodes"] = 0
    base.update(kw)
    return FleetView(**base)  # type: ignore[arg-type]


def test_a_backlog_is_sized_to_finish_within_the_target_time() -> None:
    # 800 tasks x 60 s = 48,000 worker-seconds; in 600 s that is 80 workers: 10 nodes of 8.
    decision = decide(view(waiting=700, in_flight=100), LIMITS)
    assert decision.desired == 10
    assert decision.remove == ()
    assert decision.reason.startswith("scale out: 800 task(s) of ~60 s need 10 node(s)")


def test_nodes_still_booting_count_so_a_burst_asks_once() -> None:
    decision = decide(view(waiting=800, nodes=10), LIMITS)
    assert decision.desired == 10
    assert decision.reason.startswith("hold")


def test_never_more_workers_than_tasks() -> None:
    # Three hour-long tasks: more than three workers cannot finish them sooner.
    decision = decide(view(waiting=3, task_s=3600.0), LIMITS)
    assert decision.desired == 1


def test_growth_is_capped_at_the_class_maximum_and_says_so() -> None:
    decision = decide(view(waiting=100_000), LIMITS)
    assert decision.desired == 20
    assert decision.needed > 20
    assert "capped at the class's maximum" in decision.reason


def test_an_unmeasured_class_assumes_the_default_task_time() -> None:
    limits = ScalingLimits(max_nodes=50, workers_per_node=1, target_drain_s=100, default_task_s=10)
    assert decide(view(waiting=50, task_s=None), limits).desired == 5


def test_idle_goes_to_the_minimum_removing_only_nodes_idle_long_enough() -> None:
    limits = ScalingLimits(min_nodes=1, max_nodes=20, workers_per_node=8, idle_s=90)
    idle = {"a": 800.0, "b": 905.0, "c": 950.0}  # idle 200 s, 95 s and 50 s at t=1000
    # Nothing queued or running, but a job still has a stage to come: every node holds 90 s.
    decision = decide(view(nodes=4, idle_since=idle, open_jobs=1), limits)
    # The minimum is 1: of the idle ones, only a and b have been idle long enough.
    assert decision.remove == ("a", "b")
    assert decision.desired == 2
    assert "nothing queued or running" in decision.reason


def test_scale_in_never_names_a_busy_node() -> None:
    # Two nodes, neither idle, backlog done but for two in-flight tasks: hold both.
    decision = decide(view(in_flight=2, nodes=2), LIMITS)
    assert decision.desired == 2
    assert decision.remove == ()
    assert "no node idle long enough" in decision.reason


def test_a_minimum_of_zero_empties_the_fleet_when_idle() -> None:
    decision = decide(view(nodes=2, idle_since={"a": 0.0, "b": 0.0}), LIMITS)
    assert decision.desired == 0
    assert set(decision.remove) == {"a", "b"}


#: A fleet of idle nodes named as EC2 names instances.
FLEET = {f"i-{n:017x}": 1000.0 for n in range(0x0A1B2C3D4E5F60000, 0x0A1B2C3D4E5F60000 + 200)}


def gone_after(idle_s: float, nodes: int = 200, **kw: object) -> set[str]:
    """The nodes of FLEET (idle since t=1000) that a decision idle_s later removes."""
    fleet = view(now=1000.0 + idle_s, nodes=nodes, idle_since=FLEET, **kw)
    return set(decide(fleet, LIMITS).remove)


def test_with_no_work_left_the_idle_fleet_steps_down_over_the_idle_time() -> None:
    # Nothing queued, running or left in any job: each node goes after its own share of the
    # 90 s, so the fleet shrinks step by step instead of all at once at 90 s.
    seen = [gone_after(t) for t in (0.0, 20.0, 45.0, 70.0, 89.0, 90.0)]
    shares = [len(gone) / 200 for gone in seen]
    assert shares[0] == 0.0
    # About a third gone by half the time (e^0.5 - 1) / (e - 1) = 0.38, all of it by 90 s.
    assert 0.25 < shares[2] < 0.5
    assert shares[4] < 1.0
    assert shares[5] == 1.0
    # A node that may go now may go at every later decision too: its hold is its own.
    assert all(earlier <= later for earlier, later in itertools.pairwise(seen))
    decision = decide(view(now=1045.0, nodes=200, idle_since=FLEET), LIMITS)
    assert decision.desired == 200 - len(decision.remove)
    assert decision.reason.endswith(
        "idle for their share of 90 s; nothing queued, running or left in any job"
    )


def test_while_work_may_still_come_every_idle_node_holds_the_whole_idle_time() -> None:
    # A job with a stage still to come, or a task still running on a 201st node: a lull, not
    # the end, so no idle node goes before 90 s.
    for work in ({"open_jobs": 1}, {"in_flight": 1, "nodes": 201}):
        assert gone_after(89.0, **work) == set()  # type: ignore[arg-type]
        assert gone_after(90.0, **work) == set(FLEET)  # type: ignore[arg-type]


def test_the_minimum_stays_while_the_fleet_steps_down() -> None:
    limits = ScalingLimits(min_nodes=150, max_nodes=200, workers_per_node=8, idle_s=90)
    fleet = view(now=1000.0 + 90, nodes=200, idle_since=FLEET)
    assert decide(fleet, limits).desired == 150


def test_a_nodes_hold_is_its_own_share_of_the_idle_time_averaging_0_58() -> None:
    holds = [hold_s(node, LIMITS, settled=True) for node in FLEET]
    assert all(0.0 <= hold < 90.0 for hold in holds)
    assert holds == [hold_s(node, LIMITS, settled=True) for node in FLEET]  # every decision
    # The mean of the randomized ski-rental hold, 1 / (e - 1) of the idle time.
    assert sum(holds) / len(holds) == pytest.approx(90.0 * 0.582, rel=0.1)
    assert {hold_s(node, LIMITS, settled=False) for node in FLEET} == {90.0}


def test_a_deadline_sizes_the_fleet_beyond_the_backlog_rule() -> None:
    # 960 tasks x 60 s due in 90 s (boot) + 720 s: 57,600 / 720 = 80 workers = 10 nodes,
    # where the backlog rule alone (within an hour) would ask for 16 workers: 2 nodes.
    due = DeadlineWork("job", tasks_left=960, deadline=1000.0 + 90 + 720)
    limits = ScalingLimits(max_nodes=40, workers_per_node=8, target_drain_s=3600, boot_s=90)
    decision = decide(view(waiting=960, deadlines=[due]), limits)
    assert decision.desired == 10
    assert decision.deadlines_met is True
    assert decision.reason.startswith("scale out: deadlines need 10 node(s)")


def test_a_deadline_beyond_reach_is_reported_not_met() -> None:
    too_late = DeadlineWork("job", tasks_left=10, deadline=1000.0 + 30)
    assert decide(view(waiting=10, deadlines=[too_late]), LIMITS).deadlines_met is False
    over_max = DeadlineWork("job", tasks_left=100_000, deadline=1000.0 + 3600)
    assert decide(view(waiting=100_000, deadlines=[over_max]), LIMITS).deadlines_met is False


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="min_nodes 5, max_nodes 2"):
        ScalingLimits(min_nodes=5, max_nodes=2)
