"""The worker's engine on SQS (moto) with nothing changed but the queue URL in the settings.

The same driver as the embedded worker tests (``tests/worker``): tasks run, failures retry and
dead-letter through the queue's redrive wiring, and the visibility heartbeat keeps a long task
from being delivered twice.
"""

from __future__ import annotations

import pytest

from tests.aws import REGION, unique_name
from tests.worker.conftest import start_core  # noqa: F401 - the fixture, shared
from tests.worker.grid import completions, make_settings, submit, task, tasks_queue, wait_for


def sqs_settings(tmp_path, moto, **queue):
    return make_settings(
        tmp_path / "state",
        queue={
            "url": f"sqs://{unique_name('bf')}",
            "region": REGION,
            "endpoint_url": moto.endpoint,
            **queue,
        },
    )


def backlog(settings):
    with tasks_queue(settings) as queue:
        return queue.depth()


@pytest.mark.slow
def test_tasks_run_from_sqs_and_report_their_completions(tmp_path, moto, start_core):  # noqa: F811
    settings = sqs_settings(tmp_path, moto)
    inputs = {f"raw/clip-{n}.bin": bytes([n]) * 1000 for n in range(3)}
    submit(
        settings,
        *[task(n, "copy", inputs=[f"raw/clip-{n}.bin"]) for n in range(3)],
        inputs=inputs,
    )
    core = start_core(settings)
    wait_for(lambda: core.done == 3, what="3 tasks done")
    events = sorted(completions(settings), key=lambda e: e.part)
    assert [(e.part, e.ok, e.attempt) for e in events] == [(0, True, 1), (1, True, 1), (2, True, 1)]
    depth = backlog(settings)
    assert (depth.visible, depth.in_flight, depth.dead) == (0, 0, 0)


@pytest.mark.slow
def test_a_failing_task_retries_then_lands_in_the_dead_letter_queue(
    tmp_path,
    moto,
    start_core,  # noqa: F811
):
    settings = sqs_settings(tmp_path, moto, max_receives=5)
    submit(settings, task(0, "fail", max_attempts=2))
    core = start_core(settings)
    wait_for(lambda: backlog(settings).dead == 1, what="the task in the dead-letter queue")
    wait_for(lambda: core.failed == 2, what="2 failed runs counted")
    events = completions(settings)
    assert [(e.attempt, e.ok, e.final) for e in events] == [(1, False, False), (2, False, True)]


@pytest.mark.slow
def test_a_task_longer_than_the_visibility_timeout_is_delivered_once(
    tmp_path,
    moto,
    start_core,  # noqa: F811
):
    settings = sqs_settings(tmp_path, moto, visibility_timeout=2.0)
    submit(settings, task(0, "sleep", params={"seconds": 5.0}))
    core = start_core(settings)
    # A second worker polls the whole time: it must never get the task.
    other = start_core(settings, index=1)
    wait_for(lambda: core.done + other.done == 1, timeout=30, what="the task done")
    events = completions(settings)
    assert [(e.attempt, e.ok) for e in events] == [(1, True)]
    assert core.done + other.done == 1
    assert backlog(settings).backlog == 0
