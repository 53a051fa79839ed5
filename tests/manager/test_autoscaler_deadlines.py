"""The autoscaler sizes an Auto Scaling group (moto, over HTTP) for jobs' deadlines, and
records whether it can meet them: the verdict ``status`` and ``/metrics`` read.
"""

from __future__ import annotations

import pytest

from batchfarm.actors.backends import open_store, open_task_queues
from batchfarm.actors.backends.store import JobState, NewJob, NewStage, NewTask, TaskState
from batchfarm.actors.manager.autoscaler import Autoscaler, open_autoscaled_fleet
from batchfarm.actors.messages import Command, Heartbeat
from tests.aws import REGION
from tests.fleet.conftest import make_group  # noqa: F401 (the group fixture)
from tests.worker.grid import make_settings

NOW = 1_000_000.0


@pytest.fixture
def scaler(tmp_path, moto, make_group):  # noqa: F811 (the fixture imported above)
    group = make_group(min=0, max=10, desired=0)
    settings = make_settings(
        tmp_path / "state",
        autoscale={
            "provider": "aws",
            "group": group,
            "region": REGION,
            "endpoint_url": moto.endpoint,
            "max_nodes": 5,
            "workers_per_node": 1,
            # The backlog alone could wait hours: only the deadlines ask for nodes.
            "target_drain": 36_000.0,
            "default_task": 60.0,
        },
    )
    fleet = open_autoscaled_fleet(settings)
    assert fleet is not None
    store = open_store(settings.store)
    queues = open_task_queues(settings.queue)
    beats: dict[str, Heartbeat] = {}

    def send(node: str, command: Command) -> bool:
        return True

    autoscaler = Autoscaler(
        settings,
        store,
        fleet,
        depth=queues.depth,
        beats=lambda: beats,
        send=send,
        clock=lambda: NOW,
    )
    yield autoscaler, store
    autoscaler.close()
    queues.close()
    store.close()


def deadline_job(store, job_id: str, tasks: int, deadline: float) -> None:
    stages = [NewStage("work", 0, "noop")]
    queued = [NewTask("work", part, state=TaskState.QUEUED) for part in range(tasks)]
    store.create_job(
        NewJob(job_id, stages, state=JobState.RUNNING, deadline=deadline, created_at=NOW), queued
    )


def test_the_fleet_grows_to_meet_a_deadline_and_says_when_it_cannot(scaler) -> None:
    autoscaler, store = scaler
    # 30 tasks of ~60 s, due in 690 s: 600 s once new nodes have booted (90 s), 3 nodes.
    deadline_job(store, "month-end", 30, NOW + 690)
    autoscaler.tick()
    decision = autoscaler.last.decision
    assert (autoscaler.last.desired_after, decision.deadlines_met) == (3, True)
    assert decision.reason == "scale out: deadlines need 3 node(s)"
    (event,) = store.scaling_events()
    assert event.details["deadlines_met"] is True

    # 40 more due then: 7 nodes, over the class's maximum of 5. Capped, and said so.
    deadline_job(store, "year-end", 40, NOW + 690)
    autoscaler.tick()
    decision = autoscaler.last.decision
    assert (autoscaler.last.desired_after, decision.needed) == (5, 7)
    assert decision.deadlines_met is False
    assert decision.reason == "scale out: deadlines need 7 node(s) (capped at the class's maximum)"
    latest = store.scaling_events(limit=1)[0]
    assert (latest.details["deadlines_met"], latest.details["needed"]) == (False, 7)
