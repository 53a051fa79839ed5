"""The worker's engine on the embedded backends, driven in-process (no actor runtime)."""

from __future__ import annotations

import time

from batchfarm.actors.backends import open_blobs
from batchfarm.actors.messages import AbandonedRun, cancel_marker
from tests.worker.grid import (
    completions,
    events,
    make_settings,
    submit,
    task,
    tasks_queue,
    wait_for,
)


def backlog(settings):
    with tasks_queue(settings) as queue:
        return queue.depth()


def sent_events(settings, count):
    """The events sent to the completion queue, once there are ``count`` (the output thread
    may still be sending them when the worker's counters already show its runs done)."""
    sent = []

    def enough():
        sent.extend(events(settings))
        return len(sent) >= count

    wait_for(enough, what=f"{count} events")
    return sent


def test_tasks_run_and_their_outputs_land_under_the_task_prefix(tmp_path, start_core):
    settings = make_settings(tmp_path / "state")
    inputs = {f"raw/clip-{n}.bin": bytes([n]) * 1000 for n in range(3)}
    submit(
        settings,
        *[task(n, "copy", inputs=[f"raw/clip-{n}.bin"]) for n in range(3)],
        inputs=inputs,
    )
    core = start_core(settings)
    wait_for(lambda: core.done == 3, what="3 tasks done")

    events = sorted(completions(settings), key=lambda e: e.part)
    assert [(e.part, e.ok, e.attempt, e.final) for e in events] == [
        (0, True, 1, False),
        (1, True, 1, False),
        (2, True, 1, False),
    ]
    blobs = open_blobs(settings.storage)
    for event in events:
        keys = sorted(o.key for o in event.outputs)
        assert keys == [
            f"jobs/job1/s1/{event.part}/note.txt",
            f"jobs/job1/s1/{event.part}/out-0.bin",
        ]
        assert blobs.read(f"jobs/job1/s1/{event.part}/out-0.bin") == bytes([event.part]) * 1000
        assert event.meta == {"copied": 1}
        assert event.bytes_in == 1000
        assert event.bytes_out == 1000 + len("job1/s1/0")
    blobs.close()
    depth = backlog(settings)
    assert (depth.visible, depth.in_flight, depth.dead) == (0, 0, 0)
    assert not any((tmp_path / "scratch-0").iterdir()), "scratch folders left behind"


def test_a_transient_failure_is_retried_then_dead_lettered(tmp_path, start_core):
    settings = make_settings(tmp_path / "state", queue={"max_receives": 5})
    submit(settings, task(0, "fail", max_attempts=3))
    core = start_core(settings)
    wait_for(lambda: backlog(settings).dead == 1, what="the task in the dead-letter queue")
    wait_for(lambda: core.failed == 3, what="3 failed runs counted")

    events = completions(settings)
    assert [(e.attempt, e.ok, e.final) for e in events] == [
        (1, False, False),
        (2, False, False),
        (3, False, True),
    ]
    assert events[-1].error is not None
    assert events[-1].error.message == "the disk hiccuped"
    assert events[-1].error.stderr_tail.endswith("EIO")
    assert core.failed == 3
    # The retries waited: 0.2 s, then 0.4 s.
    assert events[1].started_at - events[0].finished_at >= 0.15
    assert events[2].started_at - events[1].finished_at >= 0.35


def test_a_permanent_failure_is_final_at_once(tmp_path, start_core):
    settings = make_settings(tmp_path / "state")
    submit(settings, task(0, "fail", params={"permanent": True}))
    start_core(settings)
    wait_for(lambda: backlog(settings).dead == 1, what="the task dead-lettered")
    [event] = completions(settings)
    assert (event.attempt, event.ok, event.final) == (1, False, True)
    assert event.error is not None
    assert event.error.permanent


def test_a_buggy_handler_fails_its_task_with_the_traceback(tmp_path, start_core):
    settings = make_settings(tmp_path / "state")
    submit(settings, task(0, "buggy", max_attempts=1))
    start_core(settings)
    wait_for(lambda: backlog(settings).dead == 1, what="the task dead-lettered")
    [event] = completions(settings)
    assert event.error is not None
    assert event.error.type == "TaskError"
    assert event.error.message == "KeyError: 'missing'"
    assert "tests/worker/handlers.py" in event.error.stderr_tail


def test_an_unknown_handler_and_a_missing_input_fail_for_good(tmp_path, start_core):
    settings = make_settings(tmp_path / "state")
    submit(
        settings,
        task(0, "no_such_module_xyz:run"),
        task(1, "copy", inputs=["raw/never-uploaded.bin"]),
    )
    start_core(settings)
    wait_for(lambda: backlog(settings).dead == 2, what="both tasks dead-lettered")
    events = {e.part: e for e in completions(settings)}
    assert events[0].error is not None
    assert events[0].error.permanent
    assert "no_such_module_xyz" in events[0].error.message
    assert events[1].error is not None
    assert events[1].error.permanent
    assert "raw/never-uploaded.bin" in events[1].error.message


