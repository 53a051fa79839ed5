"""A node on EC2 leaves cleanly when told: spot interruptions, rebalances, scale-in.

The node watches a metadata service of our own (``tests/fakes/imds.py``, IMDSv2 with tokens)
as it would the instance's; tasks run on a real node process over the embedded queue.
"""

from __future__ import annotations

import time

import pytest

from batchfarm.supervisor.scalein import GROUP_TAG
from tests.fakes.imds import FakeImds
from tests.fleet.endpoint import LifecycleEndpoint
from tests.node.nodeproc import env_for
from tests.worker.grid import completions, submit, task, tasks_queue, wait_for


@pytest.fixture
def imds():
    server = FakeImds().start()
    yield server
    server.stop()


def depth(settings):
    with tasks_queue(settings) as queue:
        return queue.depth()


def node_env(imds, **values):
    return env_for(node_metadata_url=imds.url, node_metadata_poll=0.2, **values)


@pytest.mark.slow
def test_a_spot_notice_finishes_what_fits_and_hands_back_the_rest_at_once(
    start_node, settings, imds
):
    submit(settings, *[task(n, "sleep", params={"seconds": 1.0}) for n in range(10)])
    node = start_node(env=node_env(imds, node_workers=2, node_drain_grace=600))
    wait_for(lambda: depth(settings).in_flight >= 2, what="tasks running")
    # The instance stops in 21 s: the node keeps 15 s to hand back, so about 6 s of grace,
    # which the running 1-s tasks fit in; the waiting ones go back at once.
    imds.spot_interruption(time.time() + 21)
    assert node.wait(30) == 0, node.output()
    assert "spot-interruption notice" in node.output()
    done = [e for e in completions(settings) if e.ok]
    left = depth(settings)
    # Nothing lost: every task either finished or is visible again for another node now.
    assert len(done) + left.visible == 10
    assert left.in_flight == 0
    assert 2 <= len(done) < 10


@pytest.mark.slow
def test_a_spot_notice_too_close_stops_running_tasks_and_hands_them_back(
    start_node, settings, imds
):
    submit(settings, task(0, "sleep", params={"seconds": 60}))
    node = start_node(env=node_env(imds, node_workers=1, node_drain_grace=600))
    wait_for(lambda: depth(settings).in_flight == 1, what="the task running")
    started = time.monotonic()
    imds.spot_interruption(time.time() + 5)  # inside the hand-back margin: no grace at all
    assert node.wait(20) == 0, node.output()
    assert time.monotonic() - started < 10
    assert completions(settings) == []
    assert depth(settings).visible == 1  # handed back, not left to its visibility timeout


@pytest.mark.parametrize("arm", ["rebalance", "terminate"])
def test_a_rebalance_or_scale_in_notice_drains_the_node(start_node, settings, imds, arm):
    submit(settings, *[task(n, "sleep", params={"seconds": 1.0}) for n in range(2)])
    node = start_node(env=node_env(imds, node_workers=2))
    wait_for(lambda: depth(settings).in_flight == 2, what="tasks running")
    getattr(imds, arm)()
    assert node.wait(30) == 0, node.output()
    kind = {"rebalance": "rebalance", "terminate": "terminating"}[arm]
    assert f"{kind} notice" in node.output()
    # Running tasks finished: a drain with the configured grace loses nothing.
    assert len([e for e in completions(settings) if e.ok]) == 2


def test_the_node_uses_imdsv2_tokens_and_outlives_a_metadata_outage(start_node, settings, imds):
    imds.fail = True
    node = start_node(env=node_env(imds, node_workers=1))
    wait_for(lambda: len(imds.requests) >= 3, what="polls during the outage")
    imds.fail = False
    imds.requests.clear()
    wait_for(lambda: any(m == "GET" for m, _, _ in imds.requests), what="polls after it")
    assert node.proc.poll() is None  # still up
    assert all(valid for method, _, valid in imds.requests if method == "GET")
    imds.rebalance()
    assert node.wait(30) == 0, node.output()
    output = node.output()
    assert output.count("instance metadata at") == 1 + output.count("answers again")
    assert "polling again every 0.2 s" in output


@pytest.fixture
def autoscaling(moto):
    endpoint = LifecycleEndpoint(upstream=moto.endpoint)
    endpoint.start()
    yield endpoint
    endpoint.stop()


def completed(autoscaling) -> list[dict[str, str]]:
    return [params for action, params in autoscaling.calls if action == "CompleteLifecycleAction"]


def test_a_scale_in_notice_drains_then_completes_the_lifecycle_hook(
    start_node, settings, imds, autoscaling
):
    instance = imds.paths["instance-id"]
    imds.paths[GROUP_TAG] = "transcode-farm"
    autoscaling.hold("transcode-farm", "drain-first", instance)
    submit(settings, *[task(n, "sleep", params={"seconds": 2.0}) for n in range(2)])
    env = node_env(imds, node_workers=2, node_lifecycle_hook="drain-first")
    # boto3's own setting for the Auto Scaling endpoint: the node has no endpoint option.
    env["AWS_ENDPOINT_URL_AUTO_SCALING"] = autoscaling.url
    node = start_node(env=env)
    wait_for(lambda: depth(settings).in_flight == 2, what="tasks running")
    imds.terminate()
    wait_for(lambda: "terminating notice" in node.output(), what="the notice")
    # Held while its tasks run: no lifecycle action yet.
    assert completed(autoscaling) == []
    assert node.wait(30) == 0, node.output()
    assert len([e for e in completions(settings) if e.ok]) == 2
    (params,) = completed(autoscaling)
    assert params["LifecycleActionResult"] == "CONTINUE"
    assert (params["AutoScalingGroupName"], params["InstanceId"]) == ("transcode-farm", instance)
    assert autoscaling.held == set()  # released: the instance may go
    assert "lifecycle hook 'drain-first': completed (CONTINUE)" in node.output()


def test_a_lifecycle_action_that_fails_is_logged_and_the_node_still_exits(
    start_node, settings, imds, autoscaling
):
    # Nothing held for this instance: Auto Scaling answers ValidationError.
    env = node_env(
        imds, node_workers=1, node_lifecycle_hook="drain-first", node_autoscaling_group="g"
    )
    env["AWS_ENDPOINT_URL_AUTO_SCALING"] = autoscaling.url
    node = start_node(env=env)
    node.wait_workers(1)
    imds.terminate()
    assert node.wait(30) == 0, node.output()
    assert "No active Lifecycle Action found" in node.output()
