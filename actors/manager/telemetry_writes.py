"""What of the nodes' heartbeats goes to the store, and when: coalesced, changes only.

A thousand nodes of 64 workers report 64,000 worker statuses a second, nearly all as they
were a second before. :class:`FleetWrites` keeps the latest heartbeat of each node in memory
(the manager is the store's only writer of nodes and workers) and remembers what the store
holds of each node and its workers; each flush writes, of the nodes heard since the last:

- a node's row (state, class, host, CPU, memory, worker count, ``last_heartbeat``) when it
  changed: in anything but CPU and memory exactly, its CPU by :data:`CPU_NOISE` points or
  more, its memory by more than :data:`RSS_NOISE` of what the store holds; or when one of
  its workers' rows is written; or, failing that, once its stored ``last_heartbeat`` is
  :data:`NODE_SEEN_S` old. Liveness is the manager's memory (see
  :meth:`~batchfarm.actors.manager.telemetry.TelemetryProcessor.check_lost`): a node about
  to be marked lost has its last heartbeat written first (``silent`` in :meth:`collect`);
- only the workers that changed: in state, pid, core, task, tasks done or failed, by
  :data:`CPU_NOISE` CPU points or more, or resident memory by more than
  :data:`RSS_NOISE` of what the store holds (so a slow drift is written once it adds up);
- the workers a node no longer reports, removed (when its set of workers changed);
- the "running" marking of the tasks workers report: when a worker is first seen on a task
  (a new task, or a new run of it: its done or failed count moved), and once more
  :data:`RUNNING_RECHECK_S` later, for a completion recorded just after the heartbeat.

Nothing is remembered as written until the store has taken it: a failed flush is retried
whole at the next. A node marked lost or stopped is forgotten, so its next heartbeat writes
it and all its workers again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from batchfarm.actors.backends.store import NodeBeat, WorkerBeat
from batchfarm.actors.backends.store.fleet import FleetChanges, RunningTask
from batchfarm.actors.codec_columns import Columns
from batchfarm.actors.messages import Heartbeat, WorkerStatus, task_parts

#: CPU percentage points a worker's CPU must move by before its row is written again.
CPU_NOISE = 5.0
#: Share of its stored resident memory a worker's must move by before its row is written.
RSS_NOISE = 0.05
#: Most seconds a node's stored ``last_heartbeat`` lags the latest heartbeat heard from it
#: while nothing else in its row changes (its row is then written for that alone).
NODE_SEEN_S = 10.0
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


@dataclass
class _Heard:
    """A node's latest heartbeat, when it arrived, and its price then."""

    beat: Heartbeat
    at: float
    price: float | None


@dataclass
class _Written:
    """What a flush is about to write (or has written) of one node's workers."""

    columns: dict[str, list[Any]]
    count: int


@dataclass(frozen=True)
class _NodeRow:
    """What the store holds of a node's row: the exact fields, CPU, memory, and when."""

    exact: tuple[Any, ...]
    cpu_percent: float
    rss_bytes: int
    at: float

    @property
    def count(self) -> int:
        """The node's worker count (the last of :attr:`exact`)."""
        return int(self.exact[-1])

    def differs(self, other: _NodeRow) -> bool:
        """Whether ``other`` must be written over this row (beyond noise, or too old)."""
        return (
            self.exact != other.exact
            or abs(other.cpu_percent - self.cpu_percent) >= CPU_NOISE
            or abs(other.rss_bytes - self.rss_bytes) > RSS_NOISE * self.rss_bytes
            or other.at - self.at >= NODE_SEEN_S
        )


@dataclass
class Flush:
    """One flush's writes: :attr:`changes` for the store, then :meth:`FleetWrites.done`."""

    beats: list[NodeBeat] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    rosters: dict[str, Sequence[int]] = field(default_factory=dict)
    marks: list[RunningTask] = field(default_factory=list)
    written: dict[str, _Written] = field(default_factory=dict)
    running: dict[str, dict[int, RunningTask]] = field(default_factory=dict)
    #: Node rows written, by node.
    rows: dict[str, _NodeRow] = field(default_factory=dict)
    #: The heartbeat time of each node this flush took in (written or not).
    taken: dict[str, float] = field(default_factory=dict)

    @property
    def changes(self) -> FleetChanges:
        """What the store writes (:meth:`~FleetWrites.write_fleet`)."""
        return FleetChanges(self.beats, self.counts, self.rosters, self.marks)

    def add(self, beat: NodeBeat, row: _NodeRow) -> None:
        """Write ``beat`` (its node's row, and its workers); the store then holds ``row``."""
        self.beats.append(beat)
        self.counts[beat.node] = row.count
        self.rows[beat.node] = row


