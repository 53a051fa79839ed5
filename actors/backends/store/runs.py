"""How finished runs change tasks: the rules behind exactly-once effect.

Delivery is at least once, so the same task may report several runs, and the same run may
be reported twice (a completion event redelivered after the manager restarted). The rules,
applied in the order the runs arrive:

1. A task the store does not know: reported as unknown, nothing written.
2. A task that already succeeded keeps its first success. Another run of it counts as a
   duplicate (its ``duplicate_runs`` goes up by one); a run already recorded, reported
   again, is a redelivery and changes nothing.
3. A cancelled task stays cancelled; the run is ignored (but its cost counts, rule 6).
4. A successful run makes the task succeeded, with the run's outputs, node and timings.
5. A failed run makes the task failed (``final``) or retrying, with its error; a non-final
   failure that is not newer than a task's final failure is ignored, and a failure already
   recorded is a redelivery. The run's node joins the task's ``failed_nodes`` (each node
   once), which the manager reads to tell a poison input from a bad node.
6. Every run not recorded before adds what it cost to its task's ``cost_dollars``: its
   seconds x its node's price per hour / 3600 / its node's workers, at the price the store
   holds for the node now. A node with no price yet (its row not written yet, or a spot
   price still being looked up with no on-demand price to stand in) makes the run an
   *unpriced run*, kept with its seconds and priced whenever costs are read (``costs``).
   Redelivered runs add nothing.
7. An *abandoned* run (it stopped without an outcome: its worker lost the lease, or a pause,
   a drain or a cancel stopped it) counts once and adds its cost (rule 6), whatever the
   task's state, and changes nothing else: not the state, the attempts, the
   ``failed_nodes`` nor the duplicate count. Its outcome is ``abandoned`` (``redelivered``
   when it was recorded before).

A run is known by its node, worker and start time (the worker's own clock: two runs on one
worker differ). A task remembers the last :data:`MAX_RUNS_SEEN` of its runs in
``runs_seen``, so a redelivered earlier run (a failure reported again after the retry that
followed it, a duplicate reported twice) is recognised as well as the latest one. A task
whose first run succeeded keeps no list until it runs again: its row's own node, worker and
start identify that run.

:func:`plan` applies the rules to the tasks' stored state and says what to write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchfarm.actors.backends.store.base import clip
from batchfarm.actors.backends.store.costs import NodePrice, run_dollars
from batchfarm.actors.backends.store.models import TaskState
from batchfarm.actors.backends.store.records import RunsApplied, TaskRun, task_id

#: A task's primary key: job, stage, part.
Key = tuple[str, str, int]
#: Most nodes a task's ``failed_nodes`` lists (two already make it poison).
MAX_FAILED_NODES = 16
#: Most runs a task's ``runs_seen`` remembers (the newest): a redelivery of an older one
#: would count again. Beyond a few runs a task is poison and fails anyway.
MAX_RUNS_SEEN = 32
#: States in which a task row's node, worker and start time are those of a recorded run.
_RECORDED = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.RETRYING)


@dataclass
class Stored:
    """What the rules need of a task's stored row (updated as a batch is planned)."""

    state: str
    attempts: int
    node_id: str | None
    worker: int | None
    started_at: float | None
    duplicate_runs: int
    #: Nodes the task's runs failed on (None in rows older than the column).
    failed_nodes: list[str] | None = None
    #: Dollars of the runs recorded so far.
    cost_dollars: float = 0.0
    #: ``[node, worker, started_at]`` of the runs recorded; None while the only one is a
    #: first success, and in rows older than the column.
    runs_seen: list[list[Any]] | None = None

    def seen(self, run: TaskRun) -> bool:
        """True if ``run`` was recorded before."""
        if self.runs_seen is not None:
            return _run_key(run) in self.runs_seen
        # No list: the row's own run, if it holds a recorded one.
        return self.state in _RECORDED and self._own_key() == _run_key(run)

    def remember(self, run: TaskRun) -> None:
        """Add ``run`` to the runs seen (a row older than the list starts it with its own)."""
        seen = self.runs_seen
        if seen is None:
            own = self._own_key()
            seen = [own] if self.state in _RECORDED and None not in own else []
        self.runs_seen = [*seen, _run_key(run)][-MAX_RUNS_SEEN:]

    def _own_key(self) -> list[Any]:
        return [self.node_id, self.worker, self.started_at]


@dataclass
class Plan:
    """The writes a batch of runs needs, and what they mean."""

    #: Full new values per task (the last applied run of each task wins).
    updates: dict[Key, dict[str, Any]] = field(default_factory=dict)
    #: Tasks whose runs count without changing them (duplicates, runs of cancelled tasks,
    #: stale failures, abandoned runs): their new ``duplicate_runs``, ``cost_dollars`` and
    #: ``runs_seen``.
    counted: dict[Key, dict[str, Any]] = field(default_factory=dict)
    #: ``unpriced_runs`` rows to insert (rule 6).
    unpriced: list[dict[str, Any]] = field(default_factory=list)
    outcome: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, key: Key) -> None:
        """Record that the run of the task ``key`` came out as ``kind``."""
        self.outcome.setdefault(kind, []).append(task_id(*key))

    def applied(self) -> RunsApplied:
        """The outcome as the store reports it."""
        return RunsApplied(**{kind: tuple(ids) for kind, ids in self.outcome.items()})


