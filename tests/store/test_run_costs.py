"""A task costs every run it took (failed, retried, duplicate), each run counted once."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from batchfarm.actors.backends.store import NodeBeat, Store, TaskRun, TaskState, WorkerBeat, migrate
from tests.store.test_costs import job, node

# $3.60 an hour on 2 workers: a worker-second costs $0.0005. $0.36 on 1: $0.0001.
N2_S = 3.60 / 2 / 3600
N1_S = 0.36 / 3600


def run(
    task: str,
    node_id: str,
    seconds: float,
    *,
    started: float = 1000.0,
    worker: int = 0,
    ok: bool = True,
    final: bool = False,
    attempt: int = 1,
    abandoned: bool = False,
) -> TaskRun:
    job_id, stage, part = task.split("/")
    return TaskRun(
        job_id,
        stage,
        int(part),
        ok and not abandoned,
        node_id,
        worker,
        attempt,
        started,
        started + seconds,
        final=final,
        abandoned=abandoned,
    )


def priced_nodes(store: Store) -> None:
    node(store, "n2", 3.60, 2, first=0.0, last=10.0)
    node(store, "n1", 0.36, 1, first=0.0, last=10.0)


def costs_of(store: Store, job_id: str) -> dict[str, float]:
    keys = [(t.stage, t.part) for t in store.tasks(job_id)]
    return store.task_costs(job_id, keys)


def test_a_retried_task_pays_for_every_run_and_redeliveries_add_nothing(store: Store) -> None:
    priced_nodes(store)
    job(store, "j", 2)
    failed = run("j/encode/0", "n2", 10.0, ok=False)  # retried
    retried = run("j/encode/0", "n1", 20.0, started=2000.0, attempt=2)
    first = run("j/encode/1", "n2", 100.0, worker=1)
    rerun = run("j/encode/1", "n1", 30.0, started=3000.0)  # the same body delivered twice
    lost = run("j/pack/0", "n1", 8.0, ok=False, final=True)
    applied = store.record_runs([failed, first, lost])
    assert (applied.retrying, applied.succeeded, applied.failed) == (
        ("j/encode/0",),
        ("j/encode/1",),
        ("j/pack/0",),
    )
    applied = store.record_runs([retried, rerun])
    assert (applied.succeeded, applied.duplicates) == (("j/encode/0",), ("j/encode/1",))
    # Every event delivered again (a manager restarted before deleting them): no change.
    again = store.record_runs([failed, retried, first, rerun, lost])
    assert len(again.redelivered) == 5
    assert (again.duplicates, again.succeeded, again.retrying) == ((), (), ())

    expected = {
        "j/encode/0": 10 * N2_S + 20 * N1_S,
        "j/encode/1": 100 * N2_S + 30 * N1_S,
        "j/pack/0": 8 * N1_S,
    }
    assert costs_of(store, "j") == pytest.approx(expected)
    assert store.task("j", "encode", 1).duplicate_runs == 1  # type: ignore[union-attr]
    stages = store.stage_costs_of(["j"])["j"]
    assert stages == pytest.approx(
        {"encode": expected["j/encode/0"] + expected["j/encode/1"], "pack": expected["j/pack/0"]}
    )
    by_handler = {(c.handler, c.node_class): c.dollars for c in store.costs_by_handler()}
    assert by_handler == pytest.approx(
        {("transcode", "default"): stages["encode"], ("concat", "highmem"): stages["pack"]}
    )


def test_an_earlier_failure_reported_again_after_its_retry_counts_once(store: Store) -> None:
    priced_nodes(store)
    job(store, "j", 1)
    first = run("j/encode/0", "n2", 10.0, ok=False)
    second = run("j/encode/0", "n1", 40.0, started=2000.0, ok=False, attempt=2)
    store.record_runs([first])
    store.record_runs([second])
    assert store.record_runs([first]).redelivered == ("j/encode/0",)
    task = store.task("j", "encode", 0)
    assert task is not None
    # The task still shows its latest run, and costs both.
    assert (task.state, task.node_id, task.started_at) == (TaskState.RETRYING, "n1", 2000.0)
    assert costs_of(store, "j")["j/encode/0"] == pytest.approx(10 * N2_S + 40 * N1_S)


def test_runs_of_one_task_in_one_batch_all_count(store: Store) -> None:
    priced_nodes(store)
    job(store, "j", 2)
    store.record_runs([run("j/encode/0", "n2", 5.0, ok=False, final=True, attempt=2)])
    # A late non-final failure of an earlier attempt (ignored: the task failed for good),
    # then another final failure and a success of another task, all in one batch.
    applied = store.record_runs(
        [
            run("j/encode/0", "n1", 7.0, started=1500.0, ok=False, attempt=1),
            run("j/encode/0", "n1", 9.0, started=2500.0, ok=False, final=True, attempt=3),
            run("j/encode/1", "n2", 11.0, started=2600.0, worker=1),
            run("j/encode/1", "n2", 13.0, started=2700.0),
        ]
    )
    assert (applied.ignored, applied.failed) == (("j/encode/0",), ("j/encode/0",))
    assert applied.duplicates == ("j/encode/1",)
    assert costs_of(store, "j") == pytest.approx(
        {
            "j/encode/0": 5 * N2_S + 7 * N1_S + 9 * N1_S,
            "j/encode/1": 11 * N2_S + 13 * N2_S,
            "j/pack/0": 0.0,
        }
    )


def test_a_run_of_a_cancelled_task_counts_once(store: Store) -> None:
    priced_nodes(store)
    job(store, "j", 1)
    store.set_tasks_state("j", TaskState.CANCELLED, from_states=[TaskState.PENDING])
    late = run("j/encode/0", "n1", 50.0)  # it was running when the job was cancelled
    assert store.record_runs([late, late]).ignored == ("j/encode/0", "j/encode/0")
    assert store.record_runs([late]).ignored == ("j/encode/0",)
    assert store.task("j", "encode", 0).state == TaskState.CANCELLED  # type: ignore[union-attr]
    assert costs_of(store, "j")["j/encode/0"] == pytest.approx(50 * N1_S)


def test_an_abandoned_run_adds_its_cost_and_changes_nothing_else(store: Store) -> None:
    priced_nodes(store)
    job(store, "j", 2)
    # encode/0: stopped by a forced pause, then run to success elsewhere.
    paused = run("j/encode/0", "n2", 10.0, abandoned=True)
    # encode/1: succeeded, then a second delivery of its body lost its lease mid-run.
    first = run("j/encode/1", "n2", 100.0, worker=1)
    lost = run("j/encode/1", "n1", 30.0, started=3000.0, abandoned=True)
    # pack/0: failed on n1 (to be retried), then a retry on n2 stopped by a drain.
    failed = run("j/pack/0", "n1", 8.0, ok=False)
    drained = run("j/pack/0", "n2", 4.0, started=2000.0, attempt=2, abandoned=True)
    store.record_runs([first, failed])
    applied = store.record_runs([paused, lost, drained])
    assert applied.abandoned == ("j/encode/0", "j/encode/1", "j/pack/0")
    assert (applied.succeeded, applied.duplicates, applied.retrying) == ((), (), ())

    tasks = {f"{t.stage}/{t.part}": t for t in store.tasks("j")}
    assert (tasks["encode/0"].state, tasks["encode/0"].attempts) == (TaskState.PENDING, 0)
    succeeded = tasks["encode/1"]
    assert (succeeded.state, succeeded.node_id, succeeded.duplicate_runs) == (
        TaskState.SUCCEEDED,
        "n2",
        0,
    )
    retrying = tasks["pack/0"]
    assert (retrying.state, retrying.attempts, retrying.node_id) == (TaskState.RETRYING, 1, "n1")
    assert retrying.failed_nodes == ["n1"]

    # Delivered again (a manager restarted before deleting them): counted once.
    assert store.record_runs([paused, lost, drained]).redelivered == (
        "j/encode/0",
        "j/encode/1",
        "j/pack/0",
    )
    retried = run("j/encode/0", "n1", 20.0, started=2500.0, attempt=2)
    assert store.record_runs([retried]).succeeded == ("j/encode/0",)
    assert costs_of(store, "j") == pytest.approx(
        {
            "j/encode/0": 10 * N2_S + 20 * N1_S,
            "j/encode/1": 100 * N2_S + 30 * N1_S,
            "j/pack/0": 8 * N1_S + 4 * N2_S,
        }
    )


def test_an_abandoned_run_of_a_cancelled_task_or_on_an_unpriced_node_counts(
    store: Store,
) -> None:
    priced_nodes(store)
    job(store, "j", 1)
    store.set_tasks_state("j", TaskState.CANCELLED, from_states=[TaskState.PENDING])
    stopped = run("j/encode/0", "n1", 50.0, abandoned=True)  # stopped by the cancel
    early = run("j/pack/0", "fast", 60.0, abandoned=True)  # before its node's first heartbeat
    assert store.record_runs([stopped, early]).abandoned == ("j/encode/0", "j/pack/0")
    assert store.record_runs([stopped, early]).redelivered == ("j/encode/0", "j/pack/0")
    assert store.task("j", "encode", 0).state == TaskState.CANCELLED  # type: ignore[union-attr]
    node(store, "fast", 0.36, 1, first=0.0, last=70.0)
    assert costs_of(store, "j") == pytest.approx({"j/encode/0": 50 * N1_S, "j/pack/0": 60 * N1_S})


def test_a_run_recorded_before_its_node_is_priced_costs_once_the_price_is_known(
    store: Store,
) -> None:
    job(store, "j", 2)
    # "fast" ran a task before its first heartbeat reached the store; "spot" reported with
    # no price yet (its spot price still being looked up, no on-demand price configured).
    node(store, "spot", None, 2, first=0.0, last=10.0)
    store.record_runs([run("j/encode/0", "fast", 60.0), run("j/encode/1", "spot", 30.0)])
    store.record_runs([run("j/encode/1", "spot", 30.0)])  # redelivered: still once
    assert costs_of(store, "j") == {"j/encode/0": 0.0, "j/encode/1": 0.0, "j/pack/0": 0.0}

    crew = [WorkerBeat(i, pid=100 + i, state="idle") for i in range(2)]
    store.record_heartbeats([NodeBeat("fast", 20.0, "up", workers=crew, price_per_hour=0.36)])
    node(store, "spot", 3.60, 2, first=0.0, last=30.0)
    # And a priced run of the same task afterwards adds to its unpriced one.
    store.record_runs([run("j/encode/0", "spot", 10.0, started=5000.0)])
    expected = {"j/encode/0": 60 * 0.36 / 2 / 3600 + 10 * N2_S, "j/encode/1": 30 * N2_S}
    assert costs_of(store, "j") == pytest.approx({**expected, "j/pack/0": 0.0})
    assert store.stage_costs_of(["j"])["j"] == pytest.approx(
        {"encode": sum(expected.values()), "pack": 0.0}
    )
    assert [c.dollars for c in store.costs_by_handler()] == pytest.approx(
        [0.0, sum(expected.values())]
    )
    # A job's unpriced runs go with it.
    assert store.delete_job("j")
    assert store.costs_by_handler() == []


# -- the migration -----------------------------------------------------------------------------

JSON_COLUMNS = ("spec", "params", "inputs", "outputs")


def _insert_0004_rows(url: str) -> None:
    """A job run at revision 0004, written by SQL: two nodes, three tasks."""
    job_row: dict[str, Any] = {"id": "old", "name": "", "state": "running", "priority": 0}
    job_row.update(spec={}, created_at=1.0, updated_at=1.0)
    stage_row = {"job_id": "old", "name": "s", "index": 0, "handler": "noop", "params": {}}
    stage_row.update(node_class="default", mode="chain", state="running")
    tasks = []
    for part, (node_id, started, finished) in enumerate(
        [("n2", 100.0, 200.0), ("free", 100.0, 150.0), (None, None, None)]
    ):
        task = {"job_id": "old", "stage": "s", "part": part, "state": "succeeded"}
        task.update(inputs=[], outputs=[], attempts=1, duplicate_runs=0, updated_at=1.0)
        task.update({f"{n}_s": 0.0 for n in ("queue_wait", "fetch", "compute", "upload")})
        task.update(cpu_s=0.0, bytes_in=0, bytes_out=0, node_id=node_id, worker=0)
        task.update(started_at=started, finished_at=finished)
        tasks.append(task)
    nodes = []
    for node_id, price in (("n2", 3.60), ("free", None)):
        row = {"id": node_id, "node_class": "default", "host": "h", "state": "up"}
        row.update(cordoned=False, first_seen=0.0, last_heartbeat=10.0, cpu_percent=0.0)
        row.update(rss_bytes=0, workers=2, price_per_hour=price)
        nodes.append(row)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for name, rows in (("jobs", [job_row]), ("stages", [stage_row])):
                _insert(connection, name, rows)
            _insert(connection, "tasks", tasks)
            _insert(connection, "nodes", nodes)
    finally:
        engine.dispose()


def _insert(connection: sa.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    # JSON typed by hand: MariaDB reflects a JSON column as LONGTEXT.
    columns = [sa.column(k, sa.JSON() if k in JSON_COLUMNS else None) for k in rows[0]]
    connection.execute(sa.insert(sa.table(table, *columns)), rows)


def test_0005_keeps_the_cost_of_tasks_run_before_it_and_can_be_undone(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0004")
    _insert_0004_rows(empty_url)

    migrate.upgrade(empty_url)
    with Store(empty_url) as store:
        # What 0004 read: the latest run at its node's price (unpriced "free" costs nothing).
        assert costs_of(store, "old") == pytest.approx(
            {"old/s/0": 100 * N2_S, "old/s/1": 0.0, "old/s/2": 0.0}
        )
        # The run the row holds is known: reported again, it adds nothing; a new one adds.
        again = run("old/s/0", "n2", 100.0, started=100.0)
        assert store.record_runs([again]).redelivered == ("old/s/0",)
        store.record_runs([again, run("old/s/0", "n2", 40.0, started=900.0, worker=1)])
        assert costs_of(store, "old")["old/s/0"] == pytest.approx(140 * N2_S)
        assert store.task("old", "s", 0).duplicate_runs == 1  # type: ignore[union-attr]
        assert store.stage_costs_of(["old"])["old"] == pytest.approx({"s": 140 * N2_S})

    migrate.downgrade(empty_url, "0004")
    engine = sa.create_engine(empty_url)
    try:
        inspector = sa.inspect(engine)
        assert "unpriced_runs" not in inspector.get_table_names()
        assert "cost_dollars" not in {c["name"] for c in inspector.get_columns("tasks")}
    finally:
        engine.dispose()
    migrate.upgrade(empty_url)
    assert migrate.schema_differences(empty_url) == []