class FleetWrites:
    """The nodes' latest heartbeats, and what of them the store does not hold yet."""

    def __init__(self) -> None:
        #: The latest heartbeat of every node heard (until it is forgotten).
        self._latest: dict[str, _Heard] = {}
        #: Nodes heard since the last flush the store took.
        self._fresh: set[str] = set()
        self._written: dict[str, _Written] = {}
        self._rows: dict[str, _NodeRow] = {}
        #: node -> worker -> the task it was first seen on, while that is marked running.
        self._running: dict[str, dict[int, RunningTask]] = {}

    @property
    def pending(self) -> int:
        """Nodes heard since the last flush (whose heartbeat no flush has looked at yet)."""
        return len(self._fresh)

    def add(self, beat: Heartbeat, at: float, price: float | None = None) -> None:
        """Keep ``beat`` (received at ``at``) for the next flush; a later one replaces it."""
        self._latest[beat.node] = _Heard(beat, at, price)
        self._fresh.add(beat.node)

    def unwritten(self) -> list[str]:
        """Nodes whose latest heartbeat's time the store does not hold."""
        rows = self._rows
        return [
            node
            for node, heard in self._latest.items()
            if node not in rows or rows[node].at != heard.at
        ]

    def forget(self, nodes: Sequence[str]) -> None:
        """The store changed these nodes (lost, stopped): write them whole next time."""
        for node in nodes:
            self._written.pop(node, None)
            self._running.pop(node, None)
            self._rows.pop(node, None)
            if node not in self._fresh:
                self._latest.pop(node, None)

    def collect(self, now: float, silent: Sequence[str] = ()) -> Flush:
        """What the next store write holds; nothing counts as written before :meth:`done`.

        The nodes heard since the last flush, as the module says; and the row of each node
        in ``silent`` whose latest heartbeat's time the store does not hold yet.
        """
        flush = Flush()
        running = {node: dict(tasks) for node, tasks in self._running.items()}
        for node in self._fresh:
            self._collect_heard(node, flush, running)
        for node in silent:
            heard, held = self._latest.get(node), self._rows.get(node)
            if heard is None or node in flush.rows or held is None or held.at == heard.at:
                continue  # a node never written is in the fresh ones
            # Its latest heartbeat was compared when it came: it changed nothing beyond noise.
            flush.add(node_beat(heard.beat, heard.at, heard.price), _node_row(heard, held.count))
        # Marked once more RUNNING_RECHECK_S after they were first seen, then left alone.
        for node, tasks in list(running.items()):
            for worker, task in list(tasks.items()):
                if now - task.since >= RUNNING_RECHECK_S:
                    flush.marks.append(task)  # a flush long delayed marks it twice: harmless
                    del tasks[worker]
            if not tasks:
                del running[node]
        flush.running = running
        return flush

    def _collect_heard(
        self, node: str, flush: Flush, running: dict[str, dict[int, RunningTask]]
    ) -> None:
        """Add to ``flush`` what of ``node``'s latest heartbeat the store does not hold."""
        heard = self._latest[node]
        beat, at = heard.beat, heard.at
        flush.taken[node] = at
        new = {name: worker_column(beat.workers, name) for name in FIELDS}
        old = self._written.get(node)
        indexes = new["index"]
        whole = old is None or old.columns["index"] != indexes
        if whole or len(set(indexes)) != len(indexes):
            changed = list(range(len(indexes)))
            written = new
            flush.rosters[node] = indexes
            running.pop(node, None)
        else:
            assert old is not None  # for mypy: whole is False
            changed = _changed(old.columns, new)
            written = _merged(old.columns, new, changed)
        row = _node_row(heard, len(set(indexes)))
        held = self._rows.get(node)
        if not changed and held is not None and not held.differs(row):
            return
        workers = [WorkerBeat(**{name: new[name][i] for name in FIELDS}) for i in changed]
        flush.add(node_beat(beat, at, heard.price, workers), row)
        if changed:
            flush.written[node] = _Written(written, row.count)
        tasks = running.setdefault(node, {})
        for i in changed:
            worker, parts = indexes[i], task_parts(new["task"][i])
            if parts is None:
                tasks.pop(worker, None)
            elif whole or old is None or _new_run(old.columns, new, i):
                task = tasks[worker] = RunningTask(node, worker, *parts, at)
                flush.marks.append(task)

    def done(self, flush: Flush) -> None:
        """The store took ``flush``: remember what it holds, and drop what it looked at."""
        for node, at in flush.taken.items():
            heard = self._latest.get(node)
            if heard is not None and heard.at == at:
                self._fresh.discard(node)  # a newer heartbeat stays for the next flush
        self._written.update(flush.written)
        self._rows.update(flush.rows)
        self._running = flush.running


def _node_row(heard: _Heard, count: int) -> _NodeRow:
    """What the store holds once ``heard`` is written as its node's row."""
    beat = heard.beat
    exact = (
        *(beat.state, beat.node_class, beat.host, heard.price),
        *(beat.instance_type, beat.zone, beat.lifecycle, count),
    )
    return _NodeRow(exact, beat.cpu_percent, beat.rss_bytes, heard.at)


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
