"""What of the nodes' heartbeats goes to the store, and when: coalesced, changes only.

A thousand nodes of 64 workers report 64,000 worker statuses a second, nearly all as they
were a second before. :class:`FleetWrites` keeps the latest heartbeat of each node in memory
(the manager is the store's only writer of nodes and workers) and remembers what the store
holds of each node's workers; each flush writes:

- every node heard since the last flush: its row (state, ``last_heartbeat``, CPU, memory,
  worker count), so lost-node detection and the API read a node at most one flush old;
- only the workers that changed: in state, pid, core, task, tasks done or failed, by
  :data:`CPU_NOISE` CPU points or more, or resident memory by more than
  :data:`RSS_NOISE` of what the store holds (so a slow drift is written once it adds up);
- the workers a node no longer reports, removed (when its set of workers changed);
- the "running" marking of the tasks workers report: when a worker is first seen on a task
  (a new task, or a new run of it: its done or failed count moved), and once more
  :data:`RUNNING_RECHECK_S` later, for a completion recorded just after the heartbeat.

Nothing is remembered as written until the store has taken it: a failed flush is retried
whole at the next. A node marked lost or stopped is forgotten, so its next heartbeat writes
all its workers again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from batchfarm.actors.backends.store import NodeBeat, WorkerBeat
from batchfarm.actors.backends.store.fleet import FleetChanges, RunningTask
from batchfarm.actors.codec_columns import Columns
from batchfarm.actors.messages import Heartbeat, WorkerStatus

#: CPU percentage points a worker's CPU must move by before its row is written again.
CPU_NOISE = 5.0
#: Share of its stored resident memory a worker's must move by before its row is written.
RSS_NOISE = 0.05
#: Seconds after a worker is first seen on a task that the task is marked running once more
#: (only queued or retrying tasks are): the failure of its previous run, recorded just
#: after the heartbeat that showed the new run, must not leave it looking like it waits
#: (the results thread records completions within a second or two).
RUNNING_RECHECK_S = 3.0

#: The worker fields the store keeps (:class:`WorkerBeat`), exact ones first.
EXACT = ("index", "pid", "core", "state", "task", "done", "failed")
NOISY = ("cpu_percent", "rss_bytes")
FIELDS = EXACT + NOISY


def worker_column(workers: Sequence[WorkerStatus], name: str) -> list[Any]:
    """Field ``name`` of every worker: the decoded column itself when there is one."""
    if isinstance(workers, Columns):
        return workers.column(name)
    return [getattr(worker, name) for worker in workers]


def task_parts(task: str | None) -> tuple[str, str, int] | None:
    """``(job, stage, part)`` of a task id ``job/stage/part``; None if ``task`` is not one."""
    job, _, rest = (task or "").partition("/")
    stage, _, part = rest.rpartition("/")
    if job and stage and part.isdigit():
        return job, stage, int(part)
    return None


@dataclass
class _Pending:
    """A node's latest heartbeat not written yet."""

    beat: Heartbeat
    at: float
    price: float | None


@dataclass
class _Written:
    """What a flush is about to write (or has written) of one node's workers."""

    columns: dict[str, list[Any]]
    count: int


@dataclass
class Flush:
    """One flush's writes: :attr:`changes` for the store, then :meth:`FleetWrites.done`."""

    changes: FleetChanges
    written: dict[str, _Written] = field(default_factory=dict)
    running: dict[str, dict[int, RunningTask]] = field(default_factory=dict)