def plan(
    runs: Sequence[TaskRun],
    stored: dict[Key, Stored],
    now: float,
    prices: Mapping[str, NodePrice] | None = None,
) -> Plan:
    """Apply the module's rules to ``runs``; ``stored`` is updated as runs are applied.

    ``prices``: the price and worker count of the runs' nodes (a node not in it is unpriced).
    """
    result = Plan()
    prices = prices or {}
    for run in runs:
        key = (run.job, run.stage, run.part)
        row = stored.get(key)
        if row is None:
            result.note("unknown", key)
            continue
        seen = row.seen(run)
        kind = _outcome(row, run, seen)
        if not seen:
            _charge(result, key, row, run, prices, first_success=kind == "succeeded")
        if kind in _APPLIED:
            _apply(result, key, row, run, state=_APPLIED[kind], now=now)
        elif not seen:
            # A run that counts without changing the task: a duplicate, a run of a
            # cancelled task, a stale failure, an abandoned run.
            if kind == "duplicates":
                row.duplicate_runs += 1
            result.counted[key] = {}
        result.note(kind, key)
    # Each write carries the task's totals after the whole batch, whichever lands last.
    for key, values in result.updates.items():
        values.update(cost_dollars=stored[key].cost_dollars, runs_seen=stored[key].runs_seen)
    for key in result.counted:
        row = stored[key]
        result.counted[key] = {
            "duplicate_runs": row.duplicate_runs,
            "cost_dollars": row.cost_dollars,
            "runs_seen": row.runs_seen,
        }
    return result


#: Outcomes that apply the run to its task, and the state they leave it in.
_APPLIED = {
    "succeeded": TaskState.SUCCEEDED,
    "failed": TaskState.FAILED,
    "retrying": TaskState.RETRYING,
}


def _outcome(row: Stored, run: TaskRun, seen: bool) -> str:
    """What ``run`` comes out as against its task's ``row`` (rules 2 to 5, and 7)."""
    if run.abandoned:
        return "redelivered" if seen else "abandoned"
    if row.state == TaskState.SUCCEEDED:
        return "redelivered" if seen else "duplicates"
    if row.state == TaskState.CANCELLED:
        return "ignored"
    if run.ok:
        return "succeeded"
    if row.state in (TaskState.FAILED, TaskState.RETRYING) and seen:
        return "redelivered"
    if row.state == TaskState.FAILED and not run.final and run.attempt <= row.attempts:
        return "ignored"
    return "failed" if run.final else "retrying"


def _charge(
    result: Plan,
    key: Key,
    row: Stored,
    run: TaskRun,
    prices: Mapping[str, NodePrice],
    *,
    first_success: bool,
) -> None:
    """Count ``run`` once: remember it and add its cost, or keep it as an unpriced run."""
    if not (first_success and row.runs_seen is None and row.state not in _RECORDED):
        # A task's first run, a success, stays known by the row's own node, worker and start
        # (a succeeded row never changes them): most tasks then write no list at all.
        row.remember(run)
    seconds = run.finished_at - run.started_at
    if seconds <= 0:
        return
    price = prices.get(run.node)
    if price is None or price.per_hour is None:
        job, stage, part = key
        result.unpriced.append(
            {"job_id": job, "stage": stage, "part": part, "node_id": run.node, "seconds": seconds}
        )
    else:
        row.cost_dollars += run_dollars(seconds, price)


def _run_key(run: TaskRun) -> list[Any]:
    return [run.node, run.worker, run.started_at]


def _apply(result: Plan, key: Key, row: Stored, run: TaskRun, *, state: str, now: float) -> None:
    attempts = max(row.attempts, run.attempt)
    failed_nodes = list(row.failed_nodes or [])
    if not run.ok and run.node not in failed_nodes and len(failed_nodes) < MAX_FAILED_NODES:
        failed_nodes.append(run.node)
    result.updates[key] = {
        "state": state,
        "reason": clip(run.reason),
        "outputs": run.outputs if run.ok else [],
        "error": None if run.ok else run.error,
        "failed_nodes": failed_nodes,
        "result": (run.result or None) if run.ok else None,
        "attempts": attempts,
        "node_id": run.node,
        "worker": run.worker,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "queue_wait_s": run.queue_wait_s,
        "fetch_s": run.fetch_s,
        "compute_s": run.compute_s,
        "upload_s": run.upload_s,
        "cpu_s": run.cpu_s,
        "bytes_in": run.bytes_in,
        "bytes_out": run.bytes_out,
        "updated_at": now,
    }
    # Later runs of the same task in this batch see the state this one leaves.
    row.state = state
    row.attempts = attempts
    row.node_id = run.node
    row.worker = run.worker
    row.started_at = run.started_at
    row.failed_nodes = failed_nodes