def test_a_body_that_is_not_a_task_goes_to_the_dead_letter_queue(tmp_path, start_core):
    settings = make_settings(tmp_path / "state")
    with tasks_queue(settings) as queue:
        queue.send('{"kind": "task", "v": 1, "job": "j"}')  # no stage, part, handler
        queue.send("not json at all")
    submit(settings, task(0, "copy"))
    core = start_core(settings)
    wait_for(lambda: core.done == 1 and backlog(settings).dead == 2, what="1 done, 2 dead")
    assert core.rejected == 2
    with tasks_queue(settings) as queue:
        bodies = sorted(m.body for m in queue.dead_letters().receive(10, 0, 30))
    assert bodies == ["not json at all", '{"kind": "task", "v": 1, "job": "j"}']


def test_a_task_longer_than_the_visibility_timeout_is_delivered_once(tmp_path, start_core):
    settings = make_settings(tmp_path / "state", queue={"visibility_timeout": 1.0})
    submit(settings, task(0, "sleep", params={"seconds": 4.0}))
    core = start_core(settings)
    # A second worker polls the whole time: it must never get the task.
    other = start_core(settings, index=1)
    wait_for(lambda: core.done + other.done == 1, timeout=30, what="the long task done")
    [event] = completions(settings)
    assert event.attempt == 1
    assert core.leases.renewed + other.leases.renewed >= 8  # every 1/3 s for 4 s
    assert core.leases.lost == other.leases.lost == 0


def test_a_task_past_its_time_limit_is_stopped_and_retried(tmp_path, start_core):
    settings = make_settings(tmp_path / "state")
    submit(settings, task(0, "sleep", params={"seconds": 30}, time_limit_s=0.5, max_attempts=2))
    started = time.monotonic()
    start_core(settings)
    wait_for(lambda: backlog(settings).dead == 1, what="the task dead-lettered")
    assert time.monotonic() - started < 10
    events = completions(settings)
    assert [(e.attempt, e.final) for e in events] == [(1, False), (2, True)]
    assert events[0].error is not None
    assert events[0].error.type == "TaskCancelled"
    assert "time limit of 0.5 s" in events[0].error.message


def test_a_handler_that_ignores_its_stop_is_reported_hung(tmp_path, start_core):
    settings = make_settings(tmp_path / "state", tasks={"cancel_grace": 0.3})
    submit(settings, task(0, "hang", time_limit_s=0.2, params={"seconds": 3}))
    core = start_core(settings)
    wait_for(lambda: core.state == "busy", what="the task running")
    hung = None
    deadline = time.monotonic() + 5
    while hung is None and time.monotonic() < deadline:
        hung = core.enforce_limits()
        time.sleep(0.05)
    assert hung is not None
    assert hung.cancel_reason == "time_limit"
    core.pause()  # the process is about to end: it takes nothing more
    core.abandon(hung)  # what the actor does before it exits
    [event] = completions(settings)
    assert (event.ok, event.final, event.error.type) == (False, False, "TaskCancelled")
    # Back in the queue after its backoff, for another worker to try.
    wait_for(lambda: backlog(settings).visible == 1, timeout=5, what="the task visible again")


def test_drain_hands_back_waiting_tasks_and_finishes_the_running_one(tmp_path, start_core):
    settings = make_settings(tmp_path / "state", node={"prefetch": 3})
    submit(settings, *[task(n, "sleep", params={"seconds": 0.5}) for n in range(8)])
    core = start_core(settings)
    # Once a run shows tasks are short, the worker holds three more beside the running one.
    wait_for(lambda: core.done >= 1 and len(core.leases) == 4, what="a task running, 3 waiting")
    done_before = core.done
    core.drain()
    assert core.drained.wait(10)
    # The running one finished (and, if it ended as drain() was called, the one after it).
    assert core.done - done_before in (1, 2)
    depth = backlog(settings)
    assert depth.in_flight == 0  # the waiting ones were handed back at once, not left to expire
    assert depth.visible == 8 - core.done