class FleetWrites:
    """The nodes' latest heartbeats, and what of them the store does not hold yet."""

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}
        self._written: dict[str, _Written] = {}
        #: node -> worker -> the task it was first seen on, while that is marked running.
        self._running: dict[str, dict[int, RunningTask]] = {}

    @property
    def pending(self) -> int:
        """Nodes with a heartbeat not written yet."""
        return len(self._pending)

    def add(self, beat: Heartbeat, at: float, price: float | None = None) -> None:
        """Keep ``beat`` (received at ``at``) for the next flush; a later one replaces it."""
        self._pending[beat.node] = _Pending(beat, at, price)

    def forget(self, nodes: Sequence[str]) -> None:
        """The store changed these nodes' workers (lost, stopped): write them all next time."""
        for node in nodes:
            self._written.pop(node, None)
            self._running.pop(node, None)

    def collect(self, now: float) -> Flush:
        """What the next store write holds; nothing counts as written before :meth:`done`."""
        beats: list[NodeBeat] = []
        counts: dict[str, int] = {}
        rosters: dict[str, list[int]] = {}
        marks: list[RunningTask] = []
        flush = Flush(FleetChanges(beats, counts, rosters, marks))
        running = {node: dict(tasks) for node, tasks in self._running.items()}
        for node, pending in self._pending.items():
            beat, at = pending.beat, pending.at
            new = {name: worker_column(beat.workers, name) for name in FIELDS}
            old = self._written.get(node)
            indexes = new["index"]
            whole = old is None or old.columns["index"] != indexes
            if whole or len(set(indexes)) != len(indexes):
                changed = list(range(len(indexes)))
                written = new
                rosters[node] = indexes
                running.pop(node, None)
            else:
                assert old is not None  # for mypy: whole is False
                changed = _changed(old.columns, new)
                written = _merged(old.columns, new, changed)
            workers = [WorkerBeat(**{name: new[name][i] for name in FIELDS}) for i in changed]
            count = len(set(indexes))
            beats.append(node_beat(beat, at, pending.price, workers))
            counts[node] = count
            flush.written[node] = _Written(written, count)
            tasks = running.setdefault(node, {})
            for i in changed:
                worker, parts = indexes[i], task_parts(new["task"][i])
                if parts is None:
                    tasks.pop(worker, None)
                elif whole or old is None or _new_run(old.columns, new, i):
                    task = tasks[worker] = RunningTask(node, worker, *parts, at)
                    marks.append(task)
        # Marked once more RUNNING_RECHECK_S after they were first seen, then left alone.
        for node, tasks in list(running.items()):
            for worker, task in list(tasks.items()):
                if now - task.since >= RUNNING_RECHECK_S:
                    marks.append(task)  # a flush long delayed marks it twice: harmless
                    del tasks[worker]
            if not tasks:
                del running[node]
        flush.running = running
        return flush

    def done(self, flush: Flush) -> None:
        """The store took ``flush``: remember what it holds, and drop what it wrote."""
        for beat in flush.changes.beats:
            pending = self._pending.get(beat.node)
            if pending is not None and pending.at == beat.time:
                del self._pending[beat.node]  # a newer heartbeat stays for the next flush
        self._written.update(flush.written)
        self._running = flush.running


def _new_run(old: dict[str, list[Any]], new: dict[str, list[Any]], i: int) -> bool:
    """Whether worker ``i`` is on a new task, or a new run of it (its counts moved)."""
    return any(old[name][i] != new[name][i] for name in ("task", "done", "failed"))


def _changed(old: dict[str, list[Any]], new: dict[str, list[Any]]) -> list[int]:
    """Positions of the workers whose row differs beyond noise (same workers, same order).

    Column by column: equal lists compare in C, and only a column that differs is walked.
    """
    changed: set[int] = set()
    for name in EXACT:
        before, now = old[name], new[name]
        if before != now:
            changed.update(
                i for i, a, b in zip(range(len(now)), before, now, strict=True) if a != b
            )
    cpu_old, cpu_new = old["cpu_percent"], new["cpu_percent"]
    rss_old, rss_new = old["rss_bytes"], new["rss_bytes"]
    if cpu_old != cpu_new:
        changed.update(
            i
            for i, a, b in zip(range(len(cpu_new)), cpu_old, cpu_new, strict=True)
            if abs(b - a) >= CPU_NOISE
        )
    if rss_old != rss_new:
        changed.update(
            i
            for i, a, b in zip(range(len(rss_new)), rss_old, rss_new, strict=True)
            if abs(b - a) > RSS_NOISE * a
        )
    return sorted(changed)


def _merged(
    old: dict[str, list[Any]], new: dict[str, list[Any]], changed: list[int]
) -> dict[str, list[Any]]:
    """What the store holds once the ``changed`` positions are written."""
    if not changed:
        return old
    merged = {name: list(column) for name, column in old.items()}
    for name, column in merged.items():
        values = new[name]
        for i in changed:
            column[i] = values[i]
    return merged


def node_beat(
    beat: Heartbeat,
    received_at: float,
    price_per_hour: float | None = None,
    workers: Sequence[WorkerBeat] = (),
) -> NodeBeat:
    """The store's record of a heartbeat, timed by the manager's clock, with ``workers``."""
    return NodeBeat(
        node=beat.node,
        time=received_at,
        state=beat.state,
        node_class=beat.node_class,
        host=beat.host,
        cpu_percent=beat.cpu_percent,
        rss_bytes=beat.rss_bytes,
        workers=workers,
        price_per_hour=price_per_hour,
        instance_type=beat.instance_type,
        zone=beat.zone,
        lifecycle=beat.lifecycle,
    )
