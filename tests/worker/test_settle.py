"""Settling finished runs together: one completion send and one delete batch per settle.

Each run's fate stays its own: a run whose lease was lost commits nothing, a delete that
finds its receipt stale loses that run alone, and a lone finished task is settled at once.
"""

from __future__ import annotations

from pathlib import Path

from batchfarm.actors.backends import COMPLETIONS, open_blobs, open_queue
from batchfarm.actors.messages import AbandonedRun
from batchfarm.actors.settings import Settings
from batchfarm.actors.worker import assignment as steps
from batchfarm.actors.worker import settle
from batchfarm.actors.worker.assignment import Assignment
from batchfarm.actors.worker.leases import Leases
from tests.worker.grid import (
    Completions,
    completions,
    events,
    make_settings,
    submit,
    task,
    tasks_queue,
    wait_for,
)


def finished_runs(settings: Settings, queue, tmp_path: Path, count: int) -> list[Assignment]:
    """Receive ``count`` no-op tasks and make each a run that finished without error."""
    leases = Leases(settings.queue.visibility_timeout)
    runs = []
    for message in queue.receive(count, wait_s=0, visibility_s=60):
        run = steps.receive(message, leases.hold(message.receipt, "", queue.name))
        run.folder = tmp_path / "scratch" / str(run.label).replace("/", ".")
        runs.append(run)
    assert len(runs) == count
    return sorted(runs, key=lambda run: run.task.part)


def commit(settings: Settings, runs: list[Assignment], queue, sent=None) -> list[str | None]:
    """Settle ``runs`` together, as the worker's output thread does (events to ``sent``,
    else to a completion queue of its own)."""
    blobs = open_blobs(settings.storage)
    try:
        with open_queue(settings.queue, COMPLETIONS) as own:
            return settle.commit(
                [(run, queue) for run in runs],
                own if sent is None else sent,
                blobs,
                node="node-t",
                worker=0,
                tasks=settings.tasks,
            )
    finally:
        blobs.close()


def test_a_stale_delete_loses_its_run_alone_and_the_others_commit(tmp_path):
    settings = make_settings(tmp_path / "state")
    submit(settings, *[task(n, "noop") for n in range(3)])
    with tasks_queue(settings) as queue:
        runs = finished_runs(settings, queue, tmp_path, 3)
        # Part 1's message went to another worker (its visibility ran out): our receipt is
        # stale, and only the delete can tell.
        queue.change_visibility(runs[1].message.receipt, 0)
        [stolen] = queue.receive(1, wait_s=0, visibility_s=60)

        assert commit(settings, runs, queue) == ["done", None, "done"]

        assert runs[1].lease.lost
        # Every run reported (the completion goes out before the delete), and the store
        # counts part 1 once whichever run's event comes first.
        assert sorted(e.part for e in completions(settings)) == [0, 1, 2]
        depth = queue.depth()
        assert (depth.visible, depth.in_flight) == (0, 1)  # the other worker's, untouched
        queue.delete(stolen.receipt)


def test_a_run_whose_lease_was_lost_commits_nothing_and_the_others_commit(tmp_path):
    settings = make_settings(tmp_path / "state")
    submit(settings, *[task(n, "noop") for n in range(4)])
    with tasks_queue(settings) as queue:
        runs = finished_runs(settings, queue, tmp_path, 4)
        runs[2].lease.lost = True  # a renewal was refused while it ran
        runs[2].started_wall, runs[2].finished_wall = 1000.0, 1012.5

        assert commit(settings, runs, queue) == ["done", "done", None, "done"]
        # Tried again (as after a queue error): nothing is reported twice.
        assert commit(settings, runs, queue) == ["done", "done", None, "done"]

        sent = events(settings)
        assert sorted(e.part for e in sent if not isinstance(e, AbandonedRun)) == [0, 1, 3]
        # Part 2 has no outcome to report, but the node time it took is reported.
        [lost] = [e for e in sent if isinstance(e, AbandonedRun)]
        assert (lost.part, lost.node, lost.worker) == (2, "node-t", 0)
        assert (lost.started_at, lost.finished_at) == (1000.0, 1012.5)
        depth = queue.depth()
        assert (depth.visible, depth.in_flight) == (0, 1)  # part 2: left to its new holder


def test_a_commit_tried_again_sends_and_deletes_nothing_twice(tmp_path):
    settings = make_settings(tmp_path / "state")
    submit(settings, *[task(n, "noop") for n in range(2)])
    with tasks_queue(settings) as queue:
        runs = finished_runs(settings, queue, tmp_path, 2)
        assert commit(settings, runs, queue) == ["done", "done"]
        # As after a queue error past the deletes: the same runs settled again.
        assert commit(settings, runs, queue) == ["done", "done"]
        assert sorted(e.part for e in completions(settings)) == [0, 1]
        assert queue.depth().backlog == 0


def test_a_lone_task_settles_at_once_and_a_flood_each_task_once(tmp_path, start_core):
    settings = make_settings(tmp_path / "state", node={"prefetch": 9})
    seen = Completions(settings)
    submit(settings, task(0, "noop"))
    core = start_core(settings)
    # Nothing else is coming: the lone task is settled without waiting for company.
    wait_for(lambda: core.done == 1, timeout=10, what="the lone task done")
    with tasks_queue(settings) as queue:
        assert queue.depth().backlog == 0
    assert [e.part for e in seen()] == [0]

    submit(settings, *[task(n, "noop") for n in range(1, 61)])
    wait_for(lambda: core.done == 61, what="61 no-op tasks done")
    events = seen()
    assert sorted(e.part for e in events) == list(range(61))  # each reported once
    assert all(e.ok and e.attempt == 1 for e in events)
    with tasks_queue(settings) as queue:
        assert queue.depth().backlog == 0
    # No-op tasks make no scratch folder at all.
    assert not any((tmp_path / "scratch-0").iterdir())


def test_completions_go_out_unsynced_before_the_deletes_in_the_task_queue_file(
    tmp_path, monkeypatch
):
    # What makes skipping the fsync safe (see settle's module docstring): the event and the
    # delete after it are commits to one file, in that order.
    settings = make_settings(tmp_path / "state")
    submit(settings, *[task(n, "noop") for n in range(3)])
    calls: list[tuple[str, object]] = []
    with tasks_queue(settings) as queue, open_queue(settings.queue, COMPLETIONS) as sent:
        runs = finished_runs(settings, queue, tmp_path, 3)
        send_batch, delete_batch = sent.send_batch, queue.delete_batch

        def spy_send(messages, *, durable=True):
            calls.append(("send", durable))
            return send_batch(messages, durable=durable)

        def spy_delete(receipts):
            calls.append(("delete", len(receipts)))
            return delete_batch(receipts)

        monkeypatch.setattr(sent, "send_batch", spy_send)
        monkeypatch.setattr(queue, "delete_batch", spy_delete)
        outcomes = commit(settings, runs, queue, sent)
        assert sent.path == queue.path
    assert outcomes == ["done", "done", "done"]
    assert calls == [("send", False), ("delete", 3)]
    assert sorted(e.part for e in completions(settings)) == [0, 1, 2]