def test_a_forced_pause_hands_the_running_task_back(tmp_path, start_core):
    settings = make_settings(tmp_path / "state")
    submit(settings, task(0, "sleep", params={"seconds": 30}))
    core = start_core(settings)
    wait_for(lambda: core.status(0, None).progress is not None, what="the handler running")
    paused_at = time.time()
    core.pause(force=True)
    wait_for(lambda: backlog(settings).visible == 1, timeout=5, what="the task handed back")
    assert core.state == "paused"
    assert core.done == 0
    # Stopped, not failed: its only event (sent before the hand-back) reports the run
    # abandoned, for its node time.
    [stopped] = events(settings)
    assert isinstance(stopped, AbandonedRun)
    assert (stopped.part, stopped.node, stopped.worker, stopped.attempt) == (0, "node-t", 0, 1)
    assert stopped.started_at < paused_at <= stopped.finished_at
    time.sleep(1.0)
    assert backlog(settings).visible == 1  # a paused worker takes nothing
    core.resume()
    wait_for(lambda: core.state == "busy", what="the task running again")


def test_a_lost_lease_stops_the_task_and_commits_nothing(tmp_path, start_core):
    settings = make_settings(tmp_path / "state", queue={"visibility_timeout": 30.0})
    submit(settings, task(0, "sleep", params={"seconds": 30}))
    core = start_core(settings)
    wait_for(lambda: core.state == "busy", what="the task running")
    # The message goes to someone else: made visible and received again, its old receipt
    # (the worker's) is stale from then on.
    with tasks_queue(settings) as queue:
        [receipt] = core.leases.receipts()
        queue.change_visibility(receipt, 0)
        [stolen] = queue.receive(1, wait_s=0, visibility_s=60)
        core.renew_leases()
        wait_for(lambda: core.state == "idle", timeout=5, what="the task stopped")
        assert core.leases.lost == 1
        # No outcome committed: only the run's node time, reported as abandoned (by the
        # output thread, which may still be at it).
        [lost] = sent_events(settings, 1)
        assert isinstance(lost, AbandonedRun)
        assert (lost.part, lost.node, lost.worker, lost.ok) == (0, "node-t", 0, False)
        assert lost.finished_at > lost.started_at
        assert not core.leases.receipts()
        queue.delete(stolen.receipt)  # the new holder's receipt still works


def test_short_tasks_are_taken_in_batches_long_ones_one_by_one(tmp_path, start_core):
    settings = make_settings(tmp_path / "state", node={"prefetch": 9})
    submit(settings, *[task(n, "noop") for n in range(40)])
    core = start_core(settings)
    wait_for(lambda: core.done == 40, what="40 no-op tasks")
    assert core.policy.waiting_target() == 9  # no-ops: as many as prefetch allows
    core.policy.average_s = 60.0
    # Minute-long tasks: none waiting while the running one has long to go, then one, so its
    # input is fetched while the running task finishes.
    assert core.policy.waiting_target(running_for=10.0) == 0
    assert core.policy.waiting_target(running_for=58.0) == 1


def test_long_tasks_are_not_hoarded_by_one_worker(tmp_path, start_core):
    settings = make_settings(tmp_path / "state", node={"prefetch": 9})
    submit(settings, *[task(n, "sleep", params={"seconds": 5.0}) for n in range(2)])
    first = start_core(settings)
    wait_for(lambda: first.state == "busy", what="the first worker busy")
    second = start_core(settings, index=1)
    # The second worker gets the other task: the first holds only the one it runs.
    wait_for(lambda: second.state == "busy", timeout=5, what="the second worker busy")
    assert len(first.leases) == 1


def test_a_task_sets_its_own_retry_backoff(tmp_path, start_core):
    settings = make_settings(tmp_path / "state", tasks={"retry_backoff": 0.0})
    submit(settings, task(0, "fail", max_attempts=2, retry_backoff_s=0.6))
    start_core(settings)
    wait_for(lambda: backlog(settings).dead == 1, what="the task dead-lettered")
    first, second = completions(settings)
    assert second.started_at - first.finished_at >= 0.55


def test_a_cancelled_job_is_dropped_whether_running_or_waiting(tmp_path, start_core):
    settings = make_settings(tmp_path / "state")
    doomed = [task(n, "sleep", job="doomed", params={"seconds": 30}) for n in range(2)]
    submit(settings, *doomed, task(0, "copy", job="kept"))
    core = start_core(settings)
    wait_for(lambda: core.state == "busy", what="a task running")
    blobs = open_blobs(settings.storage)
    blobs.put(cancel_marker("doomed"), b"cancelled\n")  # what the manager's cancel writes
    blobs.close()
    wait_for(lambda: core.cancelled == 2 and core.done == 1, timeout=15, what="doomed dropped")
    # The doomed task that was running reports its node time; the waiting one never ran.
    reported = sorted((type(e).__name__, e.job, e.part) for e in sent_events(settings, 2))
    assert reported == [("AbandonedRun", "doomed", 0), ("Completion", "kept", 0)]
    depth = backlog(settings)
    assert (depth.backlog, depth.dead) == (0, 0)
