"""Re-runs are counted: a task that runs again after it succeeded adds to ``duplicate_runs``."""

from __future__ import annotations

from batchfarm.actors.backends import (
    COMPLETIONS,
    TASKS,
    open_blobs,
    open_queue,
    open_store,
    open_task_queues,
)
from batchfarm.actors.backends.queue import Outgoing
from batchfarm.actors.backends.store import JobState, NewStage
from batchfarm.actors.codec import encode_body
from batchfarm.actors.manager.results import ResultsProcessor
from tests.manager.results_grid import StorePlanner, drive, submit_job
from tests.node.nodeproc import NodeProcess, env_for
from tests.worker.grid import make_settings


def test_a_task_delivered_twice_runs_twice_and_counts_once_plus_one_rerun(tmp_path):
    state = tmp_path / "state"
    settings = make_settings(state)
    store = open_store(settings.store)
    queues = open_task_queues(settings.queue)
    completions = open_queue(settings.queue, COMPLETIONS)
    blobs = open_blobs(settings.storage)
    node = NodeProcess(state, "node-d", env=env_for(node_workers=1, node_prefetch=0))
    try:
        stages = [NewStage("work", 0, "tests.worker.handlers:sleep", {"seconds": 0.05})]
        submit_job(store, queues, "dup", stages, [[], []])
        # A body reaching the queue twice (a manager replay, a send retried): both run.
        body = StorePlanner().next_task(store.stages("dup")[0], 1, [])
        queues.named(TASKS).send_batch([Outgoing(encode_body(body))])
        results = ResultsProcessor(store, queues, completions, StorePlanner())

        def counted() -> bool:
            return results.counters.runs == 3

        drive(results, counted, timeout=60, what="three runs reported")
        assert store.job("dup").state == JobState.SUCCEEDED
        tasks = {t.part: t for t in store.tasks("dup")}
        assert {p: (t.state, t.duplicate_runs) for p, t in tasks.items()} == {
            0: ("succeeded", 0),
            1: ("succeeded", 1),
        }
        [counts] = store.stage_counts("dup")
        assert (counts.counts, counts.duplicate_runs) == ({"succeeded": 2}, 1)
        assert (results.counters.succeeded, results.counters.duplicates) == (2, 1)
    finally:
        node.close()
        for closing in (queues, completions, blobs, store):
            closing.close()
