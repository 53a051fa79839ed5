"""How finished runs change tasks: the rules behind exactly-once effect.

Delivery is at least once, so the same task may report several runs, and the same run may
be reported twice (a completion event redelivered after the manager restarted). The rules,
applied in the order the runs arrive:

1. A task the store does not know: reported as unknown, nothing written.
2. A task that already succeeded keeps its first success. Another run of it counts as a
   duplicate (its ``duplicate_runs`` goes up by one); the very same run reported again
   (same node, worker and start time) is a redelivery and changes nothing.
3. A cancelled task stays cancelled; the run is ignored.
4. A successful run makes the task succeeded, with the run's outputs, node and timings.
5. A failed run makes the task failed (``final``) or retrying, with its error; a non-final
   failure that is not newer than a task's final failure is ignored, and a failure already
   recorded is a redelivery. The run's node joins the task's ``failed_nodes`` (each node
   once), which the manager reads to tell a poison input from a bad node.

:func:`plan` applies the rules to the tasks' stored state and says what to write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from batchfarm.actors.backends.store.base import clip
from batchfarm.actors.backends.store.models import TaskState
from batchfarm.actors.backends.store.records import RunsApplied, TaskRun, task_id

#: A task's primary key: job, stage, part.
Key = tuple[str, str, int]
#: Most nodes a task's ``failed_nodes`` lists (two already make it poison).
MAX_FAILED_NODES = 16


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

    def same_run(self, run: TaskRun) -> bool:
        """True if ``run`` is the run this row already records."""
        # The start time is the worker's own clock reading: two runs on one worker differ.
        return (self.node_id, self.worker, self.started_at) == (
            run.node,
            run.worker,
            run.started_at,
        )


@dataclass
class Plan:
    """The writes a batch of runs needs, and what they mean."""

    #: Full new values per task (the last applied run of each task wins).
    updates: dict[Key, dict[str, Any]] = field(default_factory=dict)
    #: New duplicate-run totals per task.
    duplicates: dict[Key, int] = field(default_factory=dict)
    outcome: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, key: Key) -> None:
        """Record that the run of the task ``key`` came out as ``kind``."""
        self.outcome.setdefault(kind, []).append(task_id(*key))

    def applied(self) -> RunsApplied:
        """The outcome as the store reports it."""
        return RunsApplied(**{kind: tuple(ids) for kind, ids in self.outcome.items()})


def plan(runs: Sequence[TaskRun], stored: dict[Key, Stored], now: float) -> Plan:
    """Apply the module's rules to ``runs``; ``stored`` is updated as runs are applied."""
    result = Plan()
    for run in runs:
        key = (run.job, run.stage, run.part)
        row = stored.get(key)
        if row is None:
            result.note("unknown", key)
        elif row.state == TaskState.SUCCEEDED:
            if row.same_run(run):
                result.note("redelivered", key)
            else:
                row.duplicate_runs += 1
                result.duplicates[key] = row.duplicate_runs
                result.note("duplicates", key)
        elif row.state == TaskState.CANCELLED:
            result.note("ignored", key)
        elif run.ok:
            _apply(result, key, row, run, state=TaskState.SUCCEEDED, now=now)
            result.note("succeeded", key)
        elif row.state in (TaskState.FAILED, TaskState.RETRYING) and row.same_run(run):
            result.note("redelivered", key)
        elif row.state == TaskState.FAILED and not run.final and run.attempt <= row.attempts:
            result.note("ignored", key)
        elif run.final:
            _apply(result, key, row, run, state=TaskState.FAILED, now=now)
            result.note("failed", key)
        else:
            _apply(result, key, row, run, state=TaskState.RETRYING, now=now)
            result.note("retrying", key)
    return result


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
